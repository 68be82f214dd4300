"""The byte-formula parser of custom PIDs against a reference written apart from it.

Where the shape comes from: the formula notation of PID lists (letters A-Z for the
data bytes, decimal numbers, + - * /, parentheses; as in the J1979 tables and
Torque's custom PIDs) plus the bit operations the parser documents (0x numbers,
& | << >>).  Hypothesis builds random expression trees; the test renders each one
as text with the fewest parentheses the documented precedence allows (plus random
extra ones and random spaces), and computes its value from the tree itself with
exact fractions.  The parser only ever sees the text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from trapline.collectors.obd.formula import MAX_LENGTH, MAX_SHIFT, FormulaError, parse

# precedence, loosest first: the documented order (as in C and Python)
PRECEDENCE = {"|": 1, "&": 2, "<<": 3, ">>": 3, "+": 4, "-": 4, "*": 5, "/": 5}
UNARY = 6


class Undefined(Exception):
    """The reference has no value for this formula and these bytes."""


@dataclass(frozen=True)
class Num:
    """A number literal, with the text it is written as."""

    value: Fraction
    text: str


@dataclass(frozen=True)
class Byte:
    """A data byte: A is index 0."""

    index: int


@dataclass(frozen=True)
class Neg:
    """Unary minus, optionally in extra parentheses."""

    inner: Node
    parens: bool = False


@dataclass(frozen=True)
class Bin:
    """A binary operation, optionally in extra parentheses."""

    op: str
    left: Node
    right: Node
    parens: bool = False


Node = Num | Byte | Neg | Bin


def whole(x: Fraction) -> int:
    if x.denominator != 1:
        raise Undefined
    return x.numerator


def reference(node: Node, data: bytes) -> Fraction:
    match node:
        case Num(value=value):
            return value
        case Byte(index=index):
            if index >= len(data):
                raise Undefined
            return Fraction(data[index])
        case Neg(inner=inner):
            return -reference(inner, data)
        case Bin(op=op, left=left, right=right):
            a, b = reference(left, data), reference(right, data)
            if op == "+":
                return a + b
            if op == "-":
                return a - b
            if op == "*":
                return a * b
            if op == "/":
                if b == 0:
                    raise Undefined
                return a / b
            if op in ("<<", ">>"):
                shift = whole(b)
                if not 0 <= shift <= MAX_SHIFT:
                    raise Undefined
                return Fraction(whole(a) << shift if op == "<<" else whole(a) >> shift)
            if op == "&":
                return Fraction(whole(a) & whole(b))
            return Fraction(whole(a) | whole(b))
    raise AssertionError(node)


def highest_letter(node: Node) -> int:
    match node:
        case Byte(index=index):
            return index + 1
        case Neg(inner=inner):
            return highest_letter(inner)
        case Bin(left=left, right=right):
            return max(highest_letter(left), highest_letter(right))
    return 0


def render(node: Node, spaces: str) -> str:
    """The text of ``node``, parenthesised only where precedence or grouping needs it."""
    def wrap(text: str, needed: bool) -> str:
        return f"({spaces}{text}{spaces})" if needed else text

    match node:
        case Num(text=text):
            return text
        case Byte(index=index):
            return chr(ord("A") + index)
        case Neg(inner=inner, parens=parens):
            inner_text = render(inner, spaces)
            # a binary or negated operand needs its own parentheses after the sign
            return wrap("-" + wrap(inner_text, not isinstance(inner, (Num, Byte))), parens)
        case Bin(op=op, left=left, right=right, parens=parens):
            mine = PRECEDENCE[op]
            left_text = wrap(render(left, spaces), isinstance(left, Bin) and PRECEDENCE[left.op] < mine)
            # left-associative: an equal-precedence right operand keeps its parentheses
            right_text = wrap(render(right, spaces), isinstance(right, Bin) and PRECEDENCE[right.op] <= mine)
            return wrap(f"{left_text}{spaces}{op}{spaces}{right_text}", parens)
    raise AssertionError(node)


def number(value: int, as_hex: bool) -> Num:
    return Num(Fraction(value), f"0x{value:X}" if as_hex else str(value))


numbers = st.one_of(
    st.builds(number, st.integers(0, 300).map(lambda n: n or 7), st.booleans()),
    st.builds(number, st.just(0), st.booleans()),
    st.builds(lambda whole_part, tenths: Num(Fraction(f"{whole_part}.{tenths}"), f"{whole_part}.{tenths}"),
              st.integers(0, 99), st.integers(0, 99)),
)
extra_parens = st.sampled_from([False, False, False, True])  # mostly none: precedence decides
leaves: st.SearchStrategy[Node] = st.one_of(numbers, st.builds(Byte, st.integers(0, 25)))
trees: st.SearchStrategy[Node] = st.recursive(
    leaves,
    # binary nodes drawn three times as often as negations: mixed operators are the point
    lambda inner: st.one_of(
        st.builds(Neg, inner, extra_parens),
        *[st.builds(Bin, st.sampled_from(sorted(PRECEDENCE)), inner, inner, extra_parens)] * 3,
    ),
    max_leaves=16,
)


# no zero bytes: hypothesis favours them, and zeros hide most wrong groupings (0*x, 0+x)
answers = st.lists(st.integers(1, 255), min_size=26, max_size=26).map(bytes)


@given(trees, answers, st.sampled_from(["", " ", "  "]))
def test_well_formed_formulas_compute_what_the_tree_says(node: Node, data: bytes, spaces: str) -> None:
    text = render(node, spaces)
    assume(len(text) <= MAX_LENGTH)
    formula = parse(text)
    assert formula.size == highest_letter(node)
    try:
        expected = reference(node, data)
    except Undefined:
        with pytest.raises(FormulaError):
            formula(data)
        return
    try:
        want = float(expected)
    except OverflowError:
        with pytest.raises(FormulaError):
            formula(data)
        return
    assert formula(data) == want, text


class V:
    """A value for Python's own parser: the second, independent judge of precedence."""

    def __init__(self, value: Fraction) -> None:
        self.value = value

    def __add__(self, other: V) -> V:
        return V(self.value + other.value)

    def __sub__(self, other: V) -> V:
        return V(self.value - other.value)

    def __mul__(self, other: V) -> V:
        return V(self.value * other.value)

    def __truediv__(self, other: V) -> V:
        if other.value == 0:
            raise Undefined
        return V(self.value / other.value)

    def __neg__(self) -> V:
        return V(-self.value)

    def __lshift__(self, other: V) -> V:
        return V(reference(Bin("<<", Num(self.value, ""), Num(other.value, ""), False), b""))

    def __rshift__(self, other: V) -> V:
        return V(reference(Bin(">>", Num(self.value, ""), Num(other.value, ""), False), b""))

    def __and__(self, other: V) -> V:
        return V(Fraction(whole(self.value) & whole(other.value)))

    def __or__(self, other: V) -> V:
        return V(Fraction(whole(self.value) | whole(other.value)))


