"""pytest plugin: a fresh in-process ELM327-emulator per test, and an OBD collector section for it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.peers import free_port, missing_peer, wait_port
from trapline.core.config import Section

HOST = "van-17"


def obd_section(port: int, state_dir: Path, **extra: Any) -> Section:
    """An OBD collector on the emulator at ``port``, remembering its DTCs in ``state_dir``."""
    data: dict[str, Any] = {
        "type": "obd",
        "host": HOST,
        "device": f"socket://127.0.0.1:{port}",
        "protocol": "6",
        "call_timeout": 2.0,
        "connect_timeout": 10.0,
        "retry_initial": 0.1,
        "retry_max": 0.5,
        "idle_interval": 0.3,
        "dtc_interval": 0.5,
        "state_dir": str(state_dir),
        "tiers": {
            "fast": {"interval": 0.1, "pids": ["SPEED", "RPM", "THROTTLE_POS"]},
            "slow": {"interval": 0.5, "pids": ["COOLANT_TEMP", "INTAKE_TEMP", "FUEL_LEVEL", "OIL_TEMP"]},
        },
    }
    return Section(Path("test.toml"), "collectors.car", data | extra)


def request_log(emu: Any) -> list[str]:
    """Every request line the emulator handles from now on, without spaces, upper case."""
    seen: list[str] = []
    handle = emu.handle_request

    def spy(cmd: str, do_write: bool = False) -> Any:
        seen.append(cmd.replace(" ", "").upper())
        return handle(cmd, do_write)

    emu.handle_request = spy
    return seen


@pytest.fixture
def elm_module() -> Iterator[Any]:
    os.environ["ELM_LOG_CFG"] = "/nonexistent"  # else the emulator writes elm.log into the cwd
    try:
        import elm  # noqa: PLC0415 - a missing emulator must go through missing_peer
        from elm import obd_message  # noqa: PLC0415
    except ImportError:
        missing_peer("ELM327-emulator is not installed (pip install ELM327-emulator)")
    obd_message.DTC_STORED.clear()
    obd_message.DTC_PENDING.clear()
    yield elm
    obd_message.DTC_STORED.clear()
    obd_message.DTC_PENDING.clear()


@pytest.fixture
def emulator(elm_module: Any) -> Iterator[tuple[Any, int]]:
    """A fresh in-process emulator per test (a client hanging up can crash its worker)."""
    port = free_port()
    with elm_module.Elm(net_port=port) as emu:
        emu.set_sorted_obd_msg("car")
        if not wait_port(port):
            missing_peer("ELM327-emulator did not open its TCP port")
        yield emu, port
