"""Finding out *why* Zabbix refused values, through its API.

The trapper only counts refused values.  When an API URL is configured, the
destination asks the API about each refused (host, key) and logs the reason:
missing host or item, disabled, not a trapper item, host monitored by a
proxy, unsupported item, trapper_hosts restriction, or "exists but not yet in
the configuration cache".  Answers are cached so that a steady stream of
refused values costs one API round trip per key and TTL, not one per batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from trapline.core.config import Secret

log = logging.getLogger(__name__)

Ident = tuple[str, str]  # (technical host name, item key)

ITEM_TYPE_TRAPPER = "2"
_NUMERIC_TYPES = {"0": float, "3": int}  # value_type float, unsigned
_ITEM_TYPES = {
    "0": "Zabbix agent",
    "3": "simple check",
    "5": "Zabbix internal",
    "7": "Zabbix agent (active)",
    "10": "external check",
    "11": "database monitor",
    "12": "IPMI",
    "13": "SSH",
    "14": "TELNET",
    "15": "calculated",
    "16": "JMX",
    "17": "SNMP trap",
    "18": "dependent",
    "19": "HTTP agent",
    "20": "SNMP agent",
    "21": "script",
}
NOT_YET_SYNCED = (
    "item exists, is enabled and is a trapper item: probably created less than CacheUpdateFrequency "
    "(60 s by default) ago and not yet in the server's configuration cache"
)


class Diagnoser(Protocol):
    def cached(self, ident: Ident) -> str | None:
        """The last known reason for this key, if still fresh."""
        ...

    async def explain(self, samples: Mapping[Ident, object]) -> None:
        """Find and log why these keys (with one sample value each) were refused."""
        ...

    async def check(self) -> str:
        """Test the connection behind the diagnoses; raise with a clear message."""
        ...


def reason_for(
    ident: Ident, host: Mapping[str, Any] | None, item: Mapping[str, Any] | None, sample: object
) -> str:
    """The diagnosis for one key from the API's host and item records (6.0 and 7.0 field names)."""
    name, key = ident
    if host is None:
        return f"host {name!r} does not exist (the technical host name must match)"
    if str(host.get("status", "0")) == "1":
        return f"host {name!r} is disabled"
    # 6.0: proxy_hostid; 7.0: monitored_by (1 proxy, 2 proxy group) and proxyid.
    proxy = str(host.get("proxy_hostid") or host.get("proxyid") or "0")
    if str(host.get("monitored_by", "0")) != "0" or proxy != "0":
        return f"host {name!r} is monitored by a proxy (id {proxy}): send its values to that proxy"
    if item is None:
        return f"item {key!r} does not exist on host {name!r} (if LLD creates it, not yet)"
    if str(item.get("status", "0")) == "1":
        return f"item {key!r} is disabled"
    item_type = str(item.get("type", ""))
    if item_type != ITEM_TYPE_TRAPPER:
        return f"item {key!r} is not a trapper item (type {_ITEM_TYPES.get(item_type, item_type)})"
    if str(item.get("state", "0")) == "1":
        return f"item {key!r} is unsupported: {item.get('error') or 'no error text'}"
    convert = _NUMERIC_TYPES.get(str(item.get("value_type", "")))
    if convert is not None and not _fits(convert, sample):
        return f"item {key!r}: value {str(sample)[:50]!r} does not fit its numeric value type"
    allowed = str(item.get("trapper_hosts") or "")
    if allowed:
        return f"item {key!r} accepts values only from trapper_hosts={allowed!r}: check the sender's address"
    return NOT_YET_SYNCED


def _fits(convert: Callable[[str], object], sample: object) -> bool:
    try:
        convert(str(sample))
    except ValueError:
        return False
    return True