def chains(ops: list[str], operands: st.SearchStrategy[Node]) -> st.SearchStrategy[Chain]:
    """A flat chain of operands and operators, no parentheses: grouping is left to precedence."""
    signs = st.sampled_from(["", "-"])
    return st.tuples(signs, operands, st.lists(st.tuples(st.sampled_from(ops), signs, operands),
                                                min_size=1, max_size=8))


Chain = tuple[str, Node, list[tuple[str, str, Node]]]
small_whole = st.builds(number, st.integers(0, 12), st.booleans()) | st.builds(Byte, st.integers(0, 25))


def check_against_python(chain: Chain, data: bytes) -> None:
    sign, first, rest = chain
    text = sign + render(first, "") + "".join(f" {op} {neg}{render(leaf, '')}" for op, neg, leaf in rest)

    def for_python(leaf: Node) -> str:
        value = reference(leaf, data)
        return f"V(Fraction({value.numerator}, {value.denominator}))"

    python_text = sign + for_python(first)
    python_text += "".join(f" {op} {neg}{for_python(leaf)}" for op, neg, leaf in rest)
    try:
        # test-only eval of a string this test assembled from its own tokens
        expected = eval(python_text, {"V": V, "Fraction": Fraction}).value
        want = float(expected)
    except (Undefined, OverflowError):
        with pytest.raises(FormulaError):
            parse(text)(data)
        return
    assert parse(text)(data) == want, text


