"""``trapline config example ROLE``: a whole commented config for one role, made of the samples.

The agent's own sections come from ``trapline/app/sample.toml`` and each plugin's from its
``sample.toml``, so an example can never say something its plugin's documentation does not.
"""

from __future__ import annotations

import argparse
from importlib import resources
from typing import Any

# Per role, the plugins its config holds (package paths of their folders).
ROLES: dict[str, tuple[str, ...]] = {
    "vehicle": ("exporters.zabbix", "collectors.obd", "collectors.gps"),
    "mist": ("exporters.zabbix", "exporters.prometheus", "collectors.mist"),
    # The centre roles serve /metrics: the container's health check reads the agent's uptime there.
    "aws": ("exporters.zabbix", "exporters.prometheus", "collectors.aws"),
    "bridge": ("exporters.zabbix", "exporters.prometheus", "collectors.mqtt_bridge"),
    "demo": ("exporters.zabbix", "exporters.prometheus", "collectors.synthetic"),
}
_SPOOL_PATH = 'path = "/var/lib/trapline/spool.db"'
# The vehicle keeps the Pi's layout; the centre roles each have a spool of their own
# (deploy/centre: /var/lib/trapline/<role>/).
_CENTRE_ROLES = ("mist", "aws", "bridge")


def _sample(package: str) -> str:
    return resources.files(package).joinpath("sample.toml").read_text("utf-8")


def example(role: str) -> str:
    agent = _sample("trapline.app")
    if role in _CENTRE_ROLES:
        agent = agent.replace(_SPOOL_PATH, f'path = "/var/lib/trapline/{role}/spool.db"')
    parts = [
        f"# trapline config for the {role} role: the samples of its plugins, one after another.\n"
        "# Commented keys show their defaults; replace the example endpoints and secret files.\n",
        agent,
        *(_sample(f"trapline.{plugin}") for plugin in ROLES[role]),
    ]
    return "\n".join(part.rstrip("\n") + "\n" for part in parts)


def _cmd_example(args: argparse.Namespace) -> int:
    print(example(args.role), end="")
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``config`` on the ``trapline`` command line."""
    parser: argparse.ArgumentParser = subparsers.add_parser("config", help="example configurations")
    actions = parser.add_subparsers(dest="action", required=True)
    shown = actions.add_parser("example", help="print a commented config for a role")
    shown.add_argument("role", choices=sorted(ROLES))
    shown.set_defaults(func=_cmd_example)
    return parser
