"""Exact GeneralPoints solver: every formula that makes the target from the hand, each number used once.

Dynamic programming over sub-multisets of the hand: each sub-multiset maps its reachable exact values
(:class:`fractions.Fraction`) to the expressions reaching them. Only the last combination step is
aimed at the target, so a cold 4-card solve costs a few milliseconds and a repeated hand is a cache hit.
Every expression tree over every ordering of the numbers is covered; each is printed with minimal
parentheses (see :func:`sftrl.environments.generalpoints.formula.render`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from fractions import Fraction
from functools import lru_cache

from sftrl.environments.generalpoints.formula import render

_Expr = tuple[str, int]  # (text, precedence of its top operator; 3 = a bare number)
_OPS = ("+", "-", "*", "/")
MAX_VALUES = 6
"""Largest hand solved; the search grows super-exponentially beyond the game's 4 cards."""


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
def _solve(values: tuple[int, ...], target: int) -> tuple[str, ...]:
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


def solve(values: Sequence[int], target: int = 24) -> tuple[str, ...]:
    """All distinct formulas (sorted, no spaces) using each of ``values`` once that equal ``target``.

    Exact arithmetic; cached by (sorted values, target). At most :data:`MAX_VALUES` values.
    """
    return _solve(_key(values), int(target))


def is_solvable(values: Sequence[int], target: int = 24) -> bool:
    """Whether any formula over ``values`` (each once) equals ``target``; cheaper than :func:`solve`."""
    return _solvable(_key(values), int(target))


def clear_caches() -> None:
    """Drop all memoised results (for timing cold solves)."""
    for fn in (_splits, _values, _exprs, _solve, _solvable):
        fn.cache_clear()