@given(chains(["+", "-", "*", "/"], leaves), answers)
def test_arithmetic_precedence_agrees_with_pythons_own_parser(chain: Chain, data: bytes) -> None:
    check_against_python(chain, data)


@given(chains(sorted(PRECEDENCE), small_whole), answers)
def test_bit_operation_precedence_agrees_with_pythons_own_parser(chain: Chain, data: bytes) -> None:
    check_against_python(chain, data)


@given(trees, st.sampled_from(["+", "*", "/", "<<", "-", "|", "&"]))
def test_a_formula_cut_short_is_rejected(node: Node, tail: str) -> None:
    text = render(node, "") + tail
    assume(len(text) <= MAX_LENGTH)
    with pytest.raises(FormulaError, match="ends where"):
        parse(text)


@given(trees)
def test_an_unclosed_parenthesis_is_rejected(node: Node) -> None:
    text = "(" + render(node, " ")
    assume(len(text) <= MAX_LENGTH)
    with pytest.raises(FormulaError, match="never closed"):
        parse(text)


# any text at all, weighted towards the formula alphabet so that near-misses are common
junk = st.text(st.sampled_from(list("ABCZabc0129x.()+-*/&|<> ^%=_é\t")) | st.characters(), max_size=60)


@given(junk, st.binary(max_size=26))
def test_any_text_parses_or_is_refused_with_a_reason(text: str, data: bytes) -> None:
    try:
        formula = parse(text)
    except FormulaError as exc:
        assert str(exc)
        return
    try:
        assert isinstance(formula(data), float)
    except FormulaError as exc:
        assert str(exc)


@pytest.mark.parametrize(("text", "reason"), [
    ("", "ends where"),
    ("A+", "ends where"),
    ("(A*256+B", "'(' at position 1 is never closed"),
    ("A B", "unexpected 'B' at position 3"),
    ("a*2", "unexpected 'a' at position 1"),
    ("A**2", "unexpected '*' at position 3"),
    ("A^B", "unexpected '^' at position 2"),
    ("1.", "unexpected '.' at position 2"),
    ("A)", "unexpected ')' at position 2"),
    ("__import__('os')", "unexpected '_' at position 1"),
    ("A" + "+A" * 100, "longer than"),
    ("(" * 40 + "A" + ")" * 40, "nested deeper"),
    ("-" * 40 + "A", "nested deeper"),
])
def test_malformed_formulas_say_what_is_wrong(text: str, reason: str) -> None:
    with pytest.raises(FormulaError, match=re.escape(reason)):
        parse(text)


@pytest.mark.parametrize(("text", "data", "reason"), [
    ("A/B", b"\x01\x00", "division by zero"),
    ("(A/2)&1", b"\x03", "whole numbers"),
    ("A<<65", b"\x01", "shift by 65"),
    ("A<<(0-1)", b"\x01", "shift by -1"),
    ("(A*256+B)/10", b"\x01", "reads 2 data bytes, the answer has 1"),
    ("A" + "<<64" * 20, b"\xff", "beyond any float"),
])
def test_answers_a_formula_cannot_compute_are_refused(text: str, data: bytes, reason: str) -> None:
    with pytest.raises(FormulaError, match=reason):
        parse(text)(data)


def test_usual_pid_formulas() -> None:
    assert parse("(A*256+B)/10")(b"\x02\xf1") == 75.3
    assert parse("A*100/255")(b"\xff") == 100.0
    assert parse("A-40")(b"\x00\x99") == -40.0  # bytes past the formula's last letter are ignored
    assert parse("(A&0x80)>>7")(b"\x81") == 1.0
    assert parse("((A<<8)|B) / 4")(b"\x10\x00") == 1024.0
