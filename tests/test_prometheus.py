"""Prometheus exporter: naming, base units, counters, vanished series, and promtool's lint."""

from __future__ import annotations

import asyncio
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client import generate_latest

from tests.support.peers import need_binary
from trapline.core.model import Discovery, Reading
from trapline.exporters.prometheus.exporter import PrometheusExporter
from trapline.middleware.normalize import normalize

SAMPLES = [
    Reading("van-1", "obd.pid[SPEED]", 72, 0, 0, "kph", {"pid": "SPEED"}),
    Reading("van-1", "obd.pid[RPM]", 900, 0, 0, "revolutions_per_minute", {"pid": "RPM"}),
    Reading("van-1", "obd.pid[COOLANT_TEMP]", 90, 0, 0, "degree_Celsius", {"pid": "COOLANT_TEMP"}),
    Reading("van-1", "obd.voltage", 12.5, 0, 0, "V"),
    Reading("van-1", "obd.vin", "WP0ZZZ99ZTS390000", 0, 0),  # text: not a time series
    Reading("agent", "trapline.sent[zabbix:10.0.0.1:10051]", 5, 0, 0),
    Reading("agent", "trapline.spool.oldest.age", 1.5, 0, 0, "s"),
]


def exposition(exporter: PrometheusExporter) -> str:
    return generate_latest(exporter.registry).decode()


def filled() -> PrometheusExporter:
    exporter = PrometheusExporter("127.0.0.1", 0, stale_after=600)
    for reading in SAMPLES:
        exporter.observe(normalize(reading))
    exporter.observe(Discovery("van-1", "obd.pid.discovery", ({"{#PID}": "SPEED"},), 0))
    return exporter


def test_names_units_and_counters() -> None:
    text = exposition(filled())
    assert 'trapline_obd_pid_meters_per_second{host="van-1",pid="SPEED"} 20.0' in text
    assert 'trapline_obd_pid_celsius{host="van-1",pid="COOLANT_TEMP"} 90.0' in text
    assert 'trapline_obd_voltage_volts{host="van-1"} 12.5' in text
    assert "# TYPE trapline_sent_total counter" in text
    assert 'trapline_sent_total{destination="zabbix:10.0.0.1:10051",host="agent"} 5.0' in text
    assert "trapline_spool_oldest_age_seconds" in text
    assert "vin" not in text and "discovery" not in text


def test_vanished_series_are_removed() -> None:
    exporter = PrometheusExporter("127.0.0.1", 0, stale_after=0.05)
    exporter.observe(normalize(SAMPLES[3]))
    assert "obd_voltage" in exposition(exporter)
    time.sleep(0.1)
    assert "obd_voltage" not in exposition(exporter)


@pytest.mark.integration
def test_promtool_finds_nothing_to_lint() -> None:
    promtool = need_binary("promtool")
    result = subprocess.run([promtool, "check", "metrics"], input=exposition(filled()),
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_served_over_http_and_bad_requests_survive() -> None:
    async def scenario() -> tuple[str, int]:
        exporter = filled()
        await exporter.start()
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", exporter.port)
            writer.write(b"\x00garbage without end of headers")
            writer.close()
            url = f"http://127.0.0.1:{exporter.port}/metrics"
            body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
            status = await asyncio.to_thread(_status, f"http://127.0.0.1:{exporter.port}/other")
            return body, status
        finally:
            await exporter.close()

    body, status = asyncio.run(scenario())
    assert "trapline_obd_voltage_volts" in body
    assert status == 404


def _status(url: str) -> int:
    try:
        return int(urllib.request.urlopen(url, timeout=5).status)
    except urllib.error.HTTPError as err:
        return int(err.code)
