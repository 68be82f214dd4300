"""Sample configs made loadable: their secret and TLS file paths replaced by private files."""

from __future__ import annotations

import re
from pathlib import Path


def private_copy(sample: str, tmp_path: Path) -> str:
    """The sample with every ``*_file`` path pointing at a private file that exists."""

    def replace(match: re.Match[str]) -> str:
        target = tmp_path / match.group(1)
        if match.group(1).startswith("tls_"):
            target.write_text("not a real certificate\n")
        else:
            target.write_text("sample-secret\n")
        target.chmod(0o600)
        return f'{match.group(1)} = "{target}"'

    return re.sub(r'^([a-z_]*_file)\s*=\s*"[^"]*"', replace, sample, flags=re.M)
