"""The expected requests of tests/cases/zabbix/ are what the C ``zabbix_sender`` sends too.

tests/test_zabbix_cases.py proves that trapline sends each case's ``requests.json``; this
test proves that file is right, with the real sender as the judge: the same readings go
through ``zabbix_sender -T -N -i FILE`` (its input-file format: host, key, timestamp, ns,
value; quoted, with ``\\"`` and ``\\\\`` escapes) to a recording trapper, and the entries
it sends (host, key, value as text, clock, ns) must be those of ``requests.json``.  How the
entries are split into requests is trapline's own business and not compared.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.support import cases
from tests.support.peers import need_binary
from tests.test_zabbix_cases import case_names, load
from tests.test_zabbix_client import fake_zabbix

Entry = tuple[str, str, str, int, int]


def quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def value_text(value: object) -> str:
    # The text trapline sends for a collector's value; the sender takes the file's text as is.
    if isinstance(value, bool):
        return "1" if value else "0"
    return repr(value) if isinstance(value, float) else str(value)


def input_file(case: dict[str, object]) -> str:
    lines = []
    for round_ in case["rounds"]:  # type: ignore[attr-defined]
        for r in round_:
            host, key, value = quoted(r["host"]), quoted(r["key"]), quoted(value_text(r["value"]))
            lines.append(f'{host} {key} {r["clock"]} {r["ns"]} {value}')
    return "\n".join(lines) + "\n"


def entries(requests: list[list[dict[str, object]]]) -> list[Entry]:
    return sorted(
        (str(e["host"]), str(e["key"]), str(e["value"]), int(e["clock"]), int(e["ns"]))  # type: ignore[call-overload]
        for request in requests
        for e in request
    )


def sent_by_zabbix_sender(path: Path) -> list[list[dict[str, object]]]:
    sender = need_binary("zabbix_sender")

    async def scenario() -> list[list[dict[str, object]]]:
        async with fake_zabbix() as server:
            proc = await asyncio.create_subprocess_exec(
                sender, "-z", "127.0.0.1", "-p", str(server.port), "-T", "-N", "-i", str(path),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )
            out, _ = await proc.communicate()
            assert proc.returncode == 0, out.decode(errors="replace")
            return server.requests

    return asyncio.run(scenario())


SENDABLE = [case for case in case_names() if load(case).get("sender", True)]


@pytest.mark.integration
def test_some_cases_are_left_to_the_sender() -> None:
    # The comparison below must not become empty by a flag set everywhere.
    assert len(SENDABLE) >= 3, SENDABLE


@pytest.mark.integration
@pytest.mark.parametrize("case", SENDABLE)
def test_zabbix_sender_sends_the_entries_the_case_expects(case: str, tmp_path: Path) -> None:
    path = tmp_path / "values.txt"
    path.write_text(input_file(load(case)), encoding="utf-8")
    expected = cases.read_json("zabbix", case, "requests.json")
    assert entries(sent_by_zabbix_sender(path)) == entries(expected)  # type: ignore[arg-type]
