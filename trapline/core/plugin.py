"""The two small interfaces every plugin implements.

A *collector* produces readings; a *destination* delivers spooled readings
somewhere that acknowledges them (a Zabbix server, an MQTT broker); an
*observer* watches the live stream without acknowledgement (Prometheus).

Adding a collector: a module in ``collectors/`` with ``build(section) ->
Collector``, an entry in ``collectors.REGISTRY`` (with the extra that installs its
libraries, see :class:`PluginSpec`), a sample config section in its
docstring and the README, and tests.  Exporters work the same way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import msgspec

from trapline.core.config import Section
from trapline.core.model import Item


@dataclass(frozen=True, slots=True)
class PluginSpec:
    """A registry entry: where a plugin's builder is and what it needs beyond the base install.

    The builder's module is imported only when the config names the plugin. ``needs`` are
    the top-level modules of the libraries that ``trapline[<extra>]`` installs for it; the
    settings check them first, so a role installed without its extra stops at start with
    one line naming the extra instead of a traceback from deep inside the plugin.
    """

    builder: str  # "module:function"
    extra: str | None = None
    needs: tuple[str, ...] = ()
    # At most one per agent: its library keeps one connection in module globals (gpsd-py3).
    one_per_agent: bool = False


class Outbox(Protocol):
    """Where a collector puts what it collected.  Never blocks."""

    def put(self, item: Item) -> None: ...

    def error(self, reason: str, condition: str | None = None) -> None:
        """Count and log one collector error (bad frame, lost adapter...).

        ``condition`` names a fault that persists until :meth:`resolved` (a refused
        token, an unreachable API): logged when it starts, then as a periodic summary,
        whatever the text of each ``reason``.  Without it the error is a one-off (a bad
        frame); those are summarised together per collector.
        """
        ...

    def resolved(self, condition: str, message: str) -> None:
        """The ``condition`` is over; logs ``message`` once if its start was logged."""
        ...


@runtime_checkable
class CommittingOutbox(Outbox, Protocol):
    """An Outbox that can tell when what was put is safe on disk.

    For collectors that must acknowledge their source (an MQTT bridge): ack
    only after ``committed()`` resolved.  It resolves once every item put
    before the call is in the spool, or was rejected or filtered on the way.
    The commit comes at the next regular flush, or at once with ``soon``: for
    a source that stops sending until it has acknowledgements.
    """

    def committed(self, soon: bool = False) -> Awaitable[None]: ...


class Collector(Protocol):
    name: str

    async def run(self, out: Outbox) -> None:
        """Collect until cancelled.  Must survive every error of its source."""
        ...


CollectorFactory = Callable[[str, Section], Collector]


@runtime_checkable
class ActiveCheckFollower(Protocol):
    """Optional: a collector steered by one active-agent item of its host, set in Zabbix.

    A van holds no API token, but the server (or the van's proxy) tells an active agent
    the keys of its host's active items with the user macros in them resolved.  The
    application has the Zabbix exporter ask for them and hand this collector its item.
    """

    name: str

    def active_check(self) -> tuple[str, str]:
        """(host, key name) of the item this collector follows, e.g. ``("van-17", "trapline.geofences")``."""
        ...

    def active_check_params(self, params: Sequence[str] | None) -> None:
        """The item's key parameters as the server resolved them; None: the host has no such item.

        Called in the event loop, again at every poll; must not block."""
        ...


class Spooled(msgspec.Struct, frozen=True, gc=False):
    """A reading as it sits in the spool, waiting for one destination.

    A frozen, untracked Struct, not a frozen dataclass, for the reasons model.Reading
    is one: every claim builds one per reading.  It holds an Item, which cannot refer
    back to it, and numbers: never part of a reference cycle.
    """

    id: int
    item: Item
    first_try: float  # epoch seconds when it entered the spool
    attempts: int


@dataclass(slots=True)
class Delivery:
    """What a destination did with a batch.  Every spool id lands in one bucket."""

    accepted: list[int] = field(default_factory=list)
    retry: dict[int, str] = field(default_factory=dict)  # id -> why, stays spooled
    rejected: dict[int, str] = field(default_factory=dict)  # id -> why, dropped and counted
    # Set when the destination could not be reached, or a request got no verdict (the
    # connection failed before a reply): nothing was refused, so the rows not in another
    # bucket stay spooled without ageing towards rejection; the pipeline backs off instead.
    unreachable: str | None = None


class Destination(Protocol):
    """An acknowledging receiver; the pipeline keeps a spool queue per destination."""

    name: str
    # Whether deliver() reads Reading.labels; the spool stores them only for those that do.
    needs_labels: bool

    async def deliver(self, batch: Sequence[Spooled]) -> Delivery: ...

    async def close(self) -> None: ...


class Observer(Protocol):
    """A non-acknowledging consumer of the live stream (e.g. the Prometheus exporter)."""

    def observe(self, item: Item) -> None: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


@runtime_checkable
class Checkable(Protocol):
    """Optional: a plugin that can test its endpoint for ``trapline check``."""

    async def check(self) -> str:
        """Return a one-line success detail; raise with a clear message on failure."""
        ...
