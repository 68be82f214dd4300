"""The ``trapline`` command: run, check, templates, provision, config."""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import logging
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from trapline import __version__
from trapline.app.settings import Settings, build_pipeline, configure_logging, load_settings
from trapline.core import redact
from trapline.core.config import ConfigError, extra_hint, load_toml, missing_modules
from trapline.core.plugin import Collector, Destination, Observer

EXIT_CONFIG = 2


def _load(path: Path) -> Settings:
    try:
        return load_settings(path)
    except ConfigError as exc:
        _config_error(str(exc))
    except Exception as exc:
        _config_error(f"{path}: {type(exc).__name__}: {exc}")


def _config_error(line: str) -> NoReturn:
    # print(), not logging: logging is not set up yet.  Masked all the same, since the
    # text may quote a value read from the config.
    print(f"trapline: config error: {redact.mask(line)}", file=sys.stderr)
    raise SystemExit(EXIT_CONFIG)


def cmd_run(args: argparse.Namespace) -> int:
    settings = _load(args.config)
    configure_logging(args.log_level or settings.log_level)
    try:
        pipeline = build_pipeline(settings)
    except Exception as exc:
        print(f"trapline: cannot open spool {settings.spool.path}: {exc}", file=sys.stderr)
        return 1
    freeze_startup_objects()
    try:
        asyncio.run(pipeline.run())
    finally:
        pipeline.spool.close()
    return 0


def freeze_startup_objects() -> None:
    """Take what exists now (modules, settings, plugins: it lives as long as the agent) out of the
    cycle collector's sight, so its full collections walk only newer objects (bench/RESULTS.md)."""
    gc.collect()  # garbage of the start-up is freed, not frozen
    gc.freeze()


async def _check_all(settings: Settings) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = [("config", "ok", str(settings.file)), _check_spool(settings)]
    components: list[Destination | Observer | Collector] = [
        *settings.destinations, *settings.observers, *settings.collectors
    ]
    for component in components:
        name = str(getattr(component, "name", type(component).__name__))
        check = getattr(component, "check", None)
        if check is None:
            rows.append((name, "ok", "configured (no endpoint test)"))
            continue
        try:
            async with asyncio.timeout(30):
                detail = await check()
            rows.append((name, "ok", str(detail)))
        except Exception as exc:
            rows.append((name, "FAILED", str(exc) or type(exc).__name__))
    return rows


def _resolve_hosts(settings: Settings) -> None:
    """A host name that does not resolve when ``check`` runs is a config error (a typo, mostly).

    ``run`` does not do this: on a vehicle, DNS may come up after the agent.
    """
    for where, host in settings.hosts:
        try:
            socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            _config_error(f"{where}: cannot resolve {host!r} ({exc})")


def _check_spool(settings: Settings) -> tuple[str, str, str]:
    """Open the spool exactly as ``run`` does (creating it if missing), then close it."""
    try:
        build_pipeline(settings).spool.close()
    except Exception as exc:  # whatever would stop `run` at start
        return ("spool", "FAILED", f"{settings.spool.path}: {type(exc).__name__}: {exc}")
    return ("spool", "ok", str(settings.spool.path))


# A container health check runs this every 30 s: well below its own timeout.
LIVENESS_TIMEOUT = 5.0
# An agent listening on every address is asked on loopback.
_WILDCARD_TO_LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1"}


