"""deploy/container/: the compose file and the Containerfile agree with each other and with the agent.

podman-compose is not installed here, so the compose file is read as the compose specification
defines it (services, volumes in short syntax, secrets with ``file``, ``x-`` extension fields
merged with YAML anchors) and checked for what would break at ``up``: a mounted file or a secret
missing from deploy/container/, an undeclared volume, a config the agent refuses, a role without
the [prometheus] endpoint its health check asks.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from trapline.app.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
HERE = ROOT / "deploy/container"
CONTAINERFILE = HERE / "Containerfile"
TRAPLINE_SERVICES = ("bridge-a", "bridge-b", "mist", "aws")
SHUTDOWN_MARGIN = 5.0  # seconds beyond [agent] shutdown_timeout for the spool's last commit


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((HERE / "compose.yaml").read_text())
    return data


@dataclass(frozen=True)
class Containerfile:
    """What the final stage of the Containerfile declares (instruction -> its arguments)."""

    copies: list[str]  # sources of COPY without --from, relative to the build context
    last: dict[str, str]  # the final stage's instructions, last one wins

    @classmethod
    def read(cls) -> Containerfile:
        joined = re.sub(r"\\\n", " ", CONTAINERFILE.read_text())
        copies: list[str] = []
        last: dict[str, str] = {}
        for line in joined.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            instruction, _, rest = line.strip().partition(" ")
            if instruction == "FROM":
                last = {}
            elif instruction == "COPY" and not rest.startswith("--from"):
                copies += shlex.split(rest)[:-1]
            last[instruction] = rest.strip()
        return cls(copies, last)

    def exec_form(self, instruction: str) -> list[str]:
        text = self.last[instruction]
        text = text[text.index("CMD") + 3:] if instruction == "HEALTHCHECK" else text
        value: list[str] = yaml.safe_load(text)  # a JSON array is YAML too
        return value


def seconds(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([smh])", text))


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Target -> source of each short-syntax volume entry."""
    out = {}
    for entry in service.get("volumes", []):
        source, target = entry.split(":")[:2]
        out[target] = source
    return out


def test_every_mounted_file_secret_and_volume_exists() -> None:
    data = compose()
    assert set(data["services"]) == {"broker", *TRAPLINE_SERVICES}
    for name, service in data["services"].items():
        for target, source in mounts(service).items():
            if source.startswith("."):
                assert (HERE / source).is_file(), f"{name}: no {source} for {target}"
            else:
                assert source in data["volumes"], f"{name}: volume {source} is not declared"
        for secret in service.get("secrets", []):
            assert (HERE / data["secrets"][secret]["file"]).is_file(), f"{name}: secret {secret}"
        build = service.get("build")
        if build:
            context = (HERE / build["context"]).resolve()
            assert context == ROOT
            assert (context / build["dockerfile"]) == CONTAINERFILE


def test_each_role_runs_the_images_config_on_a_spool_volume() -> None:
    image = Containerfile.read()
    run = image.exec_form("CMD")
    config_path = run[run.index("-c") + 1]
    volume = image.last["VOLUME"]
    data = compose()
    for name in TRAPLINE_SERVICES:
        service = data["services"][name]
        mounted = mounts(service)
        assert mounted[config_path].startswith("./"), f"{name} mounts no config at {config_path}"
        assert volume == "/var/lib/trapline" and mounted[volume] in data["volumes"], name
        assert service["stop_signal"] == image.last["STOPSIGNAL"] == "SIGTERM"


def test_the_health_check_asks_the_agent_that_runs() -> None:
    image = Containerfile.read()
    run, health = image.exec_form("CMD"), image.exec_form("HEALTHCHECK")
    assert image.exec_form("ENTRYPOINT") == ["trapline"] and run[0] == "run"
    assert health[:3] == ["trapline", "check", "--liveness"]
    assert health[health.index("-c") + 1] == run[run.index("-c") + 1]
    assert image.last["USER"] not in ("root", "0")


def test_the_image_copies_only_what_exists() -> None:
    copies = Containerfile.read().copies
    assert "pyproject.toml" in copies and "trapline" in copies
    for source in copies:
        assert (ROOT / source).exists(), source


@pytest.mark.parametrize("name", TRAPLINE_SERVICES)
def test_each_role_config_loads_as_the_container_reads_it(name: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent accepts the config, its secrets given as the service gives them."""
    data = compose()
    service = data["services"][name]
    text = (HERE / mounts(service)["/etc/trapline/trapline.toml"]).read_text()
    for secret in service.get("secrets", []):
        # Mounted at /run/secrets/<name>: a copy with the mode the README asks for.
        copy = tmp_path / secret
        copy.write_text((HERE / data["secrets"][secret]["file"]).read_text())
        copy.chmod(0o600)
        text = text.replace(f"/run/secrets/{secret}", str(copy))
    for variable in service.get("environment", []):
        monkeypatch.setenv(variable, "from-the-environment")
    config = tmp_path / "trapline.toml"
    config.write_text(text)
    settings = load_settings(config)
    assert settings.collectors and settings.destinations, name
    assert settings.spool.path.parent == Path("/var/lib/trapline"), "the spool must be on the volume"
    assert any(type(o).__name__ == "PrometheusExporter" for o in settings.observers), \
        f"{name}: no [prometheus], so its health check can never pass"
    assert seconds(service["stop_grace_period"]) >= settings.agent.shutdown_timeout + SHUTDOWN_MARGIN



def image_requirements(pyproject: Path) -> list[str]:
    spec = importlib.util.spec_from_file_location("image_requirements", HERE / "requirements.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    listed: list[str] = module.requirements(pyproject)
    return listed


def test_the_image_installs_every_roles_dependencies_and_no_test_tool() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = image_requirements(ROOT / "pyproject.toml")
    assert set(project["dependencies"]) <= set(wanted)
    extras = project.get("optional-dependencies", {})
    for extra in set(extras) - {"dev", "demo"}:
        assert {r for r in extras[extra] if not r.startswith("trapline[")} <= set(wanted), extra
    assert not set(wanted) & set(extras.get("dev", []) + extras.get("demo", []))


def test_role_extras_that_name_trapline_itself_are_left_to_the_package(tmp_path: Path) -> None:
    """The layout with a small base and an extra per role (issue 19): each role's packages, once."""
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        '[project]\nname = "trapline"\ndependencies = ["msgspec>=0.18"]\n'
        '[project.optional-dependencies]\nmist = ["websockets>=14"]\naws = ["boto3>=1.28"]\n'
        'mqtt = ["paho-mqtt>=2.0", "msgspec>=0.18"]\nall = ["trapline[mist,aws,mqtt]"]\n'
        'demo = ["ELM327-emulator>=4.0"]\ndev = ["trapline[all]", "pytest>=8"]\n'
    )
    expected = ["msgspec>=0.18", "websockets>=14", "boto3>=1.28", "paho-mqtt>=2.0"]
    assert image_requirements(pyproject) == expected
