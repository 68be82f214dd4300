"""A throwaway Zabbix (server, frontend API, PostgreSQL) on loopback, for tests and ``trapline demo``.

Version "6.0" runs the Debian bookworm packages installed on this machine; version "7.0"
runs the same Debian packages from trixie inside a ``debootstrap`` chroot kept under
:data:`CACHE_DIR`.  Every process is started through ``unshare --mount`` so that the
bind mounts it needs exist only for it and vanish with it:

* the stack's work directory appears at :data:`INNER_STACK_DIR` (and PostgreSQL's own
  directory at :data:`INNER_POSTGRES_DIR`), a path the ``postgres`` user can reach
  even when the work directory sits under a root-only temporary directory;
* the stack's frontend configuration directory covers ``/etc/zabbix``, the only place
  the Debian frontend reads ``zabbix.conf.php`` from.  The host's ``/etc/zabbix`` is
  never written, so several stacks (6.0 and 7.0, or two of the same) run side by side.

Larger topologies for tests: ``ha_node_name`` makes the first server an HA node and
:meth:`LocalZabbix.add_ha_node` adds standby nodes on the same database; on 7.0,
:meth:`LocalZabbix.add_proxy` starts active SQLite proxies (the proxy package is
unpacked into the chroot, see :func:`ensure_proxy`).

A ``pg_dump -Fc`` of the freshly loaded schema is cached per package version, so only
the first start pays the ~25 s schema load; later starts are API-ready in seconds.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import gzip
import json
import logging
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final

from pyzabbix.api import ZabbixAPI

log = logging.getLogger(__name__)

CACHE_DIR: Final = Path("/var/cache/trapline")
CHROOT_DIR: Final = CACHE_DIR / "trixie-zabbix70"
SUPPORTED_VERSIONS: Final = ("6.0", "7.0")
INNER_STACK_DIR: Final = "/run/trapline/stack"
INNER_POSTGRES_DIR: Final = "/run/trapline/postgres"

# What the chroot needs; php8.4-cgi satisfies the frontend's web-server dependency without apache.
CHROOT_SUITE: Final = "trixie"
CHROOT_PACKAGES: Final = (
    "postgresql",
    "zabbix-server-pgsql",
    "zabbix-frontend-php",
    "php-pgsql",
    "php-cli",
    "php8.4-cgi",
)
# Python 3.13 (trixie's) and the base install's libraries as Debian packages: the agent's
# TLS-PSK uplink needs 3.13, and apt reaches these where pip would need the host's CAs.
CHROOT_PYTHON_PACKAGES: Final = (
    "python3",
    "python3-orjson",
    "python3-msgspec",
    "python3-lz4",
    "python3-prometheus-client",
)
CHROOT_PYTHON: Final = "/usr/bin/python3"
CHROOT_PYTHON_MARKER: Final = ".trapline-python"
# Written last by ensure_chroot(): a chroot without it is an interrupted build.
CHROOT_READY_MARKER: Final = ".trapline-ready"
# zabbix-proxy-sqlite3 conflicts with the server package, so it is unpacked (not installed) here.
PROXY_PACKAGE: Final = "zabbix-proxy-sqlite3"
PROXY_DIR: Final = "/opt/trapline-zabbix-proxy"
PROXY_BINARY: Final = f"{PROXY_DIR}/usr/sbin/zabbix_proxy"

# What a stack creates in its work directory besides its *.log and *.out files.
STACK_SUBDIRS: Final = ("postgres", "frontend", "run")
SCHEMA_FILES: Final = ("schema.sql.gz", "images.sql.gz", "data.sql.gz")
DEFAULT_SERVER_HOSTID: Final = 10084
ADMIN_USER: Final = "Admin"
ADMIN_PASSWORD: Final = "zabbix"
DEFAULT_CACHE_UPDATE_FREQUENCY: Final = 60

# Small process counts: the stack serves tests, and the machine has two cores.
SERVER_SETTINGS: Final[Mapping[str, str]] = {
    "StartPollers": "1",
    "StartPollersUnreachable": "1",
    "StartTrappers": "5",
    "StartPingers": "0",
    "StartDiscoverers": "0",
    "StartHTTPPollers": "0",
    "StartTimers": "1",
    "StartEscalators": "1",
    "StartAlerters": "1",
    "StartDBSyncers": "1",
    "StartPreprocessors": "1",
    "StartLLDProcessors": "1",
    "StartProxyPollers": "0",
}

# A 7.0 proxy of a test stack: active, SQLite, asking the server for its configuration and
# sending its data every second so that tests see changes quickly.
PROXY_SETTINGS: Final[Mapping[str, str]] = {
    "ProxyMode": "0",
    "ProxyConfigFrequency": "1",
    "DataSenderFrequency": "1",
    "StartPollers": "1",
    "StartPollersUnreachable": "1",
    "StartTrappers": "3",
    "StartPingers": "0",
    "StartDiscoverers": "0",
    "StartHTTPPollers": "0",
    "StartPreprocessors": "1",
    "StartDBSyncers": "1",
}
# What a daemon's log says once it serves: the trapper of an active node or a proxy, or
# the HA manager of a node that came up as standby (standby nodes do not listen).
TRAPPER_STARTED: Final = b"[trapper #1]"
STANDBY_STARTED: Final = b'node started in "standby" mode'
PRIMARY: Final = "zabbix_server"  # child and file name of the stack's first server

PORT_RANGE: Final = (20000, 32767)
STEP_TIMEOUT: Final = 60.0
STOP_TIMEOUT: Final = 15.0
LOG_TAIL_LINES: Final = 25
BASE_ENV: Final[Mapping[str, str]] = {
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
}


class LocalZabbixError(RuntimeError):
    """A step of starting or driving the local stack failed; the message says which and why."""


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc.strerror})"
    return "\n".join(text.splitlines()[-lines:])


def _fail(step: str, reason: str, *logfiles: Path) -> LocalZabbixError:
    """An error naming the step, with the tail of each given log that has something in it."""
    message = f"{step}: {reason}"
    for logfile in logfiles:
        with contextlib.suppress(OSError):
            if logfile.stat().st_size:
                message += f"\n--- last lines of {logfile} ---\n{log_tail(logfile)}"
    return LocalZabbixError(message)


def _free_port() -> int:
    """A free loopback port below Linux's ephemeral range (Zabbix refuses ListenPort above 32767)."""
    for _ in range(100):
        port = random.randint(*PORT_RANGE)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise LocalZabbixError(f"choose ports: no free port found in {PORT_RANGE}")


