"""Readings to trapper requests, as data: the cases in tests/cases/zabbix/ (see its README).

Each case is replayed through the real Zabbix destination against a trapper that records
what arrives and accepts everything.  The expected requests of the cases the C
``zabbix_sender`` can also send are checked against it in
tests/integration/test_zabbix_cases_sender.py.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.support import cases
from tests.test_zabbix_client import fake_zabbix
from trapline.core.model import Reading
from trapline.core.plugin import Spooled
from trapline.exporters.zabbix.client import ClusterClient
from trapline.exporters.zabbix.destination import ZabbixDestination

CASES = cases.CASES / "zabbix"


def case_names() -> list[str]:
    return cases.case_names("zabbix", "readings.json")


def load(case: str) -> dict[str, Any]:
    loaded: dict[str, Any] = cases.read_json("zabbix", case, "readings.json")  # type: ignore[assignment]
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
    assert replay(load(case)) == cases.read_json("zabbix", case, "requests.json")


def test_every_case_folder_is_complete() -> None:
    folders = sorted(p.name for p in CASES.iterdir() if p.is_dir())
    assert folders == case_names()
    assert all((CASES / case / "requests.json").is_file() for case in folders)


if __name__ == "__main__":
    cases.write_expected("zabbix", lambda case: {"requests.json": replay(load(case))})
