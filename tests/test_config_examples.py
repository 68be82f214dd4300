"""``trapline config example ROLE``: a whole config per role, made of the plugin samples.

Each example is loaded and every plugin built by the loader ``trapline run`` and
``trapline check`` use, with only its secret and TLS files replaced by private ones (the
endpoints may stay unreachable: building connects to nothing).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.samples import private_copy
from trapline import cli
from trapline.app.examples import ROLES
from trapline.app.settings import load_settings

# The vehicle's third is the poller that reads {$VEHICLE.GEOFENCES} for its gps collector.
EXPECTED_COLLECTORS = {"vehicle": 3, "mist": 1, "aws": 2, "bridge": 1, "demo": 1}


@pytest.mark.parametrize("role", sorted(ROLES))
def test_the_example_of_each_role_loads_and_builds(
    role: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["config", "example", role]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"# trapline config for the {role} role")
    config = tmp_path / f"{role}.toml"
    config.write_text(private_copy(text, tmp_path), encoding="utf-8")
    settings = load_settings(config)
    assert len(settings.collectors) == EXPECTED_COLLECTORS[role]
    assert settings.destinations, "every role delivers somewhere"


def test_every_role_has_an_expected_shape() -> None:
    assert set(EXPECTED_COLLECTORS) == set(ROLES)


def test_an_unknown_role_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["config", "example", "toaster"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'toaster'" in capsys.readouterr().err
