"""A real mosquitto broker for tests: loopback, a free port, persistence in a temp dir.

``Mosquitto(tmp_path).start()`` writes the config, starts the broker and waits
for its port; ``stop()`` ends it with SIGTERM (mosquitto then saves its
persistence file, so ``start()`` again restores sessions and queued messages
on the same port, like a broker restart in the field).
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Self

from tests.support.peers import free_port, missing_peer, need_binary, wait_port


class Mosquitto:
    def __init__(self, workdir: Path, users: dict[str, str] | None = None) -> None:
        self.binary = need_binary("mosquitto")
        self.workdir = workdir
        self.port = free_port()
        self.users = users or {}
        self.process: subprocess.Popen[bytes] | None = None
        self.log = workdir / "mosquitto.log"

    def _write_config(self) -> Path:
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        lines = [
            f"listener {self.port} 127.0.0.1",
            # Sessions and queued messages survive a restart (saved on SIGTERM). Shared
            # subscriptions do not in 2.0.11: see exporters/MQTT.md for what that means.
            "persistence true",
            f"persistence_location {data}/",
            # The default (1000) silently drops messages queued for an absent bridge beyond that.
            "max_queued_messages 0",
            # mosquitto drops root privileges to the "mosquitto" user unless told otherwise.
            "user root",
            f"log_dest file {self.log}",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        if self.users:
            passwords = self.workdir / "passwords"
            passwords.write_text("")
            for user, password in self.users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(passwords), user, password], check=True)
            lines += ["allow_anonymous false", f"password_file {passwords}"]
        else:
            lines.append("allow_anonymous true")
        config = self.workdir / "mosquitto.conf"
        config.write_text("\n".join(lines) + "\n")
        return config

    def start(self) -> Self:
        config = self._write_config()
        self.process = subprocess.Popen([self.binary, "-c", str(config)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if not wait_port(self.port, timeout=10):
            _, err = self.stop_process()
            missing_peer(f"mosquitto did not open port {self.port}: {err.decode(errors='replace')[-500:]}")
        return self

    def stop_process(self) -> tuple[bytes, bytes]:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return b"", b""
        process.send_signal(signal.SIGTERM)
        try:
            return process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.communicate()

    def stop(self) -> None:
        self.stop_process()

    def url(self) -> str:
        return f"127.0.0.1:{self.port}"


@contextlib.contextmanager
def running_mosquitto(workdir: Path, users: dict[str, str] | None = None) -> Iterator[Mosquitto]:
    broker = Mosquitto(workdir, users).start()
    try:
        yield broker
    finally:
        broker.stop()
