"""Exact GeneralPoints solver: every formula that makes the target from the hand, each number used once.

Dynamic programming over sub-multisets of the hand: each sub-multiset maps its reachable exact values
(:class:`fractions.Fraction`) to the expressions reaching them. Only the last combination step is
aimed at the target, so a cold 4-card solve costs a few milliseconds and a repeated hand is a cache hit.
Every expression tree over every ordering of the numbers is covered; each is printed with minimal
parentheses (see :func:`sftrl.environments.generalpoints.formula.render`).

The game's own question, 4 cards and target 24, never searches: every multiset of 4 values in
1..13 (so every rank multiset under both face rules: J/Q/K as 10 or as 11-13) is answered from a
table shipped in ``data/`` (:data:`TABLE_FILE`, built by ``scripts/build_gp_solution_table.py``
with :func:`build_table`), so the first resets of a run cost what later ones do.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Collection, Iterator, Mapping, Sequence
from fractions import Fraction
from functools import lru_cache
from itertools import combinations_with_replacement
from pathlib import Path

from sftrl.environments.generalpoints.formula import render

_Expr = tuple[str, int]  # (text, precedence of its top operator; 3 = a bare number)
_OPS = ("+", "-", "*", "/")
MAX_VALUES = 6
"""Largest hand solved; the search grows super-exponentially beyond the game's 4 cards."""
TABLE_TARGET = 24
TABLE_CARDS = 4
TABLE_MAX_VALUE = 13
"""The shipped table covers every multiset of :data:`TABLE_CARDS` values in 1..13, target 24."""
TABLE_FILE = Path(__file__).parent / "data" / "solutions-24.json.gz"
TABLE_FORMAT = 1


def _key(values: Sequence[int]) -> tuple[int, ...]:
    key = tuple(sorted(int(v) for v in values))
    if len(key) > MAX_VALUES:
        raise ValueError(f"at most {MAX_VALUES} values can be solved, got {len(key)}")
    return key


@lru_cache(maxsize=256)
def _splits(values: tuple[int, ...]) -> tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]:
    """Every ordered (left, right) split of a sorted multiset into two non-empty sorted sub-multisets."""
    n = len(values)
    out: set[tuple[tuple[int, ...], tuple[int, ...]]] = set()
    for mask in range(1, (1 << n) - 1):
        left = tuple(v for i, v in enumerate(values) if mask >> i & 1)
        right = tuple(v for i, v in enumerate(values) if not mask >> i & 1)
        out.add((left, right))
    return tuple(sorted(out))


def _apply(op: str, a: Fraction, b: Fraction) -> Fraction | None:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return None if b == 0 else a / b


@lru_cache(maxsize=8192)
def _values(values: tuple[int, ...]) -> frozenset[Fraction]:
    """All exact values reachable from the sorted multiset ``values``."""
    if len(values) == 1:
        return frozenset({Fraction(values[0])})
    out: set[Fraction] = set()
    for left, right in _splits(values):
        rvals = _values(right)
        for a in _values(left):
            for b in rvals:
                for op in _OPS:
                    r = _apply(op, a, b)
                    if r is not None:
                        out.add(r)
    return frozenset(out)


@lru_cache(maxsize=4096)
def _exprs(values: tuple[int, ...]) -> Mapping[Fraction, tuple[_Expr, ...]]:
    """Reachable value -> distinct minimal-parenthesis expressions, for a sorted multiset."""
    if len(values) == 1:
        return {Fraction(values[0]): ((str(values[0]), 3),)}
    out: dict[Fraction, set[_Expr]] = {}
    for left, right in _splits(values):
        rmap = _exprs(right)
        for a, lexprs in _exprs(left).items():
            for b, rexprs in rmap.items():
                for op in _OPS:
                    r = _apply(op, a, b)
                    if r is None:
                        continue
                    bucket = out.setdefault(r, set())
                    for le in lexprs:
                        for re_ in rexprs:
                            bucket.add(render(op, le, re_))
    return {v: tuple(sorted(s)) for v, s in out.items()}


def _partners(op: str, a: Fraction, target: Fraction, rights: Collection[Fraction]) -> Iterator[Fraction]:
    """The right operands ``b`` (among ``rights``) with ``a op b == target``, found by inverting op."""
    if op == "+":
        need: Fraction | None = target - a
    elif op == "-":
        need = a - target
    elif op == "*":
        if a == 0:
            # 0*b is 0 for every b: either all of them hit the target or none does.
            if target == 0:
                yield from rights
            return
        need = target / a
    else:
        if target == 0:
            # a/b == 0 exactly when a == 0 (and b != 0).
            if a == 0:
                yield from (b for b in rights if b != 0)
            return
        need = a / target
        if need == 0:
            return
    if need in rights:
        yield need