def _wait_for(check: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


@contextlib.contextmanager
def _exclusive(name: str) -> Iterator[None]:
    """Serialize cache builds between processes (parallel test runs, a demo next to tests)."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with (CACHE_DIR / f"{name}.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def namespace_command(
    root: Path, binds: Sequence[tuple[Path, str]], argv: Sequence[str], *, as_postgres: bool = False
) -> list[str]:
    """Wrap ``argv`` to run under ``root`` in a private mount namespace with ``binds`` mounted.

    ``binds`` pairs a host directory with the path where the command sees it.  For a
    chroot, ``/proc`` and ``/dev`` are mounted too; all mounts disappear with the command.
    """
    steps: list[str] = []
    if root != Path("/"):
        steps += [
            f"mount -t proc proc {shlex.quote(str(root / 'proc'))}",
            f"mount --rbind /dev {shlex.quote(str(root / 'dev'))}",
        ]
    for source, target in binds:
        steps.append(f"mount --bind {shlex.quote(str(source))} {shlex.quote(str(root) + target)}")
    if root != Path("/"):
        runner = ["chroot", *(["--userspec=postgres:postgres"] if as_postgres else []), str(root)]
    else:
        runner = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"] if as_postgres else []
    script = " && ".join([*steps, 'exec "$@"'])
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh", *runner, *argv]


def configured_debian_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """The Debian archive URI apt on this machine uses for its release (not -security/-updates)."""
    release = _os_release_codename()
    for uri, suites in _apt_sources(apt_dir):
        if release in suites and "debian-security" not in uri:
            return uri
    raise LocalZabbixError(f"find Debian mirror: no apt source under {apt_dir} serves suite {release!r}")


def _os_release_codename() -> str:
    for line in Path("/etc/os-release").read_text().splitlines():
        key, _, value = line.partition("=")
        if key == "VERSION_CODENAME":
            return value.strip().strip('"')
    raise LocalZabbixError("find Debian mirror: /etc/os-release has no VERSION_CODENAME")


def _apt_sources(apt_dir: Path) -> Iterator[tuple[str, set[str]]]:
    """(URI, suites) of every ``deb`` source, from one-line lists and deb822 ``.sources`` files."""
    one_line = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]
    for path in one_line:
        if not path.is_file():
            continue
        for raw in path.read_text().splitlines():
            words = re.sub(r"\[[^]]*\]", "", raw.split("#", 1)[0]).split()
            if len(words) >= 3 and words[0] == "deb":
                yield words[1].rstrip("/"), {words[2]}
    for path in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text()):
            fields: dict[str, str] = {}
            for raw in stanza.splitlines():
                if raw.startswith("#") or ":" not in raw:
                    continue
                key, _, value = raw.partition(":")
                fields[key.strip().lower()] = value.strip()
            if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes") != "no":
                for uri in fields.get("uris", "").split():
                    yield uri.rstrip("/"), set(fields.get("suites", "").split())


def ensure_chroot(path: Path = CHROOT_DIR) -> Path:
    """Make sure the Debian trixie chroot with Zabbix 7.0 exists; idempotent.

    The first build takes about 1.5 minutes and needs the Debian mirror apt uses here.
    It happens in a sibling directory that is renamed into place only when complete.
    """
    if (path / CHROOT_READY_MARKER).exists():
        return path
    with _exclusive("chroot"):
        if (path / CHROOT_READY_MARKER).exists():
            return path
        building = path.with_name(path.name + ".partial")
        if building.exists():
            shutil.rmtree(building)
        shutil.rmtree(path, ignore_errors=True)
        building.parent.mkdir(parents=True, exist_ok=True)
        buildlog = building.with_name(path.name + ".build.log")
        with buildlog.open("wb") as out:
            mirror = configured_debian_mirror()
            _run_logged(
                "debootstrap the 7.0 chroot",
                ["debootstrap", "--variant=minbase", CHROOT_SUITE, str(building), mirror],
                out,
                buildlog,
            )
            # Keep package scripts from starting services inside the chroot.
            policy = building / "usr/sbin/policy-rc.d"
            policy.write_text("#!/bin/sh\nexit 101\n")
            policy.chmod(0o755)
            install = (
                "apt-get update -q && apt-get install -y -q --no-install-recommends "
                + " ".join((*CHROOT_PACKAGES, *CHROOT_PYTHON_PACKAGES))
                + " && apt-get clean"
            )
            env = {**BASE_ENV, "DEBIAN_FRONTEND": "noninteractive"}
            _run_logged(
                "install Zabbix 7.0 in the chroot",
                namespace_command(building, [], ["sh", "-c", install]),
                out,
                buildlog,
                env,
            )
        # postgresql's package creates a cluster we never use; it only costs disk.
        shutil.rmtree(building / "var/lib/postgresql", ignore_errors=True)
        (building / "var/lib/postgresql").mkdir()
        (building / CHROOT_PYTHON_MARKER).write_text("")
        (building / CHROOT_READY_MARKER).write_text("")
        building.rename(path)
    return path


def ensure_chroot_python(chroot: Path = CHROOT_DIR) -> str:
    """Make sure the chroot has Python 3.13 with the agent's base libraries; its path there.

    Chroots built before these packages joined the list get them here, once (about
    20 s and 40 MB); a chroot that has them costs one stat per call.
    """
    marker = chroot / CHROOT_PYTHON_MARKER
    if marker.exists():
        return CHROOT_PYTHON
    with _exclusive("chroot"):
        if not marker.exists():
            install = (
                "apt-get update -q && apt-get install -y -q --no-install-recommends "
                + " ".join(CHROOT_PYTHON_PACKAGES)
                + " && apt-get clean"
            )
            _run_in_chroot(chroot, "install Python 3.13 in the chroot", "python", install)
            marker.write_text("")
    return CHROOT_PYTHON


def ensure_proxy(chroot: Path = CHROOT_DIR) -> str:
    """Make sure ``zabbix_proxy`` 7.0 (SQLite) is unpacked in the chroot; its path there.

    ``apt-get download`` plus ``dpkg-deb -x``: the proxy package cannot be installed next
    to the server package, but its binary runs from any directory.
    """
    if (chroot / PROXY_BINARY.lstrip("/")).exists():
        return PROXY_BINARY
    with _exclusive("proxy"):
        if not (chroot / PROXY_BINARY.lstrip("/")).exists():
            unpack = (
                f"set -e; cd /tmp; rm -f ./*.deb; apt-get download -q {PROXY_PACKAGE}"
                f" && dpkg-deb -x ./{PROXY_PACKAGE}_*.deb {PROXY_DIR} && rm -f ./*.deb"
            )
            _run_in_chroot(chroot, "unpack zabbix_proxy 7.0 in the chroot", "proxy", unpack)
    return PROXY_BINARY


def _run_in_chroot(chroot: Path, step: str, log_name: str, script: str) -> None:
    """One shell step inside the chroot, logged to ``<chroot>.<log_name>.log`` beside it."""
    buildlog = chroot.with_name(f"{chroot.name}.{log_name}.log")
    with buildlog.open("wb") as out:
        _run_logged(
            step,
            namespace_command(chroot, [], ["sh", "-c", script]),
            out,
            buildlog,
            {**BASE_ENV, "DEBIAN_FRONTEND": "noninteractive"},
        )


def _run_logged(
    step: str, argv: Sequence[str], out: IO[bytes], logfile: Path, env: Mapping[str, str] | None = None
) -> None:
    out.write(f"$ {shlex.join(argv)}\n".encode())
    out.flush()
    try:
        result = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, env=env, check=False)
    except FileNotFoundError:
        raise _fail(step, f"{argv[0]} is not installed") from None
    out.flush()
    if result.returncode != 0:
        raise _fail(step, f"exit status {result.returncode}", logfile)


@dataclass(frozen=True)
class _System:
    """Where one Zabbix version's programs live: the host itself or the trixie chroot."""

    version: str
    root: Path

    def host_path(self, inner: str) -> Path:
        return self.root / inner.lstrip("/")

    def package_version(self) -> str:
        result = subprocess.run(
            [
                "dpkg-query",
                f"--admindir={self.host_path('/var/lib/dpkg')}",
                "-W",
                "-f=${Version}",
                "zabbix-server-pgsql",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0 or not result.stdout:
            raise _fail("find the Zabbix package", f"zabbix-server-pgsql is not installed under {self.root}")
        return result.stdout

    def postgres_bin(self) -> str:
        """Inner path of the newest PostgreSQL's bin directory."""
        found = sorted(
            self.host_path("/usr/lib/postgresql").glob("*/bin/postgres"),
            key=lambda p: int(p.parent.parent.name),
        )
        if not found:
            raise _fail(
                "find PostgreSQL", f"no postgres binary under {self.host_path('/usr/lib/postgresql')}"
            )
        return "/" + str(found[-1].parent.relative_to(self.root))

    def postgres_ids(self) -> tuple[int, int]:
        """uid and gid of the ``postgres`` user as this system's /etc/passwd has them."""
        for line in self.host_path("/etc/passwd").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == "postgres":
                return int(fields[2]), int(fields[3])
        raise _fail("find PostgreSQL", f"no postgres user in {self.host_path('/etc/passwd')}")


class LocalZabbix:
    """A private Zabbix server + frontend API + PostgreSQL for one version, on loopback.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.  Everything it
    writes lives in ``workdir`` (a fresh temporary directory if none is given, removed
    by :meth:`stop`); everything it starts is stopped by :meth:`stop`.
    """

    def __init__(
        self,
        version: str,
        workdir: Path | None = None,
        *,
        cache_update_frequency: int = DEFAULT_CACHE_UPDATE_FREQUENCY,
        server_config: Mapping[str, str] | None = None,
        ha_node_name: str | None = None,
    ) -> None:
        if version not in SUPPORTED_VERSIONS:
            raise ValueError(f"unsupported Zabbix version {version!r}; choose one of {SUPPORTED_VERSIONS}")
        self.version = version
        self._given_workdir = workdir
        self._workdir: Path | None = None
        self.cache_update_frequency = cache_update_frequency
        self._server_config = dict(server_config or {})
        # With a name the first server is node one of a 6.0+ HA cluster; add_ha_node() adds more.
        self.ha_node_name = ha_node_name
        self._ports: dict[str, int] = {}  # daemon (child) name -> its trapper port
        self._system: _System | None = None
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._postgres_port = 0
        self.trapper_port = 0
        self._http_port = 0
        self._on_exit = contextlib.ExitStack()  # what __exit__ undoes besides stop()

    # -- public properties -------------------------------------------------------------

    @property
    def workdir(self) -> Path:
        if self._workdir is None:
            raise LocalZabbixError(f"Zabbix {self.version} stack is not started")
        return self._workdir

    @property
    def frontend_url(self) -> str:
        return f"http://127.0.0.1:{self._http_port}/"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self._http_port}/api_jsonrpc.php"

    @property
    def trapper_host(self) -> str:
        return "127.0.0.1"

    @property
    def trapper_address(self) -> str:
        """``host:port`` of the trapper, as a sender configuration takes it."""
        return f"{self.trapper_host}:{self.trapper_port}"

    @property
    def server_log(self) -> Path:
        return self._log(PRIMARY)

    def _log(self, daemon: str) -> Path:
        return self.workdir / f"{daemon}.log"

    def _conf(self, daemon: str) -> str:
        return f"{INNER_STACK_DIR}/{daemon}.conf"

    @property
    def package_version(self) -> str:
        return self._require_system().package_version()

    def api(self) -> Any:
        """A pyzabbix ``ZabbixAPI`` logged in as Admin."""
        zapi = ZabbixAPI(self.frontend_url, timeout=30)
        zapi.login(ADMIN_USER, ADMIN_PASSWORD)
        return zapi

    # -- lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> LocalZabbix:
        with contextlib.ExitStack() as entered:
            entered.enter_context(sigterm_as_exit())
            self.start()  # a failed start restores SIGTERM on the way out
            self._on_exit = entered.pop_all()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with self._on_exit:  # SIGTERM restored once the stack has stopped
            self.stop()

    def start(self) -> None:
        if self._children:
            raise LocalZabbixError(f"Zabbix {self.version} stack is already started")
        root = ensure_chroot() if self.version == "7.0" else Path("/")
        self._system = _System(self.version, root)
        package = self._system.package_version()
        if not re.match(rf"^(\d+:)?{re.escape(self.version)}\.", package):
            raise _fail(
                "check the Zabbix package", f"{root} has zabbix-server-pgsql {package}, not {self.version}"
            )
        if self._given_workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix=f"trapline-zabbix{self.version}-"))
        else:
            self._workdir = self._given_workdir
            self._workdir.mkdir(parents=True, exist_ok=True)
        try:
            self._prepare_dirs()
            self._start_postgres()
            self._load_database()
            self._start_server()
            self._start_frontend()
        except BaseException:
            self.stop()
            raise
        log.info(
            "Zabbix %s (%s) ready: API %s, trapper %s, work dir %s",
            self.version,
            package,
            self.api_url,
            self.trapper_address,
            self.workdir,
        )

    def stop(self) -> None:
        """Stop everything this stack started (frontend, server, database), newest first."""
        # Proxies and HA nodes go before the first server, the database last.
        daemons = [name for name in self._children if name not in ("php", PRIMARY, "postgres")]
        for name in ("php", *reversed(daemons), PRIMARY, "postgres"):
            child = self._children.pop(name, None)
            if child is not None:
                self._terminate(name, child)
        if self._given_workdir is None and self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def _terminate(self, name: str, child: subprocess.Popen[bytes]) -> None:
        # postgres: SIGINT is its "fast" shutdown; zabbix_server stops its own children on TERM.
        first = signal.SIGINT if name == "postgres" else signal.SIGTERM
        if child.poll() is None:
            child.send_signal(first)
            try:
                child.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %d) ignored %s; killing its process group", name, child.pid, first.name)
        # Every child leads its own session: kill whatever of its group is left (php workers...).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()

    # -- start steps ---------------------------------------------------------------------

    def _require_system(self) -> _System:
        if self._system is None:
            raise LocalZabbixError(f"Zabbix {self.version} stack is not started")
        return self._system

    def _prepare_dirs(self) -> None:
        system = self._require_system()
        for inner in (INNER_STACK_DIR, INNER_POSTGRES_DIR, "/etc/zabbix"):
            system.host_path(inner).mkdir(parents=True, exist_ok=True)
        # A reused work dir starts clean: an old cluster or log would fool the readiness checks.
        for sub in STACK_SUBDIRS:
            shutil.rmtree(self.workdir / sub, ignore_errors=True)
            (self.workdir / sub).mkdir()
        for stale in self.workdir.glob("*.log"):
            stale.unlink()
        for stale in self.workdir.glob("*.out"):
            stale.unlink()
        uid, gid = system.postgres_ids()
        postgres_dir = self.workdir / "postgres"
        os.chown(postgres_dir, uid, gid)
        postgres_dir.chmod(0o700)

    def _command(self, argv: Sequence[str], *, as_postgres: bool = False) -> list[str]:
        binds = [
            (self.workdir, INNER_STACK_DIR),
            (self.workdir / "postgres", INNER_POSTGRES_DIR),
            (self.workdir / "frontend", "/etc/zabbix"),
        ]
        return namespace_command(self._require_system().root, binds, argv, as_postgres=as_postgres)

    def _run(
        self,
        step: str,
        argv: Sequence[str],
        *,
        as_postgres: bool = False,
        stdin: IO[bytes] | None = None,
        stdout: IO[bytes] | None = None,
    ) -> None:
        """Run a short command inside the stack's view; a failure names ``step`` and shows its output."""
        errors = self.workdir / "last-command.log"
        with errors.open("wb") as err:
            result = subprocess.run(
                self._command(argv, as_postgres=as_postgres),
                stdin=stdin,
                stdout=stdout if stdout is not None else err,
                stderr=err,
                env=dict(BASE_ENV),
                check=False,
            )
        if result.returncode != 0:
            raise _fail(step, f"`{shlex.join(argv)}` exited with status {result.returncode}", errors)

    def _spawn(
        self,
        name: str,
        argv: Sequence[str],
        *,
        as_postgres: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """Start a long-running child in its own session; its output goes to ``<name>.out``."""
        output = self.workdir / f"{name}.out"
        with output.open("ab") as out:
            self._children[name] = subprocess.Popen(
                self._command(argv, as_postgres=as_postgres),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**BASE_ENV, **(env or {})},
                start_new_session=True,
            )

    def _await(self, step: str, name: str, ready: Callable[[], bool], *logs: Path) -> None:
        """Wait until ``ready``; on failure show ``logs`` and the child's own output."""
        child = self._children[name]
        logs = (*logs, self.workdir / f"{name}.out")

        def ready_or_dead() -> bool:
            return child.poll() is not None or ready()

        if not _wait_for(ready_or_dead, STEP_TIMEOUT):
            raise _fail(step, f"{name} not ready after {STEP_TIMEOUT:.0f} s", *logs)
        if child.poll() is not None:
            raise _fail(step, f"{name} exited with status {child.returncode}", *logs)

    def _postgres_args(self, *tool_args: str) -> list[str]:
        return [*tool_args, "-h", "127.0.0.1", "-p", str(self._postgres_port), "-U", "postgres"]

    def _start_postgres(self) -> None:
        system = self._require_system()
        pg_bin = system.postgres_bin()
        data = f"{INNER_POSTGRES_DIR}/data"
        self._run(
            "initdb",
            [
                f"{pg_bin}/initdb",
                "-D",
                data,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
                "--no-instructions",
            ],
            as_postgres=True,
        )
        self._postgres_port = _free_port()
        # A throwaway database: durability settings off, TCP on loopback only.
        settings = {
            "port": str(self._postgres_port),
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": "",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
        }
        argv = [f"{pg_bin}/postgres", "-D", data]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        self._spawn("postgres", argv, as_postgres=True)

        def accepting() -> bool:
            probe = subprocess.run(
                self._command(self._postgres_args(f"{pg_bin}/pg_isready", "-q")),
                env=dict(BASE_ENV),
                check=False,
            )
            return probe.returncode == 0

        self._await("start PostgreSQL", "postgres", accepting)

    def _psql(self, step: str, sql: str) -> None:
        pg_bin = self._require_system().postgres_bin()
        self._run(
            step,
            self._postgres_args(f"{pg_bin}/psql", "-v", "ON_ERROR_STOP=1", "-q", "-d", "zabbix", "-c", sql),
        )

    def _load_database(self) -> None:
        system = self._require_system()
        pg_bin = system.postgres_bin()
        self._run("create the zabbix database", self._postgres_args(f"{pg_bin}/createdb", "zabbix"))
        package = re.sub(r"[^\w.+-]", "_", system.package_version())
        dump = CACHE_DIR / f"zabbix{self.version}-{package}-pg{Path(pg_bin).parent.name}.dump"
        with _exclusive(dump.name):
            if dump.exists():
                with dump.open("rb") as source:
                    self._run(
                        "restore the cached schema",
                        self._postgres_args(f"{pg_bin}/pg_restore", "--no-owner", "-d", "zabbix"),
                        stdin=source,
                    )
            else:
                self._load_schema_files(pg_bin)
                partial = dump.with_name(dump.name + ".partial")
                with partial.open("wb") as target:
                    self._run(
                        "dump the schema for the cache",
                        self._postgres_args(f"{pg_bin}/pg_dump", "-Fc", "-d", "zabbix"),
                        stdout=target,
                    )
                partial.rename(dump)
        # A restored database has no planner statistics: without them 7.0 imports take seconds.
        self._psql("analyze the database", "ANALYZE")
        # The default host polls an agent that is not there; keep it out of the logs.
        self._psql(
            "disable the default host", f"UPDATE hosts SET status=1 WHERE hostid={DEFAULT_SERVER_HOSTID}"
        )

    def _load_schema_files(self, pg_bin: str) -> None:
        system = self._require_system()
        step = "load the Zabbix schema"
        errors = self.workdir / "schema-load.log"
        argv = self._postgres_args(f"{pg_bin}/psql", "-v", "ON_ERROR_STOP=1", "-q", "-1", "-d", "zabbix")
        with errors.open("wb") as err:
            loader = subprocess.Popen(
                self._command(argv), stdin=subprocess.PIPE, stdout=err, stderr=err, env=dict(BASE_ENV)
            )
            assert loader.stdin is not None
            with contextlib.suppress(BrokenPipeError), loader.stdin:
                for name in SCHEMA_FILES:
                    with gzip.open(system.host_path(f"/usr/share/zabbix-server-pgsql/{name}")) as sql:
                        shutil.copyfileobj(sql, loader.stdin)
            if loader.wait() != 0:
                raise _fail(step, f"psql exited with status {loader.returncode}", errors)

    def _server_settings(self, daemon: str, port: int, node: str | None) -> dict[str, str]:
        settings = {
            **self._daemon_settings(daemon, port),
            "DBHost": "127.0.0.1",
            "DBPort": str(self._postgres_port),
            "DBName": "zabbix",
            "DBUser": "postgres",
            "CacheUpdateFrequency": str(self.cache_update_frequency),
            **SERVER_SETTINGS,
            **self._server_config,
        }
        if node is not None:
            settings |= {"HANodeName": node, "NodeAddress": f"{self.trapper_host}:{port}"}
        return settings

    def _daemon_settings(self, daemon: str, port: int) -> dict[str, str]:
        """What every server or proxy of the stack needs: its port and its own files."""
        # Each daemon needs its own socket directory: the IPC sockets have fixed names.
        sockets = "run" if daemon == PRIMARY else f"run/{daemon}"
        (self.workdir / sockets).mkdir(exist_ok=True)
        self._ports[daemon] = port
        return {
            "ListenIP": self.trapper_host,
            "ListenPort": str(port),
            "LogType": "file",
            "LogFile": f"{INNER_STACK_DIR}/{daemon}.log",
            "LogFileSize": "0",
            "PidFile": f"{INNER_STACK_DIR}/{sockets}/{daemon}.pid",
            "SocketDir": f"{INNER_STACK_DIR}/{sockets}",
            "AllowRoot": "1",
        }

    def _write_conf(self, daemon: str, settings: Mapping[str, str]) -> None:
        (self.workdir / f"{daemon}.conf").write_text("".join(f"{k}={v}\n" for k, v in settings.items()))

    def _start_server(self) -> None:
        self.trapper_port = _free_port()
        self._write_conf(PRIMARY, self._server_settings(PRIMARY, self.trapper_port, self.ha_node_name))
        self.start_server()

    def start_server(self) -> None:
        """(Re)start only the server, with the port and database it had; wait for its trapper."""
        self._launch("start zabbix_server", PRIMARY, "zabbix_server", (TRAPPER_STARTED,))

    def _launch(self, step: str, daemon: str, program: str, ready: Sequence[bytes]) -> None:
        """Start a server or proxy on its config file; wait until its log shows one of ``ready``."""
        logfile = self._log(daemon)
        offset = logfile.stat().st_size if logfile.exists() else 0
        self._spawn(daemon, [program, "-f", "-c", self._conf(daemon)])

        def started() -> bool:
            try:
                with logfile.open("rb") as log:
                    log.seek(offset)
                    text = log.read()
            except FileNotFoundError:
                return False
            return any(needle in text for needle in ready)

        self._await(step, daemon, started, logfile)

    def stop_server(self) -> None:
        """Stop only the server (SIGTERM: it flushes its history cache first); the API stays up."""
        child = self._children.pop(PRIMARY, None)
        if child is not None:
            self._terminate(PRIMARY, child)

    def server_running(self) -> bool:
        child = self._children.get(PRIMARY)
        return child is not None and child.poll() is None

    # -- HA cluster (6.0+) ---------------------------------------------------------------

    def _node_daemon(self, node: str | None) -> str:
        if node is None:
            return PRIMARY
        if self.ha_node_name is None:
            raise LocalZabbixError("this stack was started without ha_node_name: it has no HA nodes")
        return PRIMARY if node == self.ha_node_name else f"zabbix_server-{node}"

    def add_ha_node(self, node: str) -> str:
        """Start another server on the same database as HA node ``node``; its trapper address.

        It comes up as standby (it does not listen until it becomes active); returns once
        its HA manager says so.
        """
        daemon = self._node_daemon(node)
        if daemon in self._ports:
            raise LocalZabbixError(f"HA node {node!r} exists already")
        self._write_conf(daemon, self._server_settings(daemon, _free_port(), node))
        self.start_node(node)
        return self.node_address(node)

    def node_address(self, node: str) -> str:
        return f"{self.trapper_host}:{self._ports[self._node_daemon(node)]}"

    def node_log(self, node: str) -> Path:
        return self._log(self._node_daemon(node))

    def start_node(self, node: str) -> None:
        """(Re)start HA node ``node``; returns when it is active (trapper up) or standby."""
        ready = (TRAPPER_STARTED, STANDBY_STARTED)
        self._launch(f"start HA node {node}", self._node_daemon(node), "zabbix_server", ready)

    def kill_node(self, node: str) -> None:
        """SIGKILL the whole process group of HA node ``node``: a crash, nothing flushed."""
        self._kill(self._node_daemon(node))

    def runtime_control(self, command: str, node: str | None = None) -> str:
        """``zabbix_server -R command`` on ``node`` (default: the first server); its output."""
        return self._control("zabbix_server", self._node_daemon(node), command)

    def _control(self, program: str, daemon: str, command: str) -> str:
        output = self.workdir / "runtime-control.out"
        with output.open("wb") as out:
            argv = [program, "-c", self._conf(daemon), "-R", command]
            self._run(f"runtime control {command}", argv, stdout=out)
        return output.read_text(errors="replace")

    def _kill(self, daemon: str) -> None:
        child = self._children.pop(daemon, None)
        if child is None or child.poll() is not None:
            raise LocalZabbixError(f"{daemon} is not running")
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()

    # -- 7.0 proxies -----------------------------------------------------------------------

    def add_proxy(
        self, name: str, psk: tuple[str, str] | None = None, settings: Mapping[str, str] | None = None
    ) -> str:
        """Start an active 7.0 ``zabbix_proxy`` (SQLite) named ``name``; its trapper address.

        Register it through the API (``proxy.create`` with this address as
        ``local_address``/``local_port``) before or after: it asks the server for its
        configuration every second.  With ``psk`` (identity, hex key) it talks to the
        server only over TLS with that pre-shared key, as a van's proxy does.  ``settings``
        override the test proxy's (a benchmark sizes processes, caches and buffer mode).
        """
        if self.version != "7.0":
            raise LocalZabbixError("proxies are set up for the 7.0 stack only")
        ensure_proxy(self._require_system().root)
        daemon = f"zabbix_proxy-{name}"
        if daemon in self._ports:
            raise LocalZabbixError(f"proxy {name!r} exists already")
        settings = {
            **self._daemon_settings(daemon, _free_port()),
            "Server": self.trapper_address,
            "Hostname": name,
            "DBName": f"{INNER_STACK_DIR}/{daemon}.db",
            **PROXY_SETTINGS,
            **(settings or {}),
        }
        if psk is not None:
            identity, key = psk
            key_file = self.workdir / f"{daemon}.psk"
            key_file.write_text(key + "\n")
            key_file.chmod(0o600)
            settings |= {"TLSConnect": "psk", "TLSAccept": "unencrypted", "TLSPSKIdentity": identity,
                         "TLSPSKFile": f"{INNER_STACK_DIR}/{daemon}.psk"}
        self._write_conf(daemon, settings)
        self.start_proxy(name)
        return self.proxy_address(name)

    def proxy_address(self, name: str) -> str:
        return f"{self.trapper_host}:{self._ports[f'zabbix_proxy-{name}']}"

    def proxy_pid(self, name: str) -> int:
        """The process that runs proxy ``name`` (its workers are descendants of it)."""
        return self._children[f"zabbix_proxy-{name}"].pid

    def proxy_log(self, name: str) -> Path:
        return self._log(f"zabbix_proxy-{name}")

    def start_proxy(self, name: str) -> None:
        """(Re)start proxy ``name`` on its config and SQLite file; returns once its trapper runs."""
        self._launch(f"start proxy {name}", f"zabbix_proxy-{name}", PROXY_BINARY, (TRAPPER_STARTED,))

    def kill_proxy(self, name: str) -> None:
        """SIGKILL proxy ``name`` and its children."""
        self._kill(f"zabbix_proxy-{name}")

    def proxy_runtime_control(self, name: str, command: str) -> str:
        """``zabbix_proxy -R command`` on proxy ``name``; its output."""
        return self._control(PROXY_BINARY, f"zabbix_proxy-{name}", command)

    def _start_frontend(self) -> None:
        self._http_port = _free_port()
        (self.workdir / "frontend" / "zabbix.conf.php").write_text(self._frontend_config())
        self._spawn(
            "php",
            [
                "php",
                "-S",
                f"127.0.0.1:{self._http_port}",
                "-t",
                "/usr/share/zabbix",
                "-d",
                "memory_limit=512M",
                "-d",
                "max_execution_time=300",
                "-d",
                "post_max_size=64M",
            ],
            env={"PHP_CLI_SERVER_WORKERS": "4"},
        )
        self._await("start the frontend (php -S)", "php", self._api_answers)

    def _frontend_config(self) -> str:
        settings = {
            "$DB['TYPE']": "POSTGRESQL",
            "$DB['SERVER']": "127.0.0.1",
            "$DB['PORT']": str(self._postgres_port),
            "$DB['DATABASE']": "zabbix",
            "$DB['USER']": "postgres",
            "$DB['PASSWORD']": "",
            "$DB['SCHEMA']": "",
            "$ZBX_SERVER": "127.0.0.1",
            "$ZBX_SERVER_PORT": str(self.trapper_port),
            "$ZBX_SERVER_NAME": f"trapline local {self.version}",
        }
        lines = ["<?php", "// Written by devtools.localzabbix for a throwaway stack."]
        lines += [f"{name} = {json.dumps(value)};" for name, value in settings.items()]
        lines += ["$DB['DOUBLE_IEEE754'] = true;", "$IMAGE_FORMAT_DEFAULT = IMAGE_FORMAT_PNG;", ""]
        return "\n".join(lines)

    def _api_answers(self) -> bool:
        body = json.dumps({"jsonrpc": "2.0", "method": "apiinfo.version", "params": {}, "id": 1}).encode()
        request = urllib.request.Request(self.api_url, body, {"Content-Type": "application/json-rpc"})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return "result" in json.load(response)
        except (OSError, ValueError):
            return False

    # -- runtime ---------------------------------------------------------------------------

    def config_cache_reload(self, node: str | None = None) -> None:
        """Make the server (or HA node ``node``) load its configuration now, and wait until it has.

        Call it after the objects you need are visible through the API.  A reload asked
        for while a periodic sync runs is dropped by the server, so that case is retried.
        """
        daemon = self._node_daemon(node)
        logfile = self._log(daemon)
        deadline = time.monotonic() + STEP_TIMEOUT
        while time.monotonic() < deadline:
            syncer = self._config_syncer_pid(daemon)
            before = _process_title(syncer)
            offset = logfile.stat().st_size
            self._control("zabbix_server", daemon, "config_cache_reload")
            answer = self._await_log_after(
                logfile,
                offset,
                (
                    "forced reloading of the configuration cache",
                    "configuration cache reloading is already in progress",
                ),
            )
            if "already in progress" in answer:
                _wait_for(functools.partial(_not_syncing, syncer), STEP_TIMEOUT)
                continue
            if _wait_for(functools.partial(_sync_finished_since, syncer, before), STEP_TIMEOUT, 0.01):
                return
        raise _fail("config_cache_reload", "the configuration syncer did not finish a sync", logfile)

    def _await_log_after(self, logfile: Path, offset: int, needles: Sequence[str]) -> str:
        found = ""

        def logged() -> bool:
            nonlocal found
            with logfile.open("rb") as handle:
                handle.seek(offset)
                tail = handle.read().decode(errors="replace")
            found = next((line for line in tail.splitlines() for n in needles if n in line), "")
            return bool(found)

        if not _wait_for(logged, STEP_TIMEOUT, 0.02):
            raise _fail("config_cache_reload", f"none of {list(needles)} appeared in the log", logfile)
        return found

    def _config_syncer_pid(self, daemon: str) -> int:
        server = self._children.get(daemon)
        if server is None or server.poll() is not None:
            raise _fail("config_cache_reload", f"{daemon} is not running", self._log(daemon))
        for proc in Path("/proc").iterdir():
            if (
                proc.name.isdigit()
                and _parent_pid(proc) == server.pid
                # 7.0 also runs "configuration syncer worker #N" processes, whose titles never
                # report a sync; they can have the lower pid once pids wrap around.
                and "configuration syncer [" in _process_title(int(proc.name))
            ):
                return int(proc.name)
        raise _fail("config_cache_reload", "no configuration syncer process found", self._log(daemon))


