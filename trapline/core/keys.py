"""Zabbix item key syntax: quoting one parameter, splitting a key's parameters."""

from __future__ import annotations


def quote_param(value: str) -> str:
    """A Zabbix item key parameter that may hold any character (``[``, ``,``, ``"``...)."""
    return '"' + value.replace('"', '\\"') + '"'


def lld_param(value: str) -> str:
    """What Zabbix makes of an unquoted ``[{#MACRO}]`` parameter whose value is ``value``.

    The server quotes the substituted value only when it must (it starts with a quote or
    a space, or holds ``,`` or ``]``), and escapes only ``"``; checked against real 6.0
    and 7.0 LLD.  A sender must use the very same text for its values to be accepted.
    A value ending in a backslash cannot be quoted: Zabbix refuses to make that item.
    """
    if value.startswith(('"', " ")) or "," in value or "]" in value:
        return quote_param(value)
    return value


def split_params(params: str) -> list[str]:
    """The parameters inside a key's brackets, unquoted (``a,"b,c"`` -> ``["a", "b,c"]``).

    As Zabbix reads them: inside quotes only ``\\"`` is an escape (for ``"``); any other
    backslash is kept as it is.  The server quotes user macro values so in the keys of
    its active checks (a JSON value's own ``\\"`` arrives as ``\\\\"``).
    """
    out: list[str] = []
    current: list[str] = []
    closed: str | None = None  # content of a quoted parameter once its quote closed
    quoted = False
    for ch in params:
        if quoted:
            if ch != '"':
                current.append(ch)
            elif current and current[-1] == "\\":
                current[-1] = '"'
            else:
                quoted, closed, current = False, "".join(current), []
        elif ch == '"' and closed is None and not "".join(current).strip():
            quoted, current = True, []
        elif ch == ",":
            out.append(closed if closed is not None else "".join(current).strip())
            current, closed = [], None
        elif closed is None:
            current.append(ch)
    out.append(closed if closed is not None else "".join(current).strip())
    return out
