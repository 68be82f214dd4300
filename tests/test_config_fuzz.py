"""Any file given as the config ends in a Settings or in one line naming the file (exit 2), never a traceback.

The inputs are not shaped by us: arbitrary bytes, TOML documents built from the TOML value
model (every type TOML has, legal names with commas, quotes and non-ASCII, any nesting),
and mutations of the configs we ship (deploy/raspberrypi/trapline.toml.in, deploy/centre/*.toml.in,
the ```toml blocks of README.md and collectors/mist/README.md, devtools/demo_data/agent.toml): a value
replaced by any TOML value, a key dropped, an unknown key added, bytes flipped.  Each runs
through the real loader, and each rejected one also through the CLI entry, in-process.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import string
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trapline import cli
from trapline.app.settings import load_settings
from trapline.core.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent
FUZZ = settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])


def _shipped_examples() -> list[str]:
    texts = []
    deploy = (ROOT / "deploy/raspberrypi/trapline.toml.in").read_text(encoding="utf-8")
    for var, value in {
        "@VEHICLE@": "van-17",
        "@TRAPLINE_SERVERS@": "127.0.0.1:10051",
        "@OBD_DEVICE@": "/dev/elm327",
        "@UPLINK_COMMENT@": "via the local Zabbix proxy",
        "@PSK_COMMENT@": "# ",  # the PSK lines as the proxy uplink leaves them
        "@FLEET_PSK_IDENTITY@": "trapline-fleet",
        "@FLEET_PSK_FILE@": "/etc/trapline/secrets/fleet.psk",
    }.items():
        deploy = deploy.replace(var, value)
    texts.append(deploy)
    for role in sorted((ROOT / "deploy/centre").glob("*.toml.in")):  # what install.sh fills in
        text = role.read_text(encoding="utf-8").replace("@SERVER@", "127.0.0.1:10051")
        texts.append(text.replace("@AGENT_HOST@", "trapline-centre").replace("@HOSTNAME@", "centre-1"))
    for readme in ("README.md", "collectors/mist/README.md"):
        body = (ROOT / readme).read_text(encoding="utf-8")
        texts += re.findall(r"```toml\n(.*?)```", body, flags=re.DOTALL)
    demo = (ROOT / "devtools/demo_data/agent.toml").read_text(encoding="utf-8")
    texts.append(string.Template(demo).substitute(  # the values devtools/demo.py fills in
        agent_host="trapline-agent", vehicle_host="van-17", trapper="127.0.0.1:10051",
        api_url="http://127.0.0.1/api_jsonrpc.php", prometheus="127.0.0.1:9708",
        elm="127.0.0.1:35000", gpsd_port="2947", mist_host="Mist discovery", mist_port="8765",
        mist_org="6b1b6ba4-ccd5-4ed4-9e3d-5b0a4e0c0f02", aws_host="aws-demo", aws_port="5000",
        aws_region="eu-west-1",
    ))
    return texts


def _localise(table: dict[str, Any]) -> dict[str, Any]:
    """Point the files an example names at ones the test writes, so mutations reach past them."""
    for key, value in table.items():
        if isinstance(value, dict):
            _localise(value)
        elif key.endswith("_file") and isinstance(value, str):
            table[key] = SECRET  # relative paths are relative to the config file
        elif key == "path" and isinstance(value, str):
            table[key] = "spool.db"
        elif isinstance(value, list) and any(str(v).startswith("<") for v in value):
            table[key] = ["6b1b6ba4-ccd5-4ed4-9e3d-5b0a4e0c0f01"]  # README placeholders like "<site id>"
    return table


SECRET = "secret"
EXAMPLES = [_localise(tomllib.loads(text)) for text in _shipped_examples()]


# -- a small TOML writer (the standard library only reads TOML) ------------------------
def _toml_string(value: str) -> str:
    # JSON escapes are TOML basic-string escapes, except that TOML also forbids a raw DEL.
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007F")


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_string(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def to_toml(doc: dict[str, Any]) -> str:
    """Top-level scalars first, then one ``[table]`` per table (nested tables stay inline)."""
    lines = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for name, table in doc.items():
        if isinstance(table, dict):
            lines.append(f"[{_toml_key(name)}]")
            lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


# -- strategies ----------------------------------------------------------------------------
# TOML strings are Unicode scalar values: surrogates cannot be written.
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=30)
NAMES = TEXT.filter(bool) | st.sampled_from(
    ["host", "port", "servers", "api_url", "keepalive", "listen", "token_file", "a,b", "q\"uote", "véhicule"]
)
INTERESTING = st.sampled_from(
    [0, -1, 1, 65535, 65536, 99999, 2**31, 2**32, 2**63 - 1, -(2**63), "not a url", "127.0.0.1:10051:1",
     10**400, "[::1]:0", "http://", "ws://host:99999/x", "", "a\x00b", "no-such-host.invalid:9708",
     "/dev/null"]
)
SCALARS = (
    st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.integers(min_value=2**63).map(lambda n: n**3)  # TOML (tomllib) reads integers of any size
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.booleans()
    | TEXT
    | INTERESTING
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(NAMES, inner, max_size=4),
    max_leaves=12,
)
SECTION_NAMES = st.sampled_from(
    ["agent", "spool", "filters", "zabbix", "prometheus", "mqtt", "collectors", "logging"]
) | NAMES


def _paths(doc: dict[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for key, value in doc.items():
        yield (*prefix, key)
        if isinstance(value, dict):
            yield from _paths(value, (*prefix, key))


@st.composite
def mutated_example(draw: st.DrawFn) -> dict[str, Any]:
    doc = json.loads(json.dumps(draw(st.sampled_from(EXAMPLES))))  # a deep copy
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(list(_paths(doc))))
        parent = doc
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["replace", "drop", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(VALUES)
        elif action == "drop":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(NAMES)] = draw(VALUES)
        if not doc:
            break
    return doc


# -- the property --------------------------------------------------------------------------
def _write(directory: Path, raw: bytes) -> Path:
    secret = directory / SECRET
    secret.write_text("s3cret-for-the-fuzz-test")
    secret.chmod(0o600)
    path = directory / "trapline.toml"
    path.write_bytes(raw)
    return path


def test_the_shipped_examples_load(tmp_path: Path) -> None:
    """The mutations start from configs that are good, so they probe past the first key."""
    for doc in EXAMPLES:
        load_settings(_write(tmp_path, to_toml(doc).encode("utf-8")))


def _check_file(directory: Path, raw: bytes) -> None:
    path = _write(directory, raw)
    try:
        load_settings(path)
    except ConfigError as exc:
        line = str(exc)
        assert line.startswith(f"{path}: "), line
        assert "\n" not in line, line
    else:
        return  # a good config: the CLI would go on to contact its endpoints
    for command in ("check", "run"):
        code, stderr = run_cli(command, path)
        assert code == cli.EXIT_CONFIG, (command, code, stderr)
        lines = stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"trapline: config error: {path}: "), lines


def run_cli(command: str, path: Path) -> tuple[int | str | None, str]:
    """The CLI entry in-process: its exit code and what it wrote to stderr."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            code: int | str | None = cli.main([command, "-c", str(path)])
        except SystemExit as exc:
            code = exc.code
    return code, stderr.getvalue()


