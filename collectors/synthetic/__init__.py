"""The ``synthetic`` collector: numbered and sine series for trying a set-up and for fault tests.
Settings: sample.toml; documentation: README.md."""

from trapline.collectors.synthetic.collector import SyntheticCollector, build

__all__ = ["SyntheticCollector", "build"]
