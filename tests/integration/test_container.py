"""The container image in the bridge role, against the suite's mosquitto and Zabbix 6.0.

A van agent (a host process, the synthetic collector: ``synthetic.seq`` counts 1, 2, 3... so a
gap shows) publishes to mosquitto. The bridge runs in the image built from this tree with
``--network host``, its spool on a named podman volume. Its Zabbix is down at first, a
FaultProxy that drops every request, so what it takes from the broker piles up in the volume
spool. Mid-stream the container is killed with SIGKILL. A new container on the same volume
then finds Zabbix up and delivers the spool and what the broker kept in the bridge's session.
Zabbix history must hold every value (duplicates are counted: at least once allows them).

The first container reads the broker password from a mounted 0600 file, the second from the
environment: the two ways deploy/container/README.md gives. The first run on a machine also
debootstraps the base image (about 1 minute here) and builds the image (about 1 more minute);
later runs reuse both from podman's store and its layer cache.
"""

from __future__ import annotations

import os
import re
import secrets
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devtools.container import build_image, podman
from devtools.localzabbix import LocalZabbix
from tests.support import zabbix_fixtures
from tests.support.agent_process import running_agent, toml_config
from tests.support.fault_proxy import FaultProxy
from tests.support.mosquitto import running_mosquitto
from tests.support.peers import free_port, need_binary
from tests.support.zabbix_fixtures import FLOAT, UNSIGNED, history, wait_until

# The first run builds the base image and the image: more than the suite's 600 s on a slow mirror.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

ROUNDS = 300  # values per series
INTERVAL = 0.04  # seconds between rounds: about 12 s of streaming
SEQ, SINE = "synthetic.seq[s1]", "synthetic.sine[s1]"
CONFIG_IN = "/etc/trapline/trapline.toml"
SECRET_IN = "/run/secrets/mqtt-password"
IMAGE_UID = 10001  # the image's trapline user (Containerfile)
SETTLE_TIMEOUT = 90.0


@pytest.fixture(scope="module")
def image() -> str:
    for binary in ("podman", "runc", "debootstrap"):
        need_binary(binary)
    return build_image()


@dataclass
class Books:
    """What Zabbix history holds against what the van sent."""

    sent: int
    stored: int
    lost: int
    duplicated: int

    def line(self, spooled_at_kill: int) -> str:
        return (f"[container] sent={self.sent} stored={self.stored} lost={self.lost} "
                f"dup={self.duplicated} (spooled on the volume at the kill: {spooled_at_kill})")


def books(api: Any, itemids: Mapping[str, str]) -> Books:
    seq = history(api, itemids[SEQ], UNSIGNED)
    sine = history(api, itemids[SINE], FLOAT)
    values = {int(row["value"]) for row in seq}
    stamps = {(row["clock"], row["ns"]) for row in sine}
    expected = set(range(1, ROUNDS + 1))
    return Books(sent=2 * ROUNDS, stored=len(values & expected) + len(stamps),
                 lost=len(expected - values) + ROUNDS - len(stamps),
                 duplicated=len(seq) - len(values) + len(sine) - len(stamps))


class Bridge:
    """``podman run`` of the image as the bridge, named, on the test's volume; removed at the end."""

    def __init__(self, image: str, volume: str, cleanup: ExitStack) -> None:
        self.image = image
        self.volume = volume
        self.cleanup = cleanup

    def run(self, name: str, config: Path, *extra: str, detach: bool = True) -> str:
        self.cleanup.callback(podman, ["rm", "--force", name], check=False)
        argv = ["run", "--name", name, "--network", "host",
                "--volume", f"{config}:{CONFIG_IN}:ro", "--volume", f"{self.volume}:/var/lib/trapline",
                # As deploy/container/compose.yaml runs it.
                "--read-only", "--cap-drop", "all", "--security-opt", "no-new-privileges",
                *extra, self.image]
        result = podman(["run", "--detach", *argv[1:]] if detach else argv, check=detach, timeout=120)
        return result.stdout + result.stderr

    @staticmethod
    def state(name: str, field: str) -> str:
        return podman(["inspect", name, "--format", f"{{{{.State.{field}}}}}"]).stdout.strip()

    @staticmethod
    def logs(name: str) -> str:
        result = podman(["logs", name], check=False)
        return result.stdout + result.stderr

    @contextmanager
    def explained(self, name: str) -> Iterator[None]:
        """On a failure inside, the container's log goes into the test report."""
        try:
            yield
        except BaseException:  # pytest.fail raises an exception outside Exception
            print(f"--- podman logs {name}\n{self.logs(name)[-3000:]}")
            raise

    @staticmethod
    def healthy(name: str) -> bool:
        """One run of the image's HEALTHCHECK (podman's timers need systemd, absent here)."""
        return podman(["healthcheck", "run", name], check=False, timeout=60).returncode == 0