@lru_cache(maxsize=16384)
def _search(values: tuple[int, ...], target: int) -> tuple[str, ...]:
    if not values:
        return ()
    if len(values) == 1:
        return (str(values[0]),) if values[0] == target else ()
    goal = Fraction(target)
    found: set[str] = set()
    for left, right in _splits(values):
        rmap = _exprs(right)
        for a, lexprs in _exprs(left).items():
            for op in _OPS:
                for b in _partners(op, a, goal, rmap):
                    for le in lexprs:
                        for re_ in rmap[b]:
                            found.add(render(op, le, re_)[0])
    return tuple(sorted(found))


@lru_cache(maxsize=16384)
def _solvable(values: tuple[int, ...], target: int) -> bool:
    if _in_table(values, target):
        return bool(solution_table().get(values))
    if len(values) <= 1:
        return values == (target,)
    goal = Fraction(target)
    for left, right in _splits(values):
        rvals = _values(right)
        for a in _values(left):
            for op in _OPS:
                for _ in _partners(op, a, goal, rvals):
                    return True
    return False


def _in_table(values: tuple[int, ...], target: int) -> bool:
    return (
        target == TABLE_TARGET
        and len(values) == TABLE_CARDS
        and values[0] >= 1
        and values[-1] <= TABLE_MAX_VALUE
    )


def table_hands() -> Iterator[tuple[int, ...]]:
    """Every sorted hand the table covers (1820 multisets of 4 values in 1..13)."""
    return combinations_with_replacement(range(1, TABLE_MAX_VALUE + 1), TABLE_CARDS)


def build_table() -> bytes:
    """The table file's bytes, computed by search: gzip'd JSON, byte-for-byte reproducible."""
    hands = {",".join(map(str, h)): list(sols) for h in table_hands() if (sols := _search(h, TABLE_TARGET))}
    doc = {
        "format": TABLE_FORMAT,
        "target": TABLE_TARGET,
        "cards": TABLE_CARDS,
        "max_value": TABLE_MAX_VALUE,
        "note": "sorted hand -> every formula (minimal brackets) making the target; absent = unsolvable",
        "hands": hands,
    }
    text = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
    buf = io.BytesIO()
    # mtime=0 and no file name in the header: the same table gives the same bytes.
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0, filename="") as fh:
        fh.write(text)
    return buf.getvalue()


@lru_cache(maxsize=1)
def solution_table() -> Mapping[tuple[int, ...], tuple[str, ...]]:
    """The shipped table, loaded once: sorted solvable hand -> its solutions (as :func:`solve` lists)."""
    try:
        doc = json.loads(gzip.decompress(TABLE_FILE.read_bytes()))
    except (OSError, ValueError) as exc:
        raise RuntimeError(
            f"the GeneralPoints solution table {TABLE_FILE} is unreadable ({exc}); rebuild it with "
            "python scripts/build_gp_solution_table.py"
        ) from None
    expected = (TABLE_FORMAT, TABLE_TARGET, TABLE_CARDS, TABLE_MAX_VALUE)
    if (doc.get("format"), doc.get("target"), doc.get("cards"), doc.get("max_value")) != expected:
        raise RuntimeError(f"{TABLE_FILE} is not a format-{TABLE_FORMAT} table for target {TABLE_TARGET}")
    return {tuple(int(v) for v in k.split(",")): tuple(sols) for k, sols in doc["hands"].items()}


def solve(values: Sequence[int], target: int = 24) -> tuple[str, ...]:
    """All distinct formulas (sorted, no spaces) using each of ``values`` once that equal ``target``.

    Exact arithmetic; cached by (sorted values, target). At most :data:`MAX_VALUES` values. Four
    values in 1..13 with target 24 are looked up in the shipped table instead of searched.
    """
    key, goal = _key(values), int(target)
    if _in_table(key, goal):
        return solution_table().get(key, ())
    return _search(key, goal)


def is_solvable(values: Sequence[int], target: int = 24) -> bool:
    """Whether any formula over ``values`` (each once) equals ``target``; cheaper than :func:`solve`."""
    return _solvable(_key(values), int(target))


def clear_caches() -> None:
    """Drop all memoised results, the loaded table included (for timing cold solves)."""
    for fn in (_splits, _values, _exprs, _search, _solvable, solution_table):
        fn.cache_clear()
