"""The installed package holds the product only (docs/architecture.md, "Folders"): the wheel
built from this tree has the agent, its plugins and the templates, and none of the
development tools, tests or benchmarks."""

from __future__ import annotations

import zipfile
from pathlib import Path

from tests.support.wheel import build_wheel


def test_the_wheel_holds_the_product_and_no_development_tools(tmp_path: Path) -> None:
    names = zipfile.ZipFile(build_wheel(tmp_path)).namelist()
    top = {name.split("/")[0] for name in names}
    assert {"devtools", "tests", "bench"}.isdisjoint(top), sorted(top)
    assert not [n for n in names if "localzabbix" in n or "demo_data" in n or n.endswith("/demo.py")]
    # What the product needs is there: the CLI, each source folder linked in, the templates.
    for needed in (
        "trapline/cli.py",
        "trapline/middleware/pipeline.py",
        "trapline/collectors/mist/collector.py",
        "trapline/exporters/zabbix/protocol.py",
        "trapline/zabbix_templates/vehicle_obd_gps/template_vehicle_obd_gps.yaml",
    ):
        assert needed in names, needed