@FUZZ
@given(st.binary(max_size=300))
def test_any_bytes(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _check_file(Path(tmp), raw)


@FUZZ
@given(st.dictionaries(SECTION_NAMES, VALUES | st.dictionaries(NAMES, VALUES, max_size=6), max_size=5))
def test_any_toml_document(doc: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _check_file(Path(tmp), to_toml(doc).encode("utf-8"))


@FUZZ
@given(mutated_example())
def test_mutations_of_the_shipped_examples(doc: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _check_file(Path(tmp), to_toml(doc).encode("utf-8"))


@FUZZ
@given(st.sampled_from(_shipped_examples()), st.data())
def test_byte_flips_in_the_shipped_examples(text: str, data: st.DataObject) -> None:
    raw = bytearray(text.encode("utf-8"))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] = data.draw(st.integers(0, 255))
    with tempfile.TemporaryDirectory() as tmp:
        _check_file(Path(tmp), bytes(raw))


def test_deep_nesting_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "trapline.toml"
    path.write_text("x = " + "[" * 100_000 + "]" * 100_000 + "\n")
    for command in ("check", "run"):
        code, stderr = run_cli(command, path)
        assert code == cli.EXIT_CONFIG
        assert stderr.startswith(f"trapline: config error: {path}: ") and stderr.count("\n") == 1