def _parent_pid(proc: Path) -> int:
    try:
        stat = (proc / "stat").read_text()
    except OSError:
        return -1
    # The command name in field 2 may contain spaces and parentheses: split after the last ')'.
    return int(stat.rsplit(")", 1)[1].split()[1])


def _process_title(pid: int) -> str:
    """The title a Zabbix process gives itself, e.g. ``configuration syncer [synced ... in 0.01 sec]``."""
    try:
        return (
            (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def _not_syncing(syncer: int) -> bool:
    return "syncing" not in _process_title(syncer)


def _sync_finished_since(syncer: int, before: str) -> bool:
    # While syncing the title reads "[synced configuration in X sec, syncing configuration]"; once
    # done it shows the new duration (to the microsecond) and "idle", so it differs from before.
    now = _process_title(syncer)
    return "synced configuration" in now and "syncing" not in now and now != before


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Inside, SIGTERM raises SystemExit(143), so ``with`` blocks and ``finally`` clauses run.

    By default SIGTERM ends Python at once: a bench or script killed with ``kill``
    would leave its stack's server, PostgreSQL and php running.  Only installed
    where SIGTERM still has its default action, in the main thread; the first
    signal is acted on, repeats are ignored until the cleanup is done.
    """
    if threading.current_thread() is not threading.main_thread() or (
        signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return

    def leave(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, leave)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def main() -> None:
    """``python3 -m devtools.localzabbix``: build the 7.0 chroot, its proxy and the schema caches."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(f"7.0 chroot ready: {ensure_chroot()}")
    print(f"7.0 proxy ready: {ensure_proxy()} in the chroot")
    for version in SUPPORTED_VERSIONS:
        with LocalZabbix(version) as stack:
            print(f"Zabbix {version} ({stack.package_version}) starts; schema cache ready")


if __name__ == "__main__":
    main()
