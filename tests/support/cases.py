"""Test cases kept as data (tests/cases/<kind>/<case>/): listing them, and writing their expected output."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

CASES = Path(__file__).resolve().parents[1] / "cases"


def case_names(kind: str, input_name: str) -> list[str]:
    return sorted(p.name for p in (CASES / kind).iterdir() if (p / input_name).is_file())


def read_json(kind: str, case: str, name: str) -> object:
    return json.loads((CASES / kind / case / name).read_text(encoding="utf-8"))


def write_expected(kind: str, produce: Callable[[str], dict[str, object]]) -> None:
    """``--write CASE``: run the case and write each output file ``produce`` returns, by name."""
    parser = argparse.ArgumentParser(description=f"write the expected output of a {kind} case")
    parser.add_argument("--write", required=True, metavar="CASE")
    case = parser.parse_args().write
    for name, content in produce(case).items():
        text = json.dumps(content, ensure_ascii=False, indent=1) + "\n"
        (CASES / kind / case / name).write_text(text, encoding="utf-8")
        print(f"{kind}/{case}/{name} written")
