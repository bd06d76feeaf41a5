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


def paired(
    agentmem: tuple[float | None, ...],
    floor: tuple[float | None, ...],
    bound: tuple[float | None, ...] = (),
) -> Ratio:
    return Ratio(
        "W1", "add 1", "postgres", 1.0, None, 1.0, 1.0, None, 1.0, 1.0, 1.0,
        agentmem, floor, bound,
    )  # fmt: skip


def test_the_paired_ratio_is_the_median_of_each_rounds_ratio() -> None:
    # Round 3 ran slowly for agentmem only: it moves the median to the next round's ratio, not
    # by its own 4x, as it would move a mean.
    ratio = paired((110.0, 100.0, 400.0), (100.0, 100.0, 100.0))
    assert ratio.paired_vs_floor == 1.1
    assert not ratio.paired_off


def test_the_paired_ratio_skips_rounds_that_one_side_lacks() -> None:
    ratio = paired((130.0, None, 150.0), (100.0, 100.0, None), (100.0, 100.0, 100.0))
    assert ratio.paired_vs_floor == 1.3  # only round 1 has both
    assert ratio.paired_vs_bound == 1.4  # the median of 1.3 and 1.5
    assert ratio.paired_off


def test_paired_ratios_off_the_floor_but_at_the_bound_are_not_off() -> None:
    ratio = paired((150.0, 150.0), (100.0, 100.0), (140.0, 130.0))
    assert ratio.paired_off is False


def test_a_recorder_splits_its_latencies_by_round() -> None:
    from bench.run import summarize
    from bench.workloads import Recorder

    rec = Recorder()
    rec.op("add").extend([1_000, 3_000])
    rec.end_round(10_000)
    rec.op("get").append(5_000)
    rec.end_round(20_000)
    assert rec.rounds() == [
        ({"add": [1_000, 3_000]}, 10_000),
        ({"add": [], "get": [5_000]}, 20_000),
    ]
    stats = summarize(rec)
    assert stats["add"].round_p50_us == (1.0, None)
    assert stats["add"].round_wall_us == (5.0, None)  # 10 µs over two adds
    assert stats["get"].round_p50_us == (None, 5.0)
    assert stats["get"].round_wall_us == (None, 20.0)


def test_ratios_pair_each_round_of_agentmem_with_its_floor_and_bound() -> None:
    from types import SimpleNamespace

    from bench.run import OpStats, WorkloadResult, ratios

    def stats(p50s: tuple[float, ...], walls: tuple[float, ...]) -> dict[str, OpStats]:
        return {"turn": OpStats(2, 1.0, 1.0, 1.0, p50s, walls)}

    result = WorkloadResult(
        {
            "agentmem/redis": stats((900.0, 900.0), (150.0, 150.0)),
            "floor/redis": stats((300.0, 300.0), (100.0, 100.0)),
            "bound/redis": stats((600.0, 600.0), (120.0, 120.0)),
        },
        {},
    )
    by_latency = SimpleNamespace(key="W5", compare_throughput=False)
    by_wall = SimpleNamespace(key="W6", compare_throughput=True)
    [latency] = ratios([by_latency], {"W5": result})  # type: ignore[list-item]
    assert (latency.paired_vs_floor, latency.paired_vs_bound) == (3.0, 1.5)
    [wall] = ratios([by_wall], {"W6": result})  # type: ignore[list-item]
    assert (wall.paired_vs_floor, wall.paired_vs_bound) == (1.5, 1.25)
