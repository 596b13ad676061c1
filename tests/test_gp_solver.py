"""The exact GeneralPoints solver: pinned hands, agreement with brute force, caching and speed."""

from __future__ import annotations

import itertools
import operator
import time
from collections import Counter
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sftrl.environments.generalpoints import solver
from sftrl.environments.generalpoints.formula import parse_formula, render
from sftrl.environments.generalpoints.solver import is_solvable, solve

OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}
HANDS = list(itertools.combinations_with_replacement(range(1, 14), 4))


def test_classic_hand_needs_exact_fractions() -> None:
    assert solve([3, 3, 8, 8]) == ("8/(3-8/3)",)
    assert solve([8, 3, 8, 3]) == ("8/(3-8/3)",)
    assert is_solvable([3, 8, 3, 8])


@pytest.mark.parametrize("hand", [(1, 1, 1, 1), (1, 1, 1, 2), (1, 1, 1, 3), (13, 13, 13, 13)])
def test_unsolvable_hands(hand: tuple[int, ...]) -> None:
    assert solve(hand) == ()
    assert not is_solvable(hand)


def test_known_solutions_are_listed() -> None:
    sols = solve([4, 6, 1, 1])
    assert "4*6*1*1" in sols and "4*6/1/1" in sols and "(4*6)*1*1" not in sols
    assert "(10-4)*(1+3)" in solve([10, 4, 1, 3])
    assert "(1+2+3)*4" in solve([1, 2, 3, 4]) and "4*3*2*1" in solve([1, 2, 3, 4])
    # Right-nested subtraction keeps its brackets; redundant ones never appear.
    assert "10-(4-3)" in solve([10, 4, 3], 9) and "(10-4)+3" not in solve([10, 4, 3], 9)


def test_output_is_sorted_distinct_and_cached() -> None:
    sols = solve([1, 2, 3, 4])
    assert list(sols) == sorted(set(sols)) and len(sols) > 50
    assert solve([4, 3, 2, 1]) is sols  # the permuted hand is the same cache entry


def test_other_targets_and_hand_sizes() -> None:
    assert solve([5], 5) == ("5",) and solve([5], 6) == ()
    assert set(solve([2, 3], 6)) == {"2*3", "3*2"}
    assert solve([], 0) == () and not is_solvable([], 0)
    assert solve([2, 2, 3], 1) and all(parse_formula(s).value == 1 for s in solve([2, 2, 3], 1))
    assert solve([1, 1], 0) and is_solvable([1, 1], 0)  # 1-1
    assert set(solve([0, 5], 0)) == {"0*5", "5*0", "0/5"}
    with pytest.raises(ValueError):
        solve(list(range(1, 9)))


def test_solvable_count_over_all_hands() -> None:
    # The well-known count: 1362 of the 1820 multisets of 4 cards in 1..13 can make 24.
    assert sum(is_solvable(h) for h in HANDS) == 1362


def brute_force(values: tuple[int, ...], target: int) -> set[str]:
    """All 5 tree shapes x orderings x operators, evaluated independently, printed with render()."""
    found: set[str] = set()

    def combine(op: str, a: tuple[Fraction, tuple[str, int]], b: tuple[Fraction, tuple[str, int]]):
        if op == "/" and b[0] == 0:
            return None
        return OPS[op](a[0], b[0]), render(op, a[1], b[1])

    for perm in set(itertools.permutations(values)):
        leaves = [(Fraction(v), (str(v), 3)) for v in perm]
        for o1, o2, o3 in itertools.product(OPS, repeat=3):
            a, b, c, d = leaves
            shapes = []
            ab, bc, cd = combine(o1, a, b), combine(o2, b, c), combine(o3, c, d)
            if ab:
                x = combine(o2, ab, c)
                shapes.append(x and combine(o3, x, d))
                shapes.append(cd and combine(o2, ab, cd))
            if bc:
                x = combine(o1, a, bc)
                shapes.append(x and combine(o3, x, d))
                y = combine(o3, bc, d)
                shapes.append(y and combine(o1, a, y))
            if cd:
                y = combine(o2, b, cd)
                shapes.append(y and combine(o1, a, y))
            found.update(s[1][0] for s in shapes if s and s[0] == target)
    return found


@settings(max_examples=25, deadline=None)
@given(hand=st.sampled_from(HANDS), target=st.sampled_from([24, 24, 24, 10, 1]))
def test_solve_agrees_with_brute_force(hand: tuple[int, ...], target: int) -> None:
    assert set(solve(hand, target)) == brute_force(hand, target)
    assert is_solvable(hand, target) == bool(solve(hand, target))


@settings(max_examples=200, deadline=None)
@given(hand=st.sampled_from(HANDS), target=st.integers(min_value=1, max_value=40))
def test_every_solution_reparses_to_the_target_using_each_value_once(
    hand: tuple[int, ...], target: int
) -> None:
    sols = solve(hand, target)
    assert is_solvable(hand, target) == bool(sols)
    for s in sols:
        parsed = parse_formula(s)
        assert parsed.is_complete and parsed.value == target
        assert Counter(parsed.numbers) == Counter(hand) and parsed.canonical == s


def test_a_cold_solve_takes_milliseconds_and_a_cached_one_microseconds() -> None:
    solver.clear_caches()
    t0 = time.perf_counter()
    solve([1, 5, 7, 13], 25)  # not in the table: a real search
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(100):
        solve([13, 7, 5, 1], 25)
    cached = (time.perf_counter() - t0) / 100
    assert cold < 0.1  # measured ~3 ms; generous for slow CI machines
    assert cached < 0.001


def test_shipped_table_covers_every_hand_and_every_formula_is_right() -> None:
    table = solver.solution_table()
    assert set(table) <= set(solver.table_hands()) and len(list(solver.table_hands())) == 1820
    assert len(table) == 1362  # absent hands are the unsolvable ones
    for hand, sols in table.items():
        assert sols and list(sols) == sorted(set(sols))
        for s in sols[:: max(1, len(sols) // 3)]:  # every hand, a spread of its formulas
            parsed = parse_formula(s)
            assert parsed.value == 24 and Counter(parsed.numbers) == Counter(hand)


def test_table_rebuild_is_byte_identical_to_the_shipped_file() -> None:
    # Rebuilding from cold caches is what scripts/build_gp_solution_table.py --check does (~3 s).
    solver.clear_caches()
    assert solver.build_table() == solver.TABLE_FILE.read_bytes()


def test_face_rules_map_every_rank_multiset_into_the_table() -> None:
    from sftrl.environments.generalpoints.cards import RANKS, rank_value

    for rule in ("10", "11-13"):
        for ranks in itertools.combinations_with_replacement(RANKS, 4):
            key = tuple(sorted(rank_value(r, rule) for r in ranks))
            assert solver._in_table(key, 24)


def test_a_cold_table_reset_is_a_lookup() -> None:
    from sftrl.environments import make_env

    solver.clear_caches()
    env = make_env("gp")
    env.reset(seed=0)  # loads the table once
    for seed in range(1, 21):
        env.reset(seed=10_000 + seed)
    assert solver._search.cache_info().currsize == 0  # no hand, dealt or rejected, needed a search
