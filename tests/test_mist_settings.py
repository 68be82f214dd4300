"""The Mist config section, the token handling and the REST budget."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from trapline.collectors.mist import build
from trapline.collectors.mist.rest import RestBudget
from trapline.collectors.mist.settings import cloud_regions, parse_settings
from trapline.core.config import ConfigError, Section

TOKEN = "s3cr3t-t0ken-value"


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "mist.token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


def section(tmp_path: Path, **data: Any) -> Section:
    base: dict[str, Any] = {"type": "mist", "host": "Mist discovery", "sites": ["s-1"]}
    return Section(tmp_path / "trapline.toml", "collectors.mist", base | data)


def test_region_picks_both_hosts(tmp_path: Path, token_file: Path) -> None:
    settings, token = parse_settings(section(tmp_path, cloud="emea01", token_file=str(token_file)))
    assert settings.stream_url == "wss://api-ws.eu.mist.com/api-ws/v1/stream"
    assert settings.rest_url == "https://api.eu.mist.com"
    assert token.reveal() == TOKEN
    assert cloud_regions()["global01"] == "mist.com"


def test_urls_can_be_overridden(tmp_path: Path, token_file: Path) -> None:
    settings, _ = parse_settings(
        section(
            tmp_path,
            token_file=str(token_file),
            stream_url="ws://127.0.0.1:9/api-ws/v1/stream",
            rest_url="http://127.0.0.1:9/",
        )
    )
    assert settings.stream_url == "ws://127.0.0.1:9/api-ws/v1/stream"
    assert settings.rest_url == "http://127.0.0.1:9"


def test_a_readable_token_file_is_refused(tmp_path: Path, token_file: Path) -> None:
    token_file.chmod(0o640)
    with pytest.raises(ConfigError, match="readable by group or others"):
        parse_settings(section(tmp_path, token_file=str(token_file)))


def test_the_token_can_come_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIST_TEST_TOKEN", TOKEN)
    _, token = parse_settings(section(tmp_path, token_env="MIST_TEST_TOKEN"))
    assert token.reveal() == TOKEN


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"sites": []}, "at least one site"),
        ({"cloud": "mars01"}, "expected one of"),
        ({"stream_url": "http://x"}, "ws:// or wss://"),
        ({"sites": ["../../admin"]}, "is not a Mist id"),
        ({"retry_min": 5, "retry_max": 1}, "retry_max"),
        ({"chanels_per_connection": 5}, "unknown key"),
        ({"node_prefix": "bad/prefix"}, "node_prefix"),
        ({"compression": "gzip"}, "expected one of deflate, none"),
    ],
)
def test_mistakes_name_the_key(tmp_path: Path, token_file: Path, extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_settings(section(tmp_path, token_file=str(token_file), **extra))


def test_the_token_never_shows(tmp_path: Path, token_file: Path) -> None:
    collector = build("mist", section(tmp_path, token_file=str(token_file)))
    shown = [repr(collector), str(collector), repr(collector.settings), repr(collector.directory.rest)]
    assert not any(TOKEN in text for text in shown)
    assert TOKEN not in repr(vars(collector))


def test_rest_budget_slides_over_the_hour() -> None:
    budget = RestBudget(per_hour=2)
    assert budget.spend(0.0) and budget.spend(10.0)
    assert not budget.spend(20.0)
    assert budget.used(20.0) == 2
    assert budget.spend(3600.0)  # the first call left the window
    assert not budget.spend(3605.0)


def test_tick_follows_the_finest_interval(tmp_path: Path, token_file: Path) -> None:
    settings, _ = parse_settings(section(tmp_path, token_file=str(token_file), min_interval=0.4))
    assert settings.tick == pytest.approx(0.1)
