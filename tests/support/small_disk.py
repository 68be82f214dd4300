"""A tiny tmpfs to put a spool on, and a way to fill it and free it again.

Mounting needs root (``mount -t tmpfs -o size=2m``); without it the tests that
use this are skipped, or fail under ``CI=true`` (tests/support/peers.py).
"""

from __future__ import annotations

import errno
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.peers import missing_peer


class SmallDisk:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._filler = path / "filler"

    def fill(self) -> int:
        """Write until the file system says ENOSPC; returns the bytes written."""
        written = 0
        chunk = b"\0" * 4096
        with self._filler.open("ab", buffering=0) as f:
            try:
                while True:
                    f.write(chunk)
                    written += len(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
        return written

    def free(self) -> None:
        self._filler.unlink(missing_ok=True)


@contextmanager
def small_disk(size: str = "2m") -> Iterator[SmallDisk]:
    mountpoint = Path(tempfile.mkdtemp(prefix="trapline-small-disk-"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mountpoint)],
        capture_output=True, text=True, check=False,
    )
    if mounted.returncode != 0:
        mountpoint.rmdir()
        missing_peer(f"cannot mount a {size} tmpfs: {mounted.stderr.strip()}")
    try:
        yield SmallDisk(mountpoint)
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)
        mountpoint.rmdir()
