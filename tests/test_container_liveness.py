"""``trapline check --liveness``: the container's HEALTHCHECK asks the running agent, not its peers.

Against the real exporter (its asyncio HTTP handler on a loop of its own) and against a real
``trapline run`` process, frozen with SIGSTOP to stand for an event loop that no longer turns.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.agent_process import running_agent, toml_config
from tests.support.peers import free_port, wait_port
from tests.support.zabbix_fixtures import wait_until
from trapline import cli
from trapline.core.model import Reading
from trapline.exporters.prometheus import PrometheusExporter
from trapline.middleware.normalize import normalize

UPTIME = Reading("centre-1", "trapline.uptime", 42, 0, 0, "s")


@contextmanager
def serving(exporter: PrometheusExporter) -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(exporter.start(), loop).result(10)
    try:
        yield loop
    finally:
        asyncio.run_coroutine_threadsafe(exporter.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def config(tmp_path: Path, listen: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(toml_config({"prometheus": {"listen": listen}}))
    return path


def liveness(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli.main(["check", "--liveness", "-c", str(path)])
    return code, capsys.readouterr().out


def alive_within(path: Path, capsys: pytest.CaptureFixture[str], seconds: float) -> str:
    """What the check printed once it said alive (the agent needs a moment to start)."""
    said: list[str] = []

    def alive() -> bool:
        code, out = liveness(path, capsys)
        said.append(out)
        return code == 0

    wait_until(alive, timeout=seconds, interval=0.2, what="the liveness check to say alive")
    return said[-1]


def test_alive_once_the_self_monitoring_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    exporter = PrometheusExporter("127.0.0.1", 0, stale_after=600)
    with serving(exporter) as loop:
        path = config(tmp_path, f"127.0.0.1:{exporter.port}")
        code, out = liveness(path, capsys)
        assert code == 1, out
        assert "without trapline_uptime_seconds" in out
        loop.call_soon_threadsafe(exporter.observe, normalize(UPTIME))
        out = alive_within(path, capsys, 5)
        assert out.startswith("alive: ") and 'trapline_uptime_seconds{host="centre-1"} 42.0' in out


def test_a_wildcard_listener_is_asked_on_loopback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    exporter = PrometheusExporter("0.0.0.0", 0, stale_after=600)
    exporter.observe(normalize(UPTIME))
    with serving(exporter):
        code, out = liveness(config(tmp_path, f"0.0.0.0:{exporter.port}"), capsys)
    assert code == 0, out
    assert "http://127.0.0.1:" in out


def test_nothing_listening_is_not_alive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = liveness(config(tmp_path, f"127.0.0.1:{free_port()}"), capsys)
    assert code == 1
    assert out.startswith("not alive: ") and "ConnectionRefusedError" in out


def test_a_config_without_prometheus_is_a_config_error(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(toml_config({"agent": {"flush_interval": 0.5}}))
    with pytest.raises(SystemExit) as stopped:
        cli.main(["check", "--liveness", "-c", str(path)])
    assert stopped.value.code == cli.EXIT_CONFIG
    err = capsys.readouterr().err
    assert "[prometheus]" in err and "--liveness asks the agent's [prometheus] endpoint" in err


def test_a_running_agent_is_alive_and_a_frozen_one_is_not(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    path = tmp_path / "agent.toml"
    path.write_text(toml_config({
        "agent": {"self_interval": 1},
        "spool": {"path": str(tmp_path / "spool.db")},
        "prometheus": {"listen": f"127.0.0.1:{port}"},
        "collectors.synth": {"type": "synthetic", "host": "van-1", "series": 1, "interval": 0.5},
    }))
    # A frozen agent is found out by the timeout: shortened here, the health check's is 5 s.
    monkeypatch.setattr(cli, "LIVENESS_TIMEOUT", 0.5)
    with running_agent(path, tmp_path / "agent.log") as agent:
        assert wait_port(port, timeout=30), agent.output()
        alive_within(path, capsys, 10)
        pid = agent._require().pid
        os.kill(pid, signal.SIGSTOP)
        try:
            code, out = liveness(path, capsys)
            assert code == 1, out
            assert "TimeoutError" in out or "timed out" in out, out
        finally:
            os.kill(pid, signal.SIGCONT)
        alive_within(path, capsys, 10)  # the same agent, thawed
        # The command line the image's HEALTHCHECK runs, as its own process.
        done = subprocess.run([sys.executable, "-m", "trapline", "check", "--liveness", "-c", str(path)],
                              capture_output=True, text=True, timeout=30, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
