"""Keep configured secrets out of every log line, whoever writes it.

Call sites cannot be trusted to do this: websockets logs request headers at
debug, botocore dumps requests, and exceptions from pyzabbix or an endpoint
that echoes the request carry the secret in their text.  So every secret value
is registered when it is read (:class:`~trapline.core.config.Secret`) and
a filter on the log handlers masks it in the finished message, the exception
text and the stack, in every spelling a library is likely to print.
"""

from __future__ import annotations

import json
import logging
import re
import urllib.parse

MASK = "***"
# Shorter values would mask ordinary words everywhere; the config refuses none of them,
# but a 3-character token is not a secret worth a garbled log.
MIN_LENGTH = 4


class _Registry:
    """The secrets seen so far and one pattern matching every spelling of each."""

    def __init__(self) -> None:
        self.values: set[str] = set()
        self.pattern: re.Pattern[str] | None = None

    def add(self, value: str) -> None:
        if len(value) < MIN_LENGTH or value in self.values:
            return
        self.values.add(value)
        forms = set().union(*(spellings(v) for v in self.values))
        # Longest first, so a spelling that contains another is masked whole.
        self.pattern = re.compile("|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True)))


_REGISTRY = _Registry()


def spellings(value: str) -> set[str]:
    """The forms a secret takes in log text: plain, URL-encoded, JSON-escaped, repr'd, as bytes."""
    forms = {
        value,
        urllib.parse.quote(value, safe=""),
        urllib.parse.quote_plus(value, safe=""),
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
        repr(value)[1:-1],
        repr(value.encode("utf-8"))[2:-1],
    }
    return {form for form in forms if form}


def register(value: str) -> None:
    """Mask ``value`` (every spelling) in all log output from now on."""
    _REGISTRY.add(value)


def mask(text: str) -> str:
    pattern = _REGISTRY.pattern
    return text if pattern is None else pattern.sub(MASK, text)


class RedactFilter(logging.Filter):
    """A handler filter that rewrites each record with every registered secret masked.

    It works on the finished text (message with its args, exception, stack), so a
    secret split across a format string and its arguments is still caught.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if _REGISTRY.pattern is None:
            return True
        record.msg = mask(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask(record.exc_text)
        if record.stack_info:
            record.stack_info = mask(record.stack_info)
        return True


_FILTER = RedactFilter()


def install() -> None:
    """Put the filter on every handler that exists now (root first) and on the last-resort handler."""
    handlers: list[logging.Handler] = list(logging.getLogger().handlers)
    for logger in logging.Logger.manager.loggerDict.values():
        if isinstance(logger, logging.Logger):
            handlers.extend(logger.handlers)
    if logging.lastResort is not None:
        handlers.append(logging.lastResort)
    for handler in handlers:
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)
