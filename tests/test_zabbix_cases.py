"""Readings to trapper requests, as data: the cases in tests/cases/zabbix/ (see its README).

Each case is replayed through the real Zabbix destination against a trapper that records
what arrives and accepts everything.  The expected requests of the cases the C
``zabbix_sender`` can also send are checked against it in
tests/integration/test_zabbix_cases_sender.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.test_zabbix_client import fake_zabbix
from trapline.exporters.zabbix.client import ClusterClient
from trapline.exporters.zabbix.destination import ZabbixDestination
from trapline.middleware.model import Reading
from trapline.middleware.plugin import Spooled

CASES = Path(__file__).resolve().parent / "cases" / "zabbix"


def case_names() -> list[str]:
    return sorted(p.name for p in CASES.iterdir() if (p / "readings.json").is_file())


def load(case: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((CASES / case / "readings.json").read_text(encoding="utf-8"))
    return loaded


def readings_of(round_: list[dict[str, Any]]) -> list[Reading]:
    return [Reading(r["host"], r["key"], r["value"], r["clock"], r["ns"]) for r in round_]


def replay(case: dict[str, Any]) -> list[list[dict[str, object]]]:
    """The ``data`` arrays of the requests the destination sends for the case, in order."""

    async def scenario() -> list[list[dict[str, object]]]:
        async with fake_zabbix() as server:
            client = ClusterClient([server.endpoint], timeout=5)
            dest = ZabbixDestination("case", client, batch_size=case["batch_size"], concurrency=1)
            next_id = 0
            for round_ in case["rounds"]:
                batch = []
                for reading in readings_of(round_):
                    batch.append(Spooled(next_id, reading, time.time(), 0))
                    next_id += 1
                delivery = await dest.deliver(batch)
                assert sorted(delivery.accepted) == [s.id for s in batch], delivery
            await dest.close()
            return server.requests

    return asyncio.run(scenario())


@pytest.mark.parametrize("case", case_names())
def test_case_sends_the_expected_requests(case: str) -> None:
    expected = json.loads((CASES / case / "requests.json").read_text(encoding="utf-8"))
    assert replay(load(case)) == expected


def test_every_case_folder_is_complete() -> None:
    folders = sorted(p.name for p in CASES.iterdir() if p.is_dir())
    assert folders == case_names()
    assert all((CASES / case / "requests.json").is_file() for case in folders)


def main() -> None:
    parser = argparse.ArgumentParser(description="write requests.json of a case from its readings.json")
    parser.add_argument("--write", required=True, metavar="CASE")
    case = parser.parse_args().write
    requests = replay(load(case))
    text = json.dumps(requests, ensure_ascii=False, indent=1) + "\n"
    (CASES / case / "requests.json").write_text(text, encoding="utf-8")
    print(f"{case}: {len(requests)} requests")


if __name__ == "__main__":
    main()