def check_liveness(config: Path) -> int:
    """Ask the agent that runs ``config`` whether it is alive; exit status 0 if it is.

    Its /metrics is served by the agent's own event loop, and the uptime series on it is
    renewed by the self-monitoring loop and dropped after ``stale_after``: an answer that
    holds it means the loop turns and its tasks run.  Cheap (one TOML read, one local HTTP
    request): the container health check calls it every 30 s.
    """
    # Imported here: an agent without [prometheus] never loads prometheus_client, and a
    # running agent never needs an HTTP client (http.client pulls in the email package).
    import http.client  # noqa: PLC0415

    from trapline.exporters.prometheus import exporter as prometheus  # noqa: PLC0415

    try:
        section = load_toml(config).table("prometheus", required=True)
        host, port = section.host_port("listen", None, prometheus.DEFAULT_LISTEN)
    except ConfigError as exc:
        _config_error(f"{exc} (--liveness asks the agent's [prometheus] endpoint)")
    host = _WILDCARD_TO_LOOPBACK.get(host, host)
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"
    uptime = prometheus.metric_name("trapline.uptime", prometheus.prometheus_unit("s").suffix)
    connection = http.client.HTTPConnection(host, port, timeout=LIVENESS_TIMEOUT)
    try:
        connection.request("GET", "/metrics")
        reply = connection.getresponse()
        body = reply.read().decode("utf-8", errors="replace")
    except (OSError, http.client.HTTPException) as exc:
        print(f"not alive: {url}: {type(exc).__name__}: {exc}")
        return 1
    finally:
        connection.close()
    if reply.status != 200:
        print(f"not alive: {url} answered {reply.status} {reply.reason}")
        return 1
    found = [line for line in body.splitlines() if line.startswith(uptime + "{")]
    if not found:
        print(f"not alive: {url} answered without {uptime} (the self-monitoring loop is not reporting)")
        return 1
    print(f"alive: {url} answered; {found[0]}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    if args.liveness:
        return check_liveness(args.config)
    settings = _load(args.config)
    _resolve_hosts(settings)
    configure_logging("warning")
    rows = asyncio.run(_check_all(settings))
    width = max(len(r[0]) for r in rows)
    print(f"{'component':<{width}}  status  detail")
    for name, status, detail in rows:
        print(f"{name:<{width}}  {status:<6}  {detail}")
    return 0 if all(r[1] == "ok" for r in rows) else 1


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trapline", description=__doc__)
    parser.add_argument("--version", action="version", version=f"trapline {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the agent")
    run.add_argument("-c", "--config", type=Path, required=True, help="TOML config file")
    run.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check", help="validate the config and test every endpoint")
    check.add_argument("-c", "--config", type=Path, required=True, help="TOML config file")
    check.add_argument("--liveness", action="store_true",
                       help="only ask the agent running this config, through its [prometheus] "
                            "endpoint, whether it is alive (a container health check)")
    check.set_defaults(func=cmd_check)

    # Subcommands with heavy imports (pyzabbix, requests, yaml) load only when chosen,
    # so `trapline run` stays small.
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in _LAZY_SUBCOMMANDS.items():
        if chosen != name:
            sub.add_parser(name, help=help_text)
            continue
        missing = missing_modules(_ADMIN_LIBRARIES)
        if missing:
            # Before the import, whose ModuleNotFoundError would end in a traceback.
            raise SystemExit(f"trapline {name}: {extra_hint('admin', missing)}")
        importlib.import_module(module).add_parser(sub)
    return parser


_LAZY_SUBCOMMANDS = {
    "templates": ("trapline.templates", "list, check, import or export the Zabbix templates"),
    "provision": ("trapline.provision", "create or update vehicle hosts and the Fleet map dashboard"),
    "config": ("trapline.app.examples", "example configurations: trapline config example ROLE"),
}
# What trapline[admin] (pyproject.toml) installs for these subcommands.
_ADMIN_LIBRARIES = ("pyzabbix", "requests", "yaml")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except ConfigError as exc:
        print(f"trapline: config error: {redact.mask(str(exc))}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        # The machine refused something the config asked for (a port in use, a
        # directory not writable): one line, like a config error, not a traceback.
        print(f"trapline: {redact.mask(str(exc))}", file=sys.stderr)
        return 1
    except Exception:
        # A bug: the traceback goes through logging, whose handlers mask the secrets;
        # Python's own hook would print it as is.
        redact.install()
        logging.getLogger("trapline").critical("stopped by an unexpected error", exc_info=True)
        return 1
    logging.shutdown()
    return code


if __name__ == "__main__":
    raise SystemExit(main())