class ApiDiagnoser:
    """Diagnoses through the Zabbix API with pyzabbix.

    pyzabbix is blocking (requests), so every call runs in a worker thread.
    """

    def __init__(
        self,
        url: str,
        *,
        token: Secret | None = None,
        user: str | None = None,
        password: Secret | None = None,
        ttl: float = 300.0,
        timeout: float = 10.0,
    ) -> None:
        if token is None and (user is None or password is None):
            raise ValueError("the API needs a token or a user and password")
        self.url = url
        self._token = token
        self._user = user
        self._password = password
        self.ttl = ttl
        self.timeout = timeout
        self._api: Any = None
        self._cache: dict[Ident, tuple[str, float]] = {}  # ident -> (reason, expiry)
        self._quiet_until = 0.0  # after an API failure, leave the API alone for a while
        self._lock = asyncio.Lock()  # one API conversation at a time

    def cached(self, ident: Ident) -> str | None:
        hit = self._cache.get(ident)
        if hit is None or hit[1] < time.monotonic():
            return None
        return hit[0]

    async def explain(self, samples: Mapping[Ident, object]) -> None:
        async with self._lock:
            todo = {ident: v for ident, v in samples.items() if self.cached(ident) is None}
            if not todo or time.monotonic() < self._quiet_until:
                return
            try:
                reasons = await asyncio.to_thread(self._diagnose, todo)
            except Exception as exc:  # requests, pyzabbix and API errors alike
                self._api = None
                self._quiet_until = time.monotonic() + self.ttl / 5
                log.warning("zabbix API %s: cannot diagnose refused values (%s)", self.url, _safe(exc))
                return
        now = time.monotonic()
        for ident, reason in reasons.items():
            # "not yet synced" fixes itself within a minute: ask again sooner.
            ttl = min(self.ttl, 60.0) if reason == NOT_YET_SYNCED else self.ttl
            self._cache[ident] = (reason, now + ttl)
        _log_reasons(reasons)

    async def check(self) -> str:
        """Log in, make a call that needs it, and read the API version, for ``trapline check``."""

        def version() -> str:
            api = self._connect()
            # pyzabbix takes a token without asking the server, and apiinfo.version is
            # anonymous: only a call that needs authentication shows a refused token.
            api.host.get(output=["hostid"], limit=1)
            return str(api.api_version())

        try:
            return f"API {self.url} version {await asyncio.to_thread(version)}"
        except Exception as exc:
            raise RuntimeError(f"API {self.url}: {_safe(exc)}") from None

    # -- runs in a worker thread ------------------------------------------------
    def _connect(self) -> Any:
        # pyzabbix logs whole request payloads (password, token) at DEBUG: never let it.
        if logging.getLogger("pyzabbix.api").getEffectiveLevel() < logging.INFO:
            logging.getLogger("pyzabbix.api").setLevel(logging.INFO)
        # Imported here: pyzabbix pulls in requests (~8 MB), needed only once a value is refused.
        from pyzabbix.api import ZabbixAPI  # noqa: PLC0415

        api = ZabbixAPI(self.url, timeout=self.timeout)
        if self._token is not None:
            api.login(api_token=self._token.reveal())
        else:
            assert self._user is not None and self._password is not None
            api.login(self._user, self._password.reveal())
        return api

    def _diagnose(self, samples: Mapping[Ident, object]) -> dict[Ident, str]:
        if self._api is None:
            self._api = self._connect()
        api = self._api
        names = sorted({host for host, _ in samples})
        hosts = {h["host"]: h for h in api.host.get(filter={"host": names}, output="extend")}
        items: dict[Ident, dict[str, Any]] = {}
        if hosts:
            by_id = {h["hostid"]: name for name, h in hosts.items()}
            found = api.item.get(
                hostids=list(by_id),
                filter={"key_": sorted({key for _, key in samples})},
                output=["hostid", "key_", "type", "status", "state", "error", "value_type", "trapper_hosts"],
            )
            for item in found:
                items[(by_id[item["hostid"]], item["key_"])] = item
        return {
            ident: reason_for(ident, hosts.get(ident[0]), items.get(ident), sample)
            for ident, sample in samples.items()
        }


def _log_reasons(reasons: Mapping[Ident, str]) -> None:
    grouped: dict[tuple[str, str], list[str]] = {}
    for (host, key), reason in reasons.items():
        grouped.setdefault((host, reason), []).append(key)
    for (host, reason), keys in sorted(grouped.items()):
        log.warning("zabbix refused values of host %s, keys %s: %s", host, listing(keys), reason)


def listing(keys: Iterable[str]) -> str:
    ordered = sorted(keys)
    shown = ", ".join(ordered[:10])
    return shown if len(ordered) <= 10 else f"{shown} (+{len(ordered) - 10} more)"


def _safe(exc: Exception) -> str:
    """An exception as text, cut short: API errors echo the request, never let a long one flood the log."""
    return f"{type(exc).__name__}: {str(exc)[:300]}"
