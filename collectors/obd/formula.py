"""Byte formulas of operator-defined PIDs, such as ``(A*256+B)/10``, parsed without eval().

The letters ``A`` to ``Z`` stand for the answer's data bytes, in the order they
come (the usual notation of PID lists and of Torque's custom PIDs).  A formula
may use decimal or ``0x`` hex numbers, ``+ - * /``, unary minus, parentheses
and the integer bit operations ``& | << >>``; precedence as in C and Python
(``* /`` before ``+ -`` before shifts before ``&`` before ``|``).

Arithmetic is exact (:class:`fractions.Fraction`): the value only becomes a
float at the end, so ``A*100/255`` is the same number whatever the order of
operations.  Anything that cannot be computed from one answer (a division by
zero, a bit operation on a fraction, too few bytes) raises :class:`FormulaError`
with a reason, never another exception.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction

MAX_LENGTH = 200  # characters: a formula is a line in a config file
MAX_DEPTH = 32  # nested parentheses and unary minuses: bounds the parser's recursion
MAX_SHIFT = 64  # bits: a larger shift is a typo, and would build huge integers

_TOKEN = re.compile(r"\s*(?:(0[xX][0-9A-Fa-f]+|\d+(?:\.\d+)?)|([A-Z])|(<<|>>|[-+*/&|()]))")
Bytes = Sequence[int]
_Node = Callable[[Bytes], Fraction]


class FormulaError(ValueError):
    """A formula that does not parse, or cannot be computed for one answer."""


def _whole(value: Fraction, op: str) -> int:
    if value.denominator != 1:
        raise FormulaError(f"{op} needs whole numbers, got {value}")
    return value.numerator


def _shift(value: Fraction) -> int:
    bits = _whole(value, "shift")
    if not 0 <= bits <= MAX_SHIFT:
        raise FormulaError(f"shift by {bits} bits (0 to {MAX_SHIFT} allowed)")
    return bits


def _divide(a: Fraction, b: Fraction) -> Fraction:
    if b == 0:
        raise FormulaError("division by zero")
    return a / b


# binary operators by precedence level, loosest first
_LEVELS: tuple[dict[str, Callable[[Fraction, Fraction], Fraction]], ...] = (
    {"|": lambda a, b: Fraction(_whole(a, "|") | _whole(b, "|"))},
    {"&": lambda a, b: Fraction(_whole(a, "&") & _whole(b, "&"))},
    {"<<": lambda a, b: Fraction(_whole(a, "<<") << _shift(b)),
     ">>": lambda a, b: Fraction(_whole(a, ">>") >> _shift(b))},
    {"+": operator.add, "-": operator.sub},
    {"*": operator.mul, "/": _divide},
)


@dataclass(frozen=True, slots=True)
class Formula:
    text: str
    size: int  # data bytes it reads: one past its highest letter
    _root: _Node

    def __call__(self, data: Bytes) -> float:
        """The value for these data bytes; :class:`FormulaError` when it has none."""
        if len(data) < self.size:
            raise FormulaError(f"{self.text!r} reads {self.size} data bytes, the answer has {len(data)}")
        value = self._root(data)
        try:
            return float(value)
        except OverflowError:
            raise FormulaError(f"{self.text!r} gives a number beyond any float") from None


def parse(text: str) -> Formula:
    """Compile ``text``; :class:`FormulaError` says what is wrong and where."""
    if len(text) > MAX_LENGTH:
        raise FormulaError(f"longer than {MAX_LENGTH} characters")
    tokens: list[tuple[int, str, str]] = []  # (position, kind, text)
    at = 0
    while at < len(text):
        if text[at:].strip() == "":
            break
        match = _TOKEN.match(text, at)
        if match is None:
            start = len(text) - len(text[at:].lstrip())
            raise FormulaError(f"unexpected {text[start]!r} at position {start + 1}")
        number, letter, symbol = match.groups()
        kind = "number" if number else "letter" if letter else "symbol"
        tokens.append((match.start(match.lastindex or 0), kind, number or letter or symbol))
        at = match.end()
    parser = _Parser(text, tokens)
    root = parser.expression(0, 0)
    if parser.at < len(tokens):
        position, _, token = tokens[parser.at]
        raise FormulaError(f"unexpected {token!r} at position {position + 1}")
    return Formula(text, parser.size, root)


class _Parser:
    """Recursive descent over the tokens, one method per precedence level."""

    def __init__(self, text: str, tokens: list[tuple[int, str, str]]) -> None:
        self.text = text
        self.tokens = tokens
        self.at = 0
        self.size = 0

    def _peek(self) -> str | None:
        return self.tokens[self.at][2] if self.at < len(self.tokens) else None

    def expression(self, level: int, depth: int) -> _Node:
        if level == len(_LEVELS):
            return self._unary(depth)
        node = self.expression(level + 1, depth)
        ops = _LEVELS[level]
        while (symbol := self._peek()) in ops:
            assert symbol is not None
            self.at += 1
            node = _binary(ops[symbol], node, self.expression(level + 1, depth))
        return node

    def _unary(self, depth: int) -> _Node:
        if depth > MAX_DEPTH:
            raise FormulaError(f"nested deeper than {MAX_DEPTH} levels")
        if self.at == len(self.tokens):
            raise FormulaError("ends where a number, a letter or '(' was expected")
        position, kind, token = self.tokens[self.at]
        self.at += 1
        if token == "-":
            inner = self._unary(depth + 1)
            return lambda data: -inner(data)
        if token == "(":
            node = self.expression(0, depth + 1)
            if self._peek() != ")":
                raise FormulaError(f"'(' at position {position + 1} is never closed")
            self.at += 1
            return node
        if kind == "number":
            value = Fraction(int(token, 16)) if token[:2] in ("0x", "0X") else Fraction(token)
            return lambda _data: value
        if kind == "letter":
            index = ord(token) - ord("A")
            self.size = max(self.size, index + 1)
            return lambda data: Fraction(data[index])
        raise FormulaError(f"unexpected {token!r} at position {position + 1}")


def _binary(op: Callable[[Fraction, Fraction], Fraction], left: _Node, right: _Node) -> _Node:
    return lambda data: op(left(data), right(data))
