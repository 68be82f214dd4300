"""Secrets never reach a log line, whichever logger writes them and however they are spelt.

The spellings are the ones libraries really print: a header value as is, a query string
(URL-encoded), a JSON body (JSON-escaped), a dict or bytes in a debug dump (repr).
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trapline.core import redact
from trapline.core.config import Secret


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """A root handler of our own with the redact filter, as configure_logging sets one up."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.DEBUG)
    redact.install()
    try:
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def encodings(value: str) -> list[str]:
    return [
        value,
        urllib.parse.quote(value, safe=""),
        urllib.parse.quote_plus(value),
        json.dumps(value)[1:-1],
        repr(value)[1:-1],
        repr(value.encode())[2:-1],
    ]


def test_every_spelling_in_message_args_and_traceback(captured: io.StringIO) -> None:
    token = Secret('tok+en/with "quotes" & é').reveal()
    headers = {"Authorization": f"Token {token}"}
    logging.getLogger("websockets.client").debug("> GET /api-ws/v1/stream %r", headers)
    logging.getLogger("botocore.endpoint").debug("body: %s", json.dumps({"ExternalId": token}))
    logging.getLogger("urllib3.connectionpool").debug("GET /?key=%s", urllib.parse.quote_plus(token))
    logging.getLogger("paho").debug("bytes %r", token.encode())
    try:
        raise RuntimeError(f"the server echoed {token!r}")
    except RuntimeError:
        logging.getLogger("pyzabbix").exception("request failed")
    text = captured.getvalue()
    assert text.count("***") == 5, text
    for spelling in encodings(token):
        assert spelling not in text, spelling


def test_a_secret_split_between_format_and_args(captured: io.StringIO) -> None:
    value = Secret("abcd-efgh-1234").reveal()
    logging.getLogger("x").warning("token abcd-%s", value[5:])
    assert value not in captured.getvalue()


def test_short_values_are_left_alone(captured: io.StringIO) -> None:
    Secret("ab")  # would mask every "ab" in every line
    logging.getLogger("x").warning("about a table")
    assert "about a table" in captured.getvalue()


@settings(deadline=None, max_examples=60)
@given(st.text(st.characters(exclude_categories=["Cs"]), min_size=redact.MIN_LENGTH, max_size=40))
def test_any_secret_text_is_masked(value: str) -> None:
    Secret(value)
    for spelling in encodings(value):
        assert spelling not in redact.mask(f"<{spelling}>")


def _run(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return result.stderr


def test_python_obd_messages_print_once_and_masked() -> None:
    # python-OBD adds its own stderr handler at import; through ours too, every line came twice.
    stderr = _run(
        "import logging, obd\n"
        "from trapline.core.config import Secret\n"
        "from trapline.app.settings import configure_logging\n"
        "Secret('obd-secret-value')\n"
        "configure_logging('debug')\n"
        "logging.getLogger('obd.elm327').warning('marker obd-secret-value')\n"
        "logging.getLogger('obd.obd').debug('debug marker')\n"
    )
    assert stderr.count("marker ***") == 1, stderr
    assert "obd-secret-value" not in stderr
    assert stderr.count("debug marker") == 1, stderr  # --log-level, not python-OBD, decides


def test_a_crash_traceback_is_masked_too() -> None:
    result = subprocess.run(
        [sys.executable, "-c",
         "from trapline import cli\n"
         "from trapline.core.config import Secret\n"
         "Secret('crash-secret-value')\n"
         "def crash(args): raise RuntimeError('echoed crash-secret-value')\n"
         "cli.cmd_run = crash\n"
         "raise SystemExit(cli.main(['run', '-c', 'unused.toml']))\n"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 1
    assert "RuntimeError: echoed ***" in result.stderr
    assert "crash-secret-value" not in result.stderr
