"""Zabbix item key syntax: quoting one parameter, splitting a key's parameters."""

from __future__ import annotations


def quote_param(value: str) -> str:
    """A Zabbix item key parameter that may hold any character (``[``, ``,``, ``"``...)."""
    return '"' + value.replace('"', '\\"') + '"'


def split_params(params: str) -> list[str]:
    """The parameters inside a key's brackets, unquoted (``a,"b,c"`` -> ``["a", "b,c"]``)."""
    out: list[str] = []
    current: list[str] = []
    closed: str | None = None  # content of a quoted parameter once its quote closed
    quoted = escaped = False
    for ch in params:
        if quoted:
            if escaped:
                current.append(ch)
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                quoted, closed, current = False, "".join(current), []
            else:
                current.append(ch)
        elif ch == '"' and closed is None and not "".join(current).strip():
            quoted, current = True, []
        elif ch == ",":
            out.append(closed if closed is not None else "".join(current).strip())
            current, closed = [], None
        elif closed is None:
            current.append(ch)
    out.append(closed if closed is not None else "".join(current).strip())
    return out
