"""Optional dependencies per role (issue 19 item 5): the registries and pyproject.toml agree,
and a plugin configured without its extra stops the start with one line naming the extra.

The missing library is hidden in a child interpreter (``sys.modules[name] = None`` makes its
import fail as an absent package does), so the test runs the real ``trapline`` entry point.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from trapline import cli
from trapline.collectors import REGISTRY
from trapline.core.config import Section, missing_modules
from trapline.exporters import DESTINATIONS, OBSERVERS

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
EXTRAS: dict[str, list[str]] = PROJECT["optional-dependencies"]
ROLES = ("vehicle", "mist", "aws", "mqtt", "admin")
ALL_SPECS = {**REGISTRY, **DESTINATIONS, **OBSERVERS}


def distribution(requirement: str) -> str:
    """``"obd>=0.7.3,<0.8"`` -> ``"obd"``, normalised as PEP 503 compares names."""
    name = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert name, requirement
    return re.sub(r"[-_.]+", "-", name.group(0)).lower()


def distributions_of(modules: tuple[str, ...]) -> set[str]:
    """The installed distributions that provide these top-level modules (the dev venv has all)."""
    provided = packages_distributions()
    return {distribution(d) for module in modules for d in provided[module]}


def test_each_plugin_needs_only_what_its_extra_installs() -> None:
    for kind, spec in ALL_SPECS.items():
        if spec.extra is None:
            assert not spec.needs, kind
            continue
        assert spec.extra in ROLES, kind
        listed = {distribution(r) for r in EXTRAS[spec.extra]}
        # boto3 brings botocore: a library may come through one that the extra lists.
        assert distributions_of(spec.needs) & listed, (kind, spec.needs, listed)
        assert distributions_of(spec.needs[:1]) <= listed, (kind, spec.needs, listed)


def test_every_role_library_belongs_to_a_plugin_or_an_admin_command() -> None:
    # An extra that lists a library no plugin checks for would let its plugin crash deep
    # inside instead of naming the extra.
    checked = {m for spec in ALL_SPECS.values() for m in spec.needs} | set(cli._ADMIN_LIBRARIES)
    for role in ROLES:
        for requirement in EXTRAS[role]:
            provided = {m for m, ds in packages_distributions().items()
                        if distribution(requirement) in {distribution(d) for d in ds}}
            assert provided & checked, f"trapline[{role}]: {requirement} is checked by no plugin"


def test_base_install_holds_no_role_library_and_all_holds_every_role() -> None:
    base = {distribution(r) for r in PROJECT["dependencies"]}
    for role in ROLES:
        assert not base & {distribution(r) for r in EXTRAS[role]}, role
    (everything,) = EXTRAS["all"]
    assert everything == f"trapline[{','.join(ROLES)}]"
    # make setup / make test install the dev extra: every role's library, so every test runs.
    assert "trapline[all]" in EXTRAS["dev"]


def test_missing_modules_tells_present_from_absent() -> None:
    assert missing_modules(["json", "no_such_module_here", "msgspec"]) == ["no_such_module_here"]


def test_require_extra_names_the_key_and_the_extra(tmp_path: Path) -> None:
    section = Section(tmp_path / "a.toml", "collectors.x", {"type": "aws"})
    section.require_extra("type", "aws", ["json"])  # present: no error
    with pytest.raises(Exception, match=re.escape("[collectors.x].type: needs no_such_lib")) as caught:
        section.require_extra("type", "aws", ["no_such_lib"])
    assert str(caught.value).endswith("pip install 'trapline[aws]'")


# A config per plugin that needs an extra; only the part read before the check matters.
CONFIGS = {
    "obd": ("serial", "vehicle", '[collectors.car]\ntype = "obd"\n'),
    "gps": ("gpsd", "vehicle", '[collectors.where]\ntype = "gps"\n'),
    "mist": ("websockets", "mist", '[collectors.m]\ntype = "mist"\n'),
    "aws": ("boto3", "aws", '[collectors.glue]\ntype = "aws"\n'),
    "mqtt_bridge": ("paho", "mqtt", '[collectors.bridge]\ntype = "mqtt_bridge"\n'),
    "mqtt exporter": ("paho", "mqtt", '[mqtt]\nbroker = "127.0.0.1:1883"\n'),
    "zabbix api_url": (
        "pyzabbix", "admin",
        '[zabbix]\nservers = ["127.0.0.1:10051"]\napi_url = "http://127.0.0.1/api_jsonrpc.php"\n',
    ),
}


def run_hiding(module: str, argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    code = textwrap.dedent(f"""
        import sys
        sys.modules[{module!r}] = None
        from trapline.cli import main
        raise SystemExit(main({argv!r}))
    """)
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120, check=False,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_a_plugin_without_its_extra_stops_with_one_line(case: str, tmp_path: Path) -> None:
    module, extra, section = CONFIGS[case]
    config = tmp_path / "trapline.toml"
    config.write_text(f'[spool]\npath = "{tmp_path}/spool.db"\n' + section)
    result = run_hiding(module, ["run", "-c", str(config)], tmp_path)
    assert result.returncode == cli.EXIT_CONFIG, result.stderr
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"trapline: config error: {config}: ["), line
    assert f"needs {module}" in line and line.endswith(f"pip install 'trapline[{extra}]'"), line
    assert not (tmp_path / "spool.db").exists()  # stopped before anything was opened


@pytest.mark.parametrize("command", ["templates", "provision"])
def test_an_admin_command_without_its_extra_says_so_in_one_line(command: str, tmp_path: Path) -> None:
    result = run_hiding("yaml", [command, "--help"], tmp_path)
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line == f"trapline {command}: needs yaml, not installed here: pip install 'trapline[admin]'"


def test_with_every_library_present_the_same_config_loads(tmp_path: Path) -> None:
    # The counterpart of the hidden-module runs: the check itself passes when nothing is hidden.
    config = tmp_path / "trapline.toml"
    config.write_text(f'[spool]\npath = "{tmp_path}/spool.db"\n' + CONFIGS["mist"][2])
    result = run_hiding("no_such_module_here", ["run", "-c", str(config)], tmp_path)
    assert "pip install" not in result.stderr
    assert "[collectors.m]" in result.stderr  # the Mist builder ran and asked for its own keys


def test_a_plugin_that_fails_to_import_otherwise_is_still_one_line(tmp_path: Path) -> None:
    # A broken install (a file of the plugin itself missing) is not a missing extra: the line
    # names the module that could not be loaded, and there is no traceback either.
    config = tmp_path / "trapline.toml"
    config.write_text(f'[spool]\npath = "{tmp_path}/spool.db"\n' + CONFIGS["mist"][2])
    result = run_hiding("trapline.collectors.mist.stream", ["run", "-c", str(config)], tmp_path)
    assert result.returncode == cli.EXIT_CONFIG, result.stderr
    (line,) = result.stderr.splitlines()
    assert f"{config}: [collectors.m].type: trapline.collectors.mist cannot be loaded: " in line, line
    assert "pip install" not in line
