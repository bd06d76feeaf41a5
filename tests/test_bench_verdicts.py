"""The benchmark's verdict on a pair (bench/run.py ``Ratio``): on the floor's target, at its
bound, or off target; and which pairs are judged at all."""

from __future__ import annotations

from bench.run import Ratio


def pair(agentmem: float, floor: float | None, bound: float | None, sdk: float = 10_000.0) -> Ratio:
    return Ratio(
        "W1", "add 1", "postgres", agentmem, sdk, floor, agentmem, sdk, floor, bound, bound
    )


def test_within_the_floors_target_passes_whatever_the_bound() -> None:
    ratio = pair(120.0, 100.0, 50.0)
    assert not ratio.at_bound
    assert ratio.misses == []


def test_off_the_floor_but_within_the_bounds_target_is_at_the_bound() -> None:
    ratio = pair(180.0, 100.0, 150.0)
    assert ratio.vs_floor == 1.8
    assert ratio.vs_bound == 1.2
    assert ratio.bound_vs_floor == 1.5
    assert ratio.at_bound
    assert ratio.misses == []


def test_off_the_floor_and_off_the_bound_misses_the_floor() -> None:
    ratio = pair(181.0, 100.0, 150.0)
    assert not ratio.at_bound
    assert ratio.misses == ["floor"]


def test_without_a_bound_off_the_floor_misses_it() -> None:
    ratio = pair(130.0, 100.0, None)
    assert ratio.vs_bound is None
    assert not ratio.at_bound
    assert ratio.misses == ["floor"]


def test_a_pair_at_its_bound_is_still_held_to_the_sdk_target() -> None:
    ratio = pair(180.0, 100.0, 150.0, sdk=300.0)
    assert ratio.at_bound
    assert ratio.sdk_judged  # the floor is 3x faster than the SDK's session
    assert ratio.misses == ["SDK"]


def test_a_pair_without_a_floor_is_not_judged() -> None:
    ratio = pair(180.0, None, None)
    assert not ratio.judged
    assert not ratio.at_bound
    assert ratio.misses == []
