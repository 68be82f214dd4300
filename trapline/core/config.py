"""One TOML file, validated at start.

Every error names the file, the key and what was expected, so that
``trapline run`` can print one line and exit 2.  Plugins validate their own
section with :class:`Section`, which also rejects keys it was never asked for.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import math
import os
import re
import stat
import tomllib
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

from trapline.core.redact import register as register_secret

T = TypeVar("T")


class ConfigError(Exception):
    """A configuration mistake; ``str()`` is the one line shown to the user.

    Keys and values in the text come from the file, so any character that is not
    printable (a line break, NEL, a control) is shown escaped: the line stays one line.
    """

    def __init__(self, message: str) -> None:
        super().__init__(printable(message))


def printable(text: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


# A bare TOML key, or one with the index of a list entry that our messages append.
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+(?:\[[0-9]+\])?")


def show_key(key: str) -> str:
    """A key as TOML would spell it: bare when it can be, else quoted."""
    return key if _BARE_KEY.fullmatch(key) else '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'


def missing_modules(names: Iterable[str]) -> list[str]:
    """Those of the top-level modules ``names`` that this interpreter cannot import.

    Looked up, not imported: a role's libraries (boto3 takes a second) load when the
    plugin runs, not when the config is read.
    """
    missing = []
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a broken or half-removed install
            found = False
        if not found:
            missing.append(name)
    return missing


def extra_hint(extra: str, missing: Iterable[str]) -> str:
    """The one line that tells a user which optional dependencies to add (pyproject.toml extras)."""
    return f"needs {', '.join(missing)}, not installed here: pip install 'trapline[{extra}]'"


class _Missing:
    pass


MISSING: Final = _Missing()

# No integer in the config means anything beyond a signed 64-bit field (SQLite, struct "q").
INT64_MAX: Final = 2**63 - 1
# A DNS name (RFC 1123 labels; "_" too, which some internal zones use) or an IPv4 address.
_LABEL = r"[0-9A-Za-z_](?:[0-9A-Za-z_-]{0,61}[0-9A-Za-z_])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.?")


def check_host(host: str) -> str:
    """A host name or an IP address; raises ValueError naming what is wrong."""
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is neither a host name nor an IPv6 address") from None
        return host
    if not _HOSTNAME.fullmatch(host):
        raise ValueError(f"{host!r} is not a host name or an IP address")
    return host


def parse_host_port(text: str, default_port: int | None, lowest_port: int = 1) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port``; a bare IPv6 address cannot carry a port.

    Without ``default_port`` the port is required.  A listening address may allow port 0
    (``lowest_port=0``): any free port.
    """
    text = text.strip()
    port_text: str | None = None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"bad bracketed address {text!r}")
        if ":" not in host:
            raise ValueError(f"brackets hold an IPv6 address, got {host!r}")
        port_text = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host = text
    check_host(host)
    if port_text is None:
        if default_port is None:
            raise ValueError(f"expected host:port, got {text!r}")
        return host, default_port
    if not port_text.isascii() or not port_text.isdigit() or not lowest_port <= int(port_text) < 65536:
        raise ValueError(f"bad port in {text!r} (expected {lowest_port}-65535)")
    return host, int(port_text)


class Secret:
    """A secret value that never shows itself in repr, str, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        # Known to the log redactor from the moment it exists: a library may log it
        # (a request header, an echoed body) long before our code reveals it.
        register_secret(value)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Certificate files of a TLS client; none set means the system's CAs and no client certificate."""

    ca_file: Path | None = None
    cert_file: Path | None = None  # may hold the private key too
    key_file: Path | None = None

    @property
    def any(self) -> bool:
        return any((self.ca_file, self.cert_file, self.key_file))


