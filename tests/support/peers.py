"""Helpers for integration tests that need a real peer.

Under ``CI=true`` a missing peer fails the test: a skipped integration test
must never count as a pass there.  On a developer machine it skips with the
reason, so the fast unit tests stay usable without the heavy stack.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from typing import NoReturn

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing_peer(why: str) -> NoReturn:
    if IN_CI:
        pytest.fail(f"required peer unavailable under CI=true: {why}", pytrace=False)
    pytest.skip(f"peer unavailable: {why}")


def need_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        missing_peer(f"{name} is not installed (run `make test`, which installs it)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> bool:
    """Poll until something accepts TCP connections on host:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False
