"""What the demo and its simulators share: the scenario file and the ready-file handshake."""

from __future__ import annotations

import argparse
import tomllib
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any


def scenario_data() -> dict[str, Any]:
    """``devtools/demo_data/scenario.toml``: every host, fault and simulated device of the demo."""
    return tomllib.loads(resources.files("devtools.demo_data").joinpath("scenario.toml").read_text("utf-8"))


def announce_port(ready: Path, port: int) -> None:
    """Tell the demo where a simulator listens: the file appears whole or not at all."""
    partial = ready.with_name(ready.name + ".part")
    partial.write_text(f"{port}\n", encoding="ascii")
    partial.rename(ready)


def ready_file(argv: Sequence[str] | None, module: str, doc: str | None, when: str) -> Path:
    """A simulator's command line: only ``--ready FILE``, where its port is announced ``when``."""
    parser = argparse.ArgumentParser(prog=f"python3 -m {module}", description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ready", type=Path, required=True, metavar="FILE",
                        help=f"where to write the listening port {when}")
    ready: Path = parser.parse_args(argv).ready
    return ready
