"""Splitting Mist orgs and sites over several collector instances: the share function and its configuration.

Ids (of orgs and sites): the Mist API documents every id (``site_id``, ``org_id``) as a UUID; the
collector's configuration also accepts any id of letters, digits and dashes (up to 64),
so the strategies cover both.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.test_config_fuzz import run_cli
from trapline import cli
from trapline.collectors.mist.settings import parse_settings
from trapline.collectors.mist.shard import MAX_SHARDS, Shard, shard_of
from trapline.core.config import ConfigError, Section

SITE_IDS = st.one_of(st.uuids().map(str), st.from_regex(r"[0-9A-Za-z-]{1,64}", fullmatch=True))
COUNTS = st.integers(min_value=1, max_value=5)


def owners(site: str, count: int) -> list[int]:
    return [k for k in range(1, count + 1) if Shard(k, count).owns(site)]


@given(SITE_IDS, COUNTS)
def test_every_site_has_exactly_one_owner(site: str, count: int) -> None:
    assert owners(site, count) == [shard_of(site, count)]


@given(st.lists(SITE_IDS, min_size=1, max_size=40, unique=True), COUNTS)
def test_the_shares_of_all_instances_partition_the_sites(sites: list[str], count: int) -> None:
    shares = [{s for s in sites if Shard(k, count).owns(s)} for k in range(1, count + 1)]
    assert set().union(*shares) == set(sites)
    assert sum(len(share) for share in shares) == len(sites)


@given(SITE_IDS, st.integers(min_value=1, max_value=9))
def test_one_more_instance_takes_sites_only_for_itself(site: str, count: int) -> None:
    # Rendezvous hashing: a site that moves when an instance is added moves to the new one.
    before, after = shard_of(site, count), shard_of(site, count + 1)
    assert after in (before, count + 1)


@given(st.uuids().map(str), COUNTS)
def test_the_case_of_an_id_does_not_change_its_shard(site: str, count: int) -> None:
    assert shard_of(site.upper(), count) == shard_of(site, count)


def test_shares_are_even() -> None:
    sites = [str(uuid.uuid5(uuid.NAMESPACE_URL, f"site-{i}")) for i in range(3000)]
    for count in range(2, 6):
        sizes = Counter(shard_of(s, count) for s in sites)
        assert set(sizes) == set(range(1, count + 1))
        expected = len(sites) / count
        assert all(abs(size - expected) < 0.06 * expected for size in sizes.values()), (count, sizes)


def test_the_share_is_the_same_in_another_process() -> None:
    # Python's own str hash differs between processes; the shard must not.
    sites = [str(uuid.uuid5(uuid.NAMESPACE_DNS, f"site-{i}.example")) for i in range(200)]
    here = [shard_of(s, n) for s in sites for n in range(1, 6)]
    program = (
        "import sys\n"
        "from trapline.collectors.mist.shard import shard_of\n"
        "sites = sys.stdin.read().split()\n"
        "print(' '.join(str(shard_of(s, n)) for s in sites for n in range(1, 6)))\n"
    )
    for seed in ("1", "2", "random"):
        env = os.environ | {"PYTHONHASHSEED": seed}
        done = subprocess.run(
            [sys.executable, "-c", program],
            input=" ".join(sites),
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        assert [int(x) for x in done.stdout.split()] == here


def test_the_share_function_never_changes() -> None:
    # A release that computed other shares would move sites between running instances,
    # and with them every AP host to another discovery host: these values are a contract.
    sites = [str(uuid.uuid5(uuid.NAMESPACE_URL, f"mist-site-{i}")) for i in range(12)]
    assert [shard_of(s, 3) for s in sites] == [3, 1, 1, 3, 3, 3, 2, 2, 1, 1, 3, 3]


@given(st.integers(min_value=1, max_value=MAX_SHARDS), st.data())
def test_valid_specs_parse(count: int, data: st.DataObject) -> None:
    index = data.draw(st.integers(min_value=1, max_value=count))
    spaces = data.draw(st.sampled_from(["", " "]))
    shard = Shard.parse(f"{spaces}{index}{spaces}/{spaces}{count}{spaces}")
    assert (shard.index, shard.count, str(shard)) == (index, count, f"{index}/{count}")


# -- configuration ----------------------------------------------------------


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "mist.token"
    path.write_text("shard-test-mist-token\n")  # not a word: secrets are masked everywhere
    path.chmod(0o600)
    return path


def section(tmp_path: Path, token_file: Path, **data: Any) -> Section:
    base: dict[str, Any] = {
        "type": "mist",
        "host": "Mist discovery",
        "orgs": ["o-1"],
        "token_file": str(token_file),
    }
    return Section(tmp_path / "trapline.toml", "collectors.mist", base | data)


def test_without_a_shard_an_instance_owns_every_site(tmp_path: Path, token_file: Path) -> None:
    settings, _ = parse_settings(section(tmp_path, token_file))
    assert str(settings.shard) == "1/1"
    assert settings.shard.owns("any-site")


def test_a_shard_is_configured_as_k_of_n(tmp_path: Path, token_file: Path) -> None:
    settings, _ = parse_settings(section(tmp_path, token_file, shard="2/3"))
    assert (settings.shard.index, settings.shard.count) == (2, 3)


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("0/3", "shard number must be 1 to 3, not 0"),
        ("4/3", "shard number must be 1 to 3, not 4"),
        ("1/0", "number of shards must be 1 to 100, not 0"),
        ("1/101", "number of shards must be 1 to 100, not 101"),
        ("2", 'not of the form "k/N"'),
        ("2 of 3", 'not of the form "k/N"'),
        ("-1/3", 'not of the form "k/N"'),
        ("1/3/5", 'not of the form "k/N"'),
        ("", 'not of the form "k/N"'),
        ("\uff11/\uff13", 'not of the form "k/N"'),  # full-width digits: int() reads them, the spec does not
        (2, "expected a string"),
        (["1/2"], "expected a string"),
    ],
)
def test_a_bad_shard_is_one_clear_config_error(
    tmp_path: Path, token_file: Path, spec: object, reason: str
) -> None:
    with pytest.raises(ConfigError) as error:
        parse_settings(section(tmp_path, token_file, shard=spec))
    message = str(error.value)
    assert "[collectors.mist].shard" in message and reason in message, message
    assert "Traceback" not in message


def test_the_cli_stops_on_a_bad_shard_with_one_line(tmp_path: Path, token_file: Path) -> None:
    config = tmp_path / "trapline.toml"
    config.write_text(
        f'[collectors.mist]\ntype = "mist"\nhost = "Mist discovery 1"\nshard = "3/2"\n'
        f'token_file = "{token_file}"\norgs = ["o-1"]\n',
        encoding="utf-8",
    )
    code, stderr = run_cli("check", config)
    assert code == cli.EXIT_CONFIG
    assert stderr.splitlines() == [
        f"trapline: config error: {config}: [collectors.mist].shard: the shard number must be 1 to 2, not 3"
    ]
