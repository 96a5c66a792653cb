"""`target_params` resolution: the closed form equals Lambda-Hat's brute-force search everywhere."""

import time

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from lambda_hat.specs import TARGET_PARAMS_MAX_WIDTH, widths_for_target_params


def brute_force_widths(in_dim: int, out_dim: int, depth: int, target_params: int, bias: bool) -> list[int]:
    """The rule as lambda-hat implemented it until issue 8: try every width 1..4096."""

    def count(h: int) -> int:
        dims = [in_dim] + [h] * depth + [out_dim]
        return sum(a * b + (b if bias else 0) for a, b in zip(dims[:-1], dims[1:]))

    best = min(range(1, 4097), key=lambda h: (abs(count(h) - target_params), h))
    return [best] * depth


dims = st.integers(1, 3000)
# Targets spread over every scale: below the smallest network, around the exact counts, past
# the largest (4096-wide) one, up to the largest integer a spec may hold.
targets = st.one_of(st.integers(1, 1000), st.integers(1, 10**9), st.integers(1, 2**53 - 1))


same_args = dict(in_dim=dims, out_dim=dims, depth=st.integers(1, 12), target_params=targets, bias=st.booleans())


@settings(max_examples=100, derandomize=True, database=None, deadline=None)
@given(**same_args)
@example(in_dim=4, out_dim=1, depth=2, target_params=50, bias=True)  # the `small` preset: [4, 4]
@example(in_dim=32, out_dim=1, depth=3, target_params=10000, bias=True)  # `base`: [62, 62, 62]
@example(in_dim=1, out_dim=1, depth=1, target_params=1, bias=False)  # below every count: width 1
@example(in_dim=1, out_dim=1, depth=1, target_params=4, bias=False)  # 2h = 4: exactly h = 2
@example(in_dim=1, out_dim=1, depth=1, target_params=5, bias=False)  # 4 and 6 tie: the narrower
@example(in_dim=2, out_dim=1, depth=2, target_params=2**53 - 1, bias=True)  # past 4096: capped
def test_closed_form_equals_brute_force(in_dim, out_dim, depth, target_params, bias):
    _assert_same(in_dim, out_dim, depth, target_params, bias)


def _assert_same(*args) -> None:
    assert widths_for_target_params(*args) == brute_force_widths(*args), args


@pytest.mark.slow
@settings(max_examples=3000, derandomize=True, database=None, deadline=None)
@given(**same_args)
def test_closed_form_equals_brute_force_many(in_dim, out_dim, depth, target_params, bias):
    _assert_same(in_dim, out_dim, depth, target_params, bias)


def test_every_target_near_exact_counts_matches():
    # Ties and off-by-one errors live next to the exact counts: sweep every target around them.
    for in_dim, out_dim, depth, bias in [(4, 1, 2, True), (3, 2, 3, False), (1, 1, 1, True), (5, 7, 1, False)]:
        for h in range(1, 20):
            count = (depth - 1) * h * h + (in_dim + out_dim + depth * bias) * h + out_dim * bias
            for target in range(max(1, count - 2), count + 3):
                exact = widths_for_target_params(in_dim, out_dim, depth, target, bias)
                assert exact == brute_force_widths(in_dim, out_dim, depth, target, bias), (in_dim, out_dim, depth, bias, target)


def test_resolution_takes_microseconds():
    start = time.perf_counter()
    for target in range(1, 1001):
        widths_for_target_params(32, 1, 3, target * 1000, True)
    per_call = (time.perf_counter() - start) / 1000
    assert per_call < 1e-3, f"{per_call * 1e6:.0f} µs per resolution"  # brute force: ~5 ms
    assert widths_for_target_params(2, 1, 2, 2**53 - 1, True) == [TARGET_PARAMS_MAX_WIDTH] * 2
