"""Geofences from the host macro {$VEHICLE.GEOFENCES}: the value as the vehicle receives it,
its validation (the config's own code), and how it joins the config's geofences.

The reply in tests/data/active_checks_geofences_zabbix60.json is what a real Zabbix 6.0
server answered to an ``active checks`` request for a host whose template item is
``trapline.geofences["{$VEHICLE.GEOFENCES}"]`` (7.0 answered the same keys, plus a
``config_revision`` and a ``timeout`` per item).  It shows how the server puts a macro
value into a key parameter: in quotes, each ``"`` as ``\\"``, every other character as
it is; :func:`zabbix_key` below does the same for the values hypothesis draws.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.outbox import ListOutbox
from tests.support.peers import free_port
from trapline.collectors.gps.vehicle_derived import (
    GEOFENCES_MACRO,
    DerivedSettings,
    EdgeDerivations,
    Geofence,
    macro_geofences,
)
from trapline.core.config import ConfigError
from trapline.core.plugin import ActiveCheckFollower
from trapline.exporters.zabbix.active_checks import ActiveChecksPoller, key_params
from trapline.exporters.zabbix.client import ClusterClient, Endpoint
from trapline.exporters.zabbix.protocol import parse_active_checks_reply
from trapline.wire.vehicle_state import VehicleState

REPLY = Path(__file__).parent / "data" / "active_checks_geofences_zabbix60.json"
ITEM = "trapline.geofences"
DEPOT = (56.9496, 24.1052)
# The names a NOC admin may type: the key syntax's own characters, quotes, backslashes, any script.
KEY_SYNTAX = [*'abz09 ,"[]\\\'.-_', "ī", "ö", "Ж", "東"]
# Half the names from those alone (mostly valid ones), half with anything at all mixed in.
NAME_TEXT = st.text(st.sampled_from(KEY_SYNTAX), min_size=1, max_size=12) | st.text(
    st.sampled_from([*KEY_SYNTAX, "{", "\t"]) | st.characters(), min_size=1, max_size=12
)


def zabbix_key(macro_value: str) -> str:
    """The key the server sends for ``trapline.geofences["{$VEHICLE.GEOFENCES}"]`` (see the module doc)."""
    return ITEM + '["' + macro_value.replace('"', '\\"') + '"]'


def circle(lat: float = DEPOT[0], lon: float = DEPOT[1], radius: float = 300) -> dict[str, float]:
    return {"latitude": lat, "longitude": lon, "radius": radius}


SHAPES = st.sampled_from([circle(), {"polygon": ["1 1", "1 2", "2 2"]}])


def test_the_recorded_reply_gives_back_the_macro_value_character_for_character() -> None:
    reply = parse_active_checks_reply(REPLY.read_bytes())
    assert reply.known
    (value,) = key_params(reply.keys, ITEM) or []
    fences = {f.name: f for f in macro_geofences(value)}
    assert list(fences) == ["depot", 'Kunde "7", Rīga [x]', "back\\slash"]
    assert fences["depot"] == Geofence("depot", centre=(56.95, 24.1), radius=300)
    assert len(fences['Kunde "7", Rīga [x]'].corners) == 3


def test_a_host_without_the_item_has_no_parameters() -> None:
    assert key_params(["agent.ping", "trapline.geofences.other[x]"], ITEM) is None
    assert key_params([f"{ITEM}[]"], ITEM) == [""]


@given(st.dictionaries(NAME_TEXT, SHAPES, max_size=4))
def test_any_macro_value_reaches_the_vehicle_intact_and_is_geofences_or_one_clear_error(
    fences: dict[str, dict[str, object]],
) -> None:
    value = json.dumps(fences, ensure_ascii=False)
    assert key_params([zabbix_key(value)], ITEM) == [value]
    try:
        taken = macro_geofences(value)
    except ConfigError as exc:
        assert str(exc).startswith(GEOFENCES_MACRO) and "geofence name" in str(exc)
        return
    assert [f.name for f in taken] == list(fences)


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("depot: 56.95 24.1 300", "not JSON"),
        ('["depot"]', "JSON object"),
        ('{"depot": {"latitude": 56.95, "longitude": 24.1}}', "radius"),
        ('{"depot": {"polygon": ["56 24", "57 24"]}}', "at least 3"),
        ('{"depot": {"latitude": 56.95, "longitude": 24.1, "radius": 5, "colour": "red"}}', "colour"),
        ('{"{$X}": {"latitude": 56.95, "longitude": 24.1, "radius": 5}}', "geofence name"),
        ('{"yard": {"latitude": 56.95, "longitude": 24.1, "radius": 5}}', "already set in the GPS collector"),
    ],
)
def test_a_bad_macro_is_one_clear_error_naming_the_macro(value: str, complaint: str) -> None:
    yard = Geofence("yard", centre=DEPOT, radius=10)
    with pytest.raises(ConfigError, match=complaint) as raised:
        macro_geofences(value, (yard,))
    assert str(raised.value).startswith(GEOFENCES_MACRO) and "\n" not in str(raised.value)


def test_an_empty_macro_is_no_geofences() -> None:
    assert macro_geofences("") == () and macro_geofences("  ") == ()


def test_macro_geofences_join_the_configs_and_follow_the_macro() -> None:
    yard = Geofence("yard", centre=DEPOT, radius=10_000)
    edge = EdgeDerivations(DerivedSettings(geofences=(yard,)))
    assert edge.set_macro_geofences(json.dumps({"Kunde, 7": circle()}))
    assert edge.discovery_rows() == [{"{#GEOFENCE}": "yard"}, {"{#GEOFENCE}": "Kunde, 7"}]
    fix = edge.update(0.0, *DEPOT, 0.0)
    assert fix["vehicle.geofence.inside[yard]"] == (1, "")
    assert fix['vehicle.geofence.inside["Kunde, 7"]'] == (1, "")

    # The same value again changes nothing; a removed geofence is gone from the next fix.
    assert not edge.set_macro_geofences(json.dumps({"Kunde, 7": circle()}))
    assert edge.set_macro_geofences("")
    assert edge.discovery_rows() == [{"{#GEOFENCE}": "yard"}]
    assert not any("Kunde" in key for key in edge.update(1.0, *DEPOT, 0.0))


def test_a_reshaped_geofence_is_recomputed_at_the_next_fix_without_an_event() -> None:
    edge = EdgeDerivations(DerivedSettings())
    edge.set_macro_geofences(json.dumps({"depot": circle(radius=300)}))
    assert edge.update(0.0, *DEPOT, 0.0)["vehicle.geofence.inside[depot]"] == (1, "")
    # The admin moves the depot a kilometre north: the van did not leave, the line moved.
    edge.set_macro_geofences(json.dumps({"depot": circle(DEPOT[0] + 0.01)}))
    fix = edge.update(1.0, *DEPOT, 0.0)
    assert fix["vehicle.geofence.inside[depot]"] == (0, "")
    assert "vehicle.geofence.event[depot]" not in fix
    # From then on crossings are events again.
    assert edge.update(2.0, DEPOT[0] + 0.01, DEPOT[1], 0.0)["vehicle.geofence.event[depot]"] == ("entry", "")


def test_a_bad_value_keeps_the_geofences_the_macro_gave_before() -> None:
    edge = EdgeDerivations(DerivedSettings())
    edge.set_macro_geofences(json.dumps({"depot": circle()}))
    with pytest.raises(ConfigError):
        edge.set_macro_geofences('{"depot": ')
    assert edge.discovery_rows() == [{"{#GEOFENCE}": "depot"}]


def test_the_macro_geofences_and_their_states_survive_a_restart_before_zabbix_answers(tmp_path: Path) -> None:
    state = VehicleState(tmp_path / "van.json", "van-17")
    edge = EdgeDerivations(DerivedSettings(), state)
    edge.set_macro_geofences(json.dumps({"Kunde 7": circle()}))
    edge.update(0.0, *DEPOT, 0.0)
    asyncio.run(state.save())

    reloaded = VehicleState(tmp_path / "van.json", "van-17")
    reloaded.load()
    again = EdgeDerivations(DerivedSettings(), reloaded)  # no link yet: the saved macro holds
    assert again.discovery_rows() == [{"{#GEOFENCE}": "Kunde 7"}]
    fix = again.update(1.0, DEPOT[0] + 0.1, DEPOT[1], 0.0)  # it left while the agent was down
    assert fix["vehicle.geofence.event[Kunde 7]"] == ("exit", "")


class Follower:
    """Records what the poller tells it, as the GPS collector would take it."""

    name = "gps"

    def __init__(self) -> None:
        self.told: list[Sequence[str] | None] = []

    def active_check(self) -> tuple[str, str]:
        return "van-17", ITEM

    def active_check_params(self, params: Sequence[str] | None) -> None:
        self.told.append(params)


def test_an_unreachable_server_is_an_error_and_the_follower_keeps_the_last_answer() -> None:
    client = ClusterClient([Endpoint("127.0.0.1", free_port())], timeout=1)  # nobody listens there
    follower = Follower()
    poller = ActiveChecksPoller(client, [follower], "trapline vehicle test", interval=3600)
    out = ListOutbox()

    async def one_round() -> None:
        task = asyncio.create_task(poller.run(out))
        while not out.errors:  # noqa: ASYNC110 - watches a list the poller appends to
            await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(one_round())
    assert len(out.errors) == 1 and "active checks of van-17" in out.errors[0]
    assert follower.told == []
    assert isinstance(follower, ActiveCheckFollower)