def spool_depth(metrics_port: int) -> int:
    """The bridge's own spool depth, from its /metrics (renewed every self_interval)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
    except OSError:
        return 0
    found = re.search(r"^trapline_spool_depth\{[^}]*\} (\S+)$", text, re.MULTILINE)
    return int(float(found.group(1))) if found else 0


def secret_file(path: Path, value: str, mode: int) -> Path:
    path.write_text(value + "\n")
    os.chown(path, IMAGE_UID, IMAGE_UID)  # readable in the container as its user, as the README says
    path.chmod(mode)
    return path


@pytest.fixture
def volume() -> Iterator[str]:
    name = f"trapline-test-spool-{os.getpid()}"
    podman(["volume", "rm", "--force", name], check=False)
    podman(["volume", "create", name])
    try:
        yield name
    finally:
        podman(["volume", "rm", "--force", name], check=False)


def test_bridge_in_a_container_killed_mid_stream_loses_nothing(image: str, volume: str,
                                                              zabbix60: LocalZabbix, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    api = zabbix60.api()
    van = zabbix_fixtures.create_trapper_host(zabbix60, {SEQ: UNSIGNED, SINE: FLOAT}, api=api,
                                              prefix="trapline-container", reload=False)
    # The synthetic collector sends its LLD too: a rule without prototypes takes it.
    api.discoveryrule.create(hostid=van.hostid, name="series", key_="synthetic.discovery",
                             type=zabbix_fixtures.ITEM_TYPE_TRAPPER)
    zabbix60.config_cache_reload()
    passwords = {"centre": secrets.token_hex(16), "van": secrets.token_hex(16)}
    metrics_port = free_port()
    with ExitStack() as stack:
        broker = stack.enter_context(running_mosquitto(tmp_path, users=passwords))
        zabbix_down = stack.enter_context(FaultProxy(zabbix60.trapper_host, zabbix60.trapper_port))
        zabbix_down.set_mode("drop")

        def bridge_config(name: str, password: dict[str, str]) -> Path:
            path = tmp_path / f"{name}.toml"
            path.write_text(toml_config({
                "agent": {"flush_interval": 0.1, "self_interval": 1, "shutdown_timeout": 5.0},
                # [spool] path: the image's default, /var/lib/trapline/spool.db on the volume.
                "spool": {"retry_initial": 0.5, "retry_cap": 1.0},
                "zabbix": {"servers": [zabbix_down.address]},
                "prometheus": {"listen": f"127.0.0.1:{metrics_port}"},
                "collectors.vehicles": {"type": "mqtt_bridge", "host": "127.0.0.1", "port": broker.port,
                                        "client_id": "container-bridge", "group": "centre",
                                        "username": "centre", **password},
            }))
            path.chmod(0o644)  # the config holds no secret; the container's user reads it
            return path

        by_file = bridge_config("bridge-file", {"password_file": SECRET_IN})
        by_env = bridge_config("bridge-env", {"password_env": "MQTT_PASSWORD"})
        bridges = Bridge(image, volume, stack)

        # A secret file that others can read is refused in the container as on a host.
        shared = secret_file(tmp_path / "shared-password", passwords["centre"], 0o644)
        refused = bridges.run("trapline-test-refused", by_file, "--volume", f"{shared}:{SECRET_IN}:ro",
                              detach=False)
        assert "readable by group or others" in refused, refused
        assert bridges.state("trapline-test-refused", "ExitCode") == "2"

        first, second = "trapline-test-bridge-1", "trapline-test-bridge-2"
        password = secret_file(tmp_path / "mqtt-password", passwords["centre"], 0o600)
        bridges.run(first, by_file, "--volume", f"{password}:{SECRET_IN}:ro")
        with bridges.explained(first):
            wait_until(lambda: bridges.healthy(first), timeout=30, interval=0.5, what=f"{first} healthy")
            assert bridges.state(first, "Health.Status") == "healthy"

        van_password = secret_file(tmp_path / "van-password", passwords["van"], 0o600)
        edge_config = tmp_path / "van.toml"
        edge_config.write_text(toml_config({
            "agent": {"flush_interval": 0.1},
            "spool": {"path": str(tmp_path / "van.db"), "retry_initial": 0.5, "retry_cap": 1.0},
            "mqtt": {"host": "127.0.0.1", "port": broker.port, "client_id": "van-1", "timeout": 3,
                     "username": "van", "password_file": str(van_password)},
            "collectors.synth": {"type": "synthetic", "host": van.name, "series": 1,
                                 "interval": INTERVAL, "limit": ROUNDS},
        }))
        edge = stack.enter_context(running_agent(edge_config, tmp_path / "van.log"))

        # A quarter of the stream is in the volume spool, none of it in Zabbix: kill.
        with bridges.explained(first):
            spooled = wait_until(lambda: (d := spool_depth(metrics_port)) >= ROUNDS // 2 and d,
                                 timeout=60, interval=0.2, what=f"readings spooled in {first}")
        podman(["kill", "--signal", "KILL", first])
        wait_until(lambda: bridges.state(first, "Status") == "exited", timeout=30, what=f"{first} dead")
        assert bridges.state(first, "ExitCode") == "137"
        assert zabbix_down.counts.forwarded == 0, zabbix_down.counts
        assert edge.running, edge.output()

        # Zabbix is back; a new container on the same volume, its password from the environment.
        zabbix_down.set_mode("pass")
        # `--env NAME` without a value: podman passes on its caller's variable, as compose does.
        monkeypatch.setenv("MQTT_PASSWORD", passwords["centre"])
        bridges.run(second, by_env, "--env", "MQTT_PASSWORD")
        with bridges.explained(second):
            wait_until(lambda: bridges.healthy(second), timeout=30, interval=0.5, what=f"{second} healthy")
            try:
                wait_until(lambda: books(api, van.itemids).lost == 0, timeout=SETTLE_TIMEOUT, interval=0.5,
                           what="every reading in Zabbix")
            finally:
                tally = books(api, van.itemids)
                print(tally.line(spooled))
            assert tally.lost == 0 and tally.stored == tally.sent, tally.line(spooled)
            assert bridges.state(second, "Health.Status") == "healthy"

        # podman stop sends the image's STOPSIGNAL: the agent drains and exits 0 well within -t.
        podman(["stop", "--time", "20", second], timeout=60)
        assert bridges.state(second, "ExitCode") == "0", bridges.logs(second)[-3000:]
        assert "stopped; 0 readings stay in the spool" in bridges.logs(second)