def refuse_shared_file(path: Path, what: str) -> None:
    """Refuse a secret-bearing file (token, password, private key) that others could read."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what} ({exc.strerror})") from None
    if mode & (stat.S_IRGRP | stat.S_IROTH | stat.S_IWOTH):
        raise ConfigError(
            f"{path}: {what} is readable by group or others (mode {stat.S_IMODE(mode):04o}); "
            "chmod 600 it"
        )


# A TLS pre-shared key as Zabbix takes it: 16 to 256 bytes written in hex.
_PSK_HEX: Final = re.compile(r"(?:[0-9a-fA-F]{2}){16,256}")


def read_psk_file(path: Path) -> Secret:
    """A PSK from a file only its owner can read; the message of a bad one never shows the key."""
    key = read_secret_file(path)
    if not _PSK_HEX.fullmatch(key.reveal()):
        raise ConfigError(f"{path}: not a PSK (expected 32 to 512 hex digits, an even number)")
    return key


def read_secret_file(path: Path) -> Secret:
    """Read a secret from a file that only its owner can read.

    Group- or world-readable files are refused: a leaked token is worse than a
    service that does not start.
    """
    refuse_shared_file(path, "secret file")
    try:
        value = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read secret file ({type(exc).__name__})") from None
    if not value:
        raise ConfigError(f"{path}: secret file is empty")
    return Secret(value)


class Section:
    """A validated view of one TOML table.

    Getters take a default; without one the key is required.  ``done()``
    rejects every key that no getter asked for, which catches typos.
    """

    def __init__(
        self, file: Path, name: str, data: dict[str, Any], hosts: list[tuple[str, str]] | None = None
    ) -> None:
        self.file = file
        self.name = name
        self._data = data
        self._seen: set[str] = set()
        # Every host name read through this section or its sub-tables, with where it was
        # read: ``trapline check`` resolves them (``run`` does not, DNS may come up later).
        self.hosts: list[tuple[str, str]] = [] if hosts is None else hosts

    # -- helpers -----------------------------------------------------------
    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.where(key)}: {message}")

    def require_extra(self, key: str, extra: str, modules: Iterable[str]) -> None:
        """Stop the start at ``key`` if a library that the ``extra`` installs is missing."""
        missing = missing_modules(modules)
        if missing:
            raise self.error(key, extra_hint(extra, missing))

    def where(self, key: str) -> str:
        """``file: [section].key``, as every message names a place in the config."""
        shown = show_key(key) if key else ""
        if not self.name:
            place = shown or "top level"
        else:
            place = f"[{self.name}].{shown}" if key else f"[{self.name}]"
        return f"{self.file}: {place}"

    def names(self) -> list[str]:
        return list(self._data)

    def has(self, key: str) -> bool:
        return key in self._data

    def _get(self, key: str, types: tuple[type, ...], expected: str, default: object) -> Any:
        self._seen.add(key)
        if key not in self._data:
            if isinstance(default, _Missing):
                raise self.error(key, f"missing, expected {expected}")
            return default
        value = self._data[key]
        # bool is an int in Python; a TOML true is never a valid number here.
        if isinstance(value, bool) and bool not in types:
            raise self.error(key, f"expected {expected}, got {value!r}")
        if not isinstance(value, types):
            raise self.error(key, f"expected {expected}, got {type(value).__name__} {value!r}")
        return value

    # -- typed getters -----------------------------------------------------
    def text(self, key: str, default: str | _Missing = MISSING) -> str:
        value: str = self._get(key, (str,), "a string", default)
        return value

    def integer(
        self,
        key: str,
        default: int | _Missing = MISSING,
        minimum: int | None = None,
        maximum: int = INT64_MAX,
    ) -> int:
        """An integer within [minimum, maximum]; unbounded means a signed 64-bit field."""
        value: int = self._get(key, (int,), "an integer", default)
        low = -INT64_MAX - 1 if minimum is None else minimum
        if not low <= value <= maximum:
            got = value if abs(value) < 10**30 else f"an integer of {len(str(abs(value)))} digits"
            bound = f">= {low}" if value < low else f"<= {maximum}"
            raise self.error(key, f"expected an integer {bound}, got {got}")
        return value

    def port(self, key: str, default: int | _Missing = MISSING) -> int:
        return self.integer(key, default, minimum=1, maximum=65535)

    def number(
        self,
        key: str,
        default: float | _Missing = MISSING,
        minimum: float | None = None,
        maximum: float | None = None,
    ) -> float:
        """A finite number: nan and inf would silently disable every comparison made with them."""
        raw = self._get(key, (int, float), "a number", default)
        try:
            value = float(raw)
        except OverflowError:  # an integer beyond any float
            got = f"an integer of {len(str(raw))} digits"
            raise self.error(key, f"expected a finite number, got {got}") from None
        if not math.isfinite(value):
            raise self.error(key, f"expected a finite number, got {value}")
        if minimum is not None and value < minimum:
            raise self.error(key, f"expected a number >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise self.error(key, f"expected a number <= {maximum}, got {value}")
        return value

    def boolean(self, key: str, default: bool | _Missing = MISSING) -> bool:
        value: bool = self._get(key, (bool,), "true or false", default)
        return value

    def strings(self, key: str, default: list[str] | _Missing = MISSING) -> list[str]:
        value = self._get(key, (list,), "a list of strings", default)
        if not all(isinstance(v, str) for v in value):
            raise self.error(key, f"expected a list of strings, got {value!r}")
        return list(value)

    def choice(self, key: str, choices: tuple[str, ...], default: str | _Missing = MISSING) -> str:
        value = self.text(key, default)
        if value not in choices:
            raise self.error(key, f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    def url(self, key: str, schemes: tuple[str, ...], default: str | _Missing = MISSING) -> str:
        """A URL with one of ``schemes``, a valid host and, if given, a port in 1-65535."""
        value = self.text(key, default)
        try:
            parts = urllib.parse.urlsplit(value)
            port = parts.port  # raises on a port out of range or not a number
            if parts.scheme not in schemes:
                raise ValueError(f"expected a {' or '.join(s + '://' for s in schemes)} URL")
            check_host(parts.hostname or "")
            if port == 0:
                raise ValueError("port 0")
        except ValueError as exc:
            raise self.error(key, f"{exc} (got {value!r})") from None
        self.hosts.append((self.where(key), parts.hostname or ""))
        return value

    def host_port(
        self, key: str, default_port: int | None, default: str | _Missing = MISSING, lowest_port: int = 1
    ) -> tuple[str, int]:
        """``host[:port]`` parsed strictly (see :func:`parse_host_port`)."""
        value = self.text(key, default)
        try:
            host, port = parse_host_port(value, default_port, lowest_port)
        except ValueError as exc:
            raise self.error(key, str(exc)) from None
        self.hosts.append((self.where(key), host))
        return host, port

    def host(self, key: str, default: str | _Missing = MISSING) -> str:
        value = self.text(key, default)
        try:
            check_host(value)
        except ValueError as exc:
            raise self.error(key, str(exc)) from None
        self.hosts.append((self.where(key), value))
        return value

    def path(self, key: str, default: Path | _Missing = MISSING) -> Path:
        """A file path; relative paths are relative to the config file."""
        if isinstance(default, Path):
            raw = self.text(key, str(default))
        else:
            raw = self.text(key)
        if not raw or "\0" in raw:
            raise self.error(key, "expected a file path (not empty, no NUL character)")
        p = Path(os.path.expanduser(raw))
        return p if p.is_absolute() else self.file.parent / p

    def tls_files(self) -> TlsFiles:
        """``tls_ca_file``, ``tls_cert_file`` and ``tls_key_file``: present files, a private key."""
        ca, cert, key = (
            self.path(name) if self.has(name) else None
            for name in ("tls_ca_file", "tls_cert_file", "tls_key_file")
        )
        if key is not None and cert is None:
            raise self.error("tls_key_file", "given without tls_cert_file")
        for name, path in (("tls_ca_file", ca), ("tls_cert_file", cert), ("tls_key_file", key)):
            if path is not None and not path.is_file():
                raise self.error(name, f"no such file {path}")
        if key is not None:
            refuse_shared_file(key, "private key file")
        return TlsFiles(ca, cert, key)

    def secret(self, key: str, required: bool = True) -> Secret | None:
        """A secret from ``<key>_file`` (0600 file) or ``<key>_env`` (variable name)."""
        file_key, env_key = f"{key}_file", f"{key}_env"
        if self.has(file_key):
            try:
                return read_secret_file(self.path(file_key))
            except ConfigError as exc:
                # read_secret_file names the file; the user also needs the key that chose it.
                raise self.error(file_key, str(exc)) from None
        if self.has(env_key):
            var = self.text(env_key)
            value = os.environ.get(var, "")
            if not value:
                raise self.error(env_key, f"environment variable {var} is not set or empty")
            return Secret(value)
        if required:
            raise self.error(file_key, f"missing, expected {file_key} (a 0600 file) or {env_key}")
        return None

    def table(self, key: str, required: bool = False) -> Section:
        default: dict[str, Any] | _Missing = MISSING if required else {}
        value = self._get(key, (dict,), "a table", default)
        name = f"{self.name}.{show_key(key)}" if self.name else show_key(key)
        return Section(self.file, name, value, self.hosts)

    def tables(self, key: str) -> list[Section]:
        """An array of tables (``[[name.key]]``)."""
        value = self._get(key, (list,), "an array of tables", [])
        out = []
        for i, entry in enumerate(value):
            if not isinstance(entry, dict):
                raise self.error(f"{key}[{i}]", f"expected a table, got {entry!r}")
            prefix = f"{self.name}.{show_key(key)}" if self.name else show_key(key)
            out.append(Section(self.file, f"{prefix}[{i}]", entry, self.hosts))
        return out

    def subsections(self) -> Iterator[tuple[str, Section]]:
        """Every key of this table, each of which must itself be a table."""
        for key in list(self._data):
            yield key, self.table(key, required=True)

    def done(self) -> None:
        unknown = sorted(set(self._data) - self._seen)
        if unknown:
            raise self.error(unknown[0], "unknown key (misspelt?)")


def load_toml(path: Path) -> Section:
    """Parse a TOML file into the root :class:`Section`; any bytes give a ConfigError, never a crash."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or type(exc).__name__})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 (byte {exc.start})") from None
    if not text.strip():
        # An empty file would run an agent with no collector and no destination.
        raise ConfigError(f"{path}: the file is empty")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid TOML (nested too deeply)") from None
    except ValueError as exc:  # Python's limit on the digits of an integer literal
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    return Section(path, "", data)
