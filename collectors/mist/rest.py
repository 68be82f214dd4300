"""The few Mist REST calls the collector makes: site and org names, org site lists, site device inventories.

Every call is counted against a per-hour budget (Mist allows 5,000 calls per
hour per token, shared by everything that uses the token); HTTP 429 raises
:class:`RateLimited` with the server's Retry-After.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Iterable, Mapping
from functools import partial
from typing import Any

from trapline.collectors.mist.fleet import (
    MAX_DEVICES,
    MAX_TEXT,
    KnownDevice,
    SiteInfo,
    mac_from_device_id,
    normalize_mac,
)
from trapline.collectors.mist.shard import ALL_SITES, Shard
from trapline.core.config import Secret

logger = logging.getLogger(__name__)

_PAGE_SIZE = 1000


class RestError(Exception):
    """A failed REST call; ``str()`` is safe to log (no token, no body)."""


class RateLimited(RestError):
    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RestBudget:
    """At most ``per_hour`` calls in any sliding hour."""

    def __init__(self, per_hour: int) -> None:
        self.per_hour = per_hour
        self._calls: deque[float] = deque()

    def spend(self, now: float) -> bool:
        while self._calls and now - self._calls[0] >= 3600:
            self._calls.popleft()
        if len(self._calls) >= self.per_hour:
            return False
        self._calls.append(now)
        return True

    def used(self, now: float) -> int:
        return sum(1 for t in self._calls if now - t < 3600)


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # an HTTP date; the caller's own backoff applies


class MistRest:
    def __init__(self, base_url: str, token: Secret, budget: RestBudget, timeout: float) -> None:
        self.base_url = base_url
        self._token = token
        self.budget = budget
        self.timeout = timeout
        self.calls = 0

    def __repr__(self) -> str:
        return f"MistRest({self.base_url!r}, calls={self.calls})"

    async def get(self, path: str) -> Any:
        if not self.budget.spend(time.monotonic()):
            raise RestError(f"REST budget of {self.budget.per_hour} calls per hour is used up")
        self.calls += 1
        # No async HTTP client is installed (aiohttp/httpx are not dependencies) and
        # these calls are rare (a few per hour), so urllib runs in a worker thread.
        return await asyncio.to_thread(self._get_blocking, path)

    def _get_blocking(self, path: str) -> Any:
        url = self.base_url + path
        request = urllib.request.Request(
            url, headers={"Authorization": f"Token {self._token.reveal()}", "Accept": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            exc.close()  # the error keeps the socket open otherwise, as long as it is referenced
            if exc.code == 429:
                raise RateLimited(
                    f"GET {path}: HTTP 429, rate limited", _retry_after(exc.headers.get("Retry-After"))
                ) from None
            if exc.code in (401, 403):
                raise RestError(f"GET {path}: HTTP {exc.code}, the API token was refused") from None
            raise RestError(f"GET {path}: HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise RestError(f"GET {path}: {type(exc).__name__}: {reason}") from None
        try:
            return json.loads(body)
        except ValueError:
            raise RestError(f"GET {path}: reply is not JSON") from None


def _site_rows(reply: Any, path: str) -> list[tuple[str, str]]:
    if not isinstance(reply, list):
        raise RestError(f"GET {path}: expected a JSON list of sites")
    rows = []
    for site in reply:
        if isinstance(site, dict) and isinstance(site.get("id"), str):
            rows.append((site["id"], site["name"] if isinstance(site.get("name"), str) else site["id"]))
    return rows


class SiteDirectory:
    """Site and org names for the configured sites and orgs of this instance's shard, refreshed by the caller.

    What one refresh could not learn keeps its previous (or id-only) value, so a
    failing org never removes the sites of the others.  An org belongs to a shard as
    a whole (by its id), a site configured by id by its own id; what belongs to
    other shards is never looked up.
    """

    def __init__(
        self, rest: MistRest, orgs: Iterable[str], sites: Iterable[str], shard: Shard = ALL_SITES
    ) -> None:
        self.rest = rest
        self.shard = shard
        self.configured_orgs = frozenset(orgs)
        self.orgs = tuple(o for o in orgs if shard.owns(o))
        self.sites = tuple(s for s in sites if shard.owns(s))
        self._org_names: dict[str, str] = {}
        self._org_sites: dict[str, dict[str, SiteInfo]] = {}
        self._site_info: dict[str, SiteInfo] = {s: SiteInfo.unnamed(s) for s in self.sites}

    def known(self) -> dict[str, SiteInfo]:
        """Every site to subscribe to, with the best names known so far."""
        out: dict[str, SiteInfo] = {}
        for org in self.orgs:
            out.update(self._org_sites.get(org, {}))
        out.update(self._site_info)
        return out

    async def refresh(self) -> list[RestError]:
        """One refresh; returns the failures (RateLimited ones stop the refresh early)."""
        failures: list[RestError] = []
        self._org_names.clear()  # names can change; learn them again each refresh
        steps = [partial(self._refresh_org, org) for org in self.orgs]
        steps += [partial(self._refresh_site, site) for site in self.sites]
        for step in steps:
            try:
                await step()
            except RateLimited as exc:
                return [*failures, exc]
            except RestError as exc:
                failures.append(exc)
        return failures

    async def _org_name(self, org: str) -> str:
        if org not in self._org_names:
            reply = await self.rest.get(f"/api/v1/orgs/{org}")
            name = reply.get("name") if isinstance(reply, Mapping) else None
            self._org_names[org] = name if isinstance(name, str) else org
        return self._org_names[org]

    async def _refresh_org(self, org: str) -> None:
        org_name = await self._org_name(org)
        rows: list[tuple[str, str]] = []
        page = 1
        while True:
            path = f"/api/v1/orgs/{org}/sites?limit={_PAGE_SIZE}&page={page}"
            batch = _site_rows(await self.rest.get(path), path)
            rows.extend(batch)
            if len(batch) < _PAGE_SIZE:
                break
            page += 1
        self._org_sites[org] = {sid: SiteInfo(sid, name, org, org_name) for sid, name in rows}
        logger.info("Mist org %s (%s): %d sites", org, org_name, len(rows))

    async def _refresh_site(self, site: str) -> None:
        path = f"/api/v1/sites/{site}"
        reply = await self.rest.get(path)
        if not isinstance(reply, Mapping):
            raise RestError(f"GET {path}: expected a JSON object")
        name = reply.get("name") if isinstance(reply.get("name"), str) else site
        org = reply.get("org_id") if isinstance(reply.get("org_id"), str) else ""
        if org in self.configured_orgs and self.shard.count > 1:
            # Its org may belong to another shard, whose instance then takes the site too.
            logger.warning(
                "Mist site %s is configured by id and through its org %s: configure it once", site, org
            )
        org_name = self._site_info[site].org_name
        if org:
            try:
                org_name = await self._org_name(org)
            except RateLimited:
                raise
            except RestError as exc:  # a site-scoped token may not read its org
                logger.info("Mist org name of site %s unavailable: %s", site, exc)
        self._site_info[site] = SiteInfo(site, str(name), str(org), org_name)


def _inventory_entry(item: object) -> tuple[str, KnownDevice] | None:
    """MAC and what is known of one device of a site inventory reply; None when it names no kind or no MAC.

    The reply's items are Mist's device configuration objects (DeviceAp, DeviceSwitch,
    DeviceGateway): ``type`` is their one required member, ``mac``, ``id`` and ``name``
    are optional.  The MAC is the ``mac`` member, else the end of the ``id``.
    """
    if not isinstance(item, Mapping):
        return None
    kind, device_id, name = item.get("type"), item.get("id"), item.get("name")
    mac = normalize_mac(item.get("mac"))
    if mac is None and isinstance(device_id, str):
        mac = mac_from_device_id(device_id)
    if mac is None or not isinstance(kind, str) or not 0 < len(kind) <= 64:
        return None
    usable_name = name if isinstance(name, str) and 0 < len(name) <= MAX_TEXT else None
    return mac, KnownDevice(sys.intern(kind), usable_name)


async def site_inventory(rest: MistRest, site: str) -> tuple[dict[str, KnownDevice], int]:
    """Every device of a site with its kind and name (``GET /api/v1/sites/<site>/devices?type=all``),
    by MAC, and how many listed items named no kind or no MAC (left out).

    One call per 1000 devices; the pages stop at MAX_DEVICES, beyond which the fleet keeps nothing.
    """
    found: dict[str, KnownDevice] = {}
    left_out = 0
    for page in range(1, MAX_DEVICES // _PAGE_SIZE + 1):
        path = f"/api/v1/sites/{site}/devices?type=all&limit={_PAGE_SIZE}&page={page}"
        reply = await rest.get(path)
        if not isinstance(reply, list):
            raise RestError(f"GET {path}: expected a JSON list of devices")
        listed, skipped = inventory_entries(reply)
        found.update(listed)
        left_out += skipped
        if len(reply) < _PAGE_SIZE:
            break
    return found, left_out


def inventory_entries(items: list[Any]) -> tuple[dict[str, KnownDevice], int]:
    """One page of a site inventory reply, by MAC, and how many of its items were left out."""
    found: dict[str, KnownDevice] = {}
    left_out = 0
    for item in items:
        entry = _inventory_entry(item)
        if entry is None:
            left_out += 1
        else:
            found[entry[0]] = entry[1]
    return found, left_out
