"""Run the benchmark and print latencies, throughput and the ratios against the targets.

    python -m bench.run [--quick] [--only W1,W3] [--targets sqlite,postgres,redis] [--json out.json]

Every workload runs in rounds; each round visits the targets in a new random order, so a machine
that drifts (another process, thermal limits) hurts all targets alike. The PostgreSQL targets get
a database of their own, created for the run and dropped at the end; the Redis targets share db 0
under keys that carry the run's tag, deleted at the end.

Exit status: 1 when a target lost, reordered or misreturned an item, or raised; timing never
fails the run (``--quick`` is the smoke run CI executes).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import random
import secrets
import sqlite3
import statistics
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from time import perf_counter_ns
from typing import Any

import orjson
from redis.utils import HIREDIS_AVAILABLE

from bench.targets import COMPARISONS, AgentmemEncrypted, Env, Target, all_targets
from bench.workloads import FULL, QUICK, WORKLOADS, ItemCache, Recorder, Sizes, Workload

POSTGRES_URL = os.environ.get(
    "AGENTMEM_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("AGENTMEM_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
FAMILIES = ("sqlite", "postgres", "redis")

SDK_RATIO_TARGET = 0.5  # agentmem at least 2x faster than the SDK's session (p50) ...
# ... wherever the floor itself is (floor/SDK <= 0.5); elsewhere no implementation can be.
FLOOR_RATIO_TARGET = 1.2  # agentmem within 1.2x of the raw-driver floor (p50)
SCALING_TARGET = 1.2  # W8: newest 20 at 100,000 items within 1.2x of at 1,000


@dataclass(frozen=True)
class OpStats:
    n: int
    p50_us: float
    p99_us: float
    ops_per_s: float
    # Per round (None: none in that round): the p50 (µs), and the wall time per operation (µs)
    # as ops_per_s counts it.
    round_p50_us: tuple[float | None, ...] = ()
    round_wall_us: tuple[float | None, ...] = ()


def _percentile(ordered: list[int], q: float) -> float:
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)] / 1_000


def _wall_ns(latencies: dict[str, list[int]], op: str, wall_ns: int) -> float:
    """The share of ``wall_ns`` that ``op`` takes: its share of the measured latency (for one
    operation, all of it)."""
    total_ns = sum(sum(lat) for lat in latencies.values()) or 1
    return wall_ns * sum(latencies[op]) / total_ns


def summarize(rec: Recorder) -> dict[str, OpStats]:
    """Percentiles per operation, over all rounds and per round; ops/s divides the wall time
    between operations by their share of the measured latency (for one operation it is simply
    ops / wall time)."""
    stats = {}
    rounds = rec.rounds()
    for op, lat in rec.latencies.items():
        if not lat:
            continue
        ordered = sorted(lat)
        wall_s = _wall_ns(rec.latencies, op, rec.wall_ns) / 1e9
        p50s: list[float | None] = []
        walls: list[float | None] = []
        for ops, wall in rounds:
            part = ops.get(op)
            p50s.append(_percentile(sorted(part), 0.5) if part else None)
            walls.append(_wall_ns(ops, op, wall) / len(part) / 1_000 if part else None)
        stats[op] = OpStats(
            len(lat),
            _percentile(ordered, 0.5),
            _percentile(ordered, 0.99),
            len(lat) / wall_s,
            tuple(p50s),
            tuple(walls),
        )
    return stats


@asynccontextmanager
async def environment(tag: str, families: set[str]) -> AsyncIterator[Env]:
    """A scratch directory, the run's PostgreSQL database and Redis key space; removed after."""
    import asyncpg
    import redis.asyncio as redis

    with tempfile.TemporaryDirectory(prefix=f"{tag}-") as workdir:
        postgres_url = POSTGRES_URL
        admin = None
        if "postgres" in families:
            admin = await asyncpg.connect(POSTGRES_URL)
            await admin.execute(f'CREATE DATABASE "{tag}"')
            postgres_url = POSTGRES_URL.rsplit("/", 1)[0] + f"/{tag}"
        try:
            yield Env(tag, Path(workdir), postgres_url, REDIS_URL)
        finally:
            if admin is not None:
                await admin.execute(f'DROP DATABASE IF EXISTS "{tag}" WITH (FORCE)')
                await admin.close()
            if families & {"redis", "postgres"}:  # the cached target (postgres) uses Redis too
                client = redis.Redis.from_url(REDIS_URL)
                async for key in client.scan_iter(match=f"*{tag}*", count=1_000):
                    await client.unlink(key)
                await client.aclose()


def missing_parts() -> list[str]:
    """What the issue asks to measure that this run does not, said out loud."""
    notes = []
    notes.append(
        "W9 (find_sessions pages at 10,000 and 1,000,000 sessions, purge_expired throughput) "
        "runs on its own, with stores generated in bulk: python -m bench.lifecycle [--quick]"
    )
    return notes


async def start_targets(targets: list[Target], env: Env) -> list[Target]:
    """Start every target; one whose implementation cannot be imported is skipped, with a note."""
    started = []
    for target in targets:
        try:
            await target.start(env)
        except ImportError as exc:
            print(f"note: {target.name} skipped, not available: {exc}")
            continue
        started.append(target)
    return started


@dataclass
class WorkloadResult:
    stats: dict[str, dict[str, OpStats]]  # target -> op -> stats
    problems: dict[str, list[str]]  # target -> what went wrong


async def run_workload(
    workload: Workload, targets: list[Target], sizes: Sizes, tag: str
) -> WorkloadResult:
    items = ItemCache()
    runs = {t: workload.run(t, sizes, f"{tag}-{workload.key}", items) for t in targets}
    recorders = {t: Recorder() for t in targets}
    errors: dict[Target, str] = {}

    async def guarded(target: Target, step: Any) -> None:
        if target in errors:
            return
        try:
            await step
        except Exception as exc:
            errors[target] = f"raised {type(exc).__name__}: {exc}"

    for target, run in runs.items():
        await guarded(target, run.setup())
    for index in range(sizes.rounds):
        for target in random.sample(targets, len(targets)):
            start = perf_counter_ns()
            await guarded(target, runs[target].run_round(index, recorders[target]))
            recorders[target].end_round(perf_counter_ns() - start)
    for target, run in runs.items():
        await guarded(target, run.verify())
        await guarded(target, run.teardown())

    problems = {}
    for target, run in runs.items():
        found = run.problems + ([errors[target]] if target in errors else [])
        if found:
            problems[target.name] = found
    return WorkloadResult({t.name: summarize(recorders[t]) for t in targets}, problems)


# --- report ------------------------------------------------------------------------------------

KIND_ORDER = {"agentmem": 0, "sdk": 1, "floor": 2, "bound": 3}


def print_workload(workload: Workload, result: WorkloadResult, targets: list[Target]) -> None:
    print(f"\n{workload.key}  {workload.title}")
    print(f"  {'target':<28}{'operation':<16}{'n':>7}{'p50 µs':>11}{'p99 µs':>11}{'ops/s':>10}")
    for target in sorted(targets, key=lambda t: (t.backend, KIND_ORDER[t.kind])):
        for op, s in result.stats.get(target.name, {}).items():
            print(
                f"  {target.name:<28}{op:<16}{s.n:>7}{s.p50_us:>11.1f}{s.p99_us:>11.1f}"
                f"{s.ops_per_s:>10,.0f}"
            )
    for name, found in result.problems.items():
        print(f"  PROBLEM {name}: {len(found)} wrong: " + "; ".join(found[:3]))


@dataclass(frozen=True)
class Ratio:
    """The compared values (µs) of one operation on one backend: p50 latency, or for a
    concurrent workload the wall time per operation (1 / ops/s); and the p99 latencies."""

    workload: str
    op: str
    backend: str
    agentmem_us: float
    sdk_us: float | None
    floor_us: float | None
    agentmem_p99_us: float
    sdk_p99_us: float | None
    floor_p99_us: float | None
    bound_us: float | None = None
    bound_p99_us: float | None = None
    # The compared values per round (None: none in that round), for the paired ratios.
    agentmem_rounds: tuple[float | None, ...] = ()
    floor_rounds: tuple[float | None, ...] = ()
    bound_rounds: tuple[float | None, ...] = ()

    @property
    def vs_sdk(self) -> float | None:
        return None if self.sdk_us is None else self.agentmem_us / self.sdk_us

    @property
    def vs_floor(self) -> float | None:
        return None if self.floor_us is None else self.agentmem_us / self.floor_us

    @property
    def vs_bound(self) -> float | None:
        return None if self.bound_us is None else self.agentmem_us / self.bound_us

    @property
    def paired_vs_floor(self) -> float | None:
        """The median over rounds of agentmem/floor within each round (unjudged): a round of
        every target takes seconds, so a host that slows down for a while slows both sides."""
        return _paired(self.agentmem_rounds, self.floor_rounds)

    @property
    def paired_vs_bound(self) -> float | None:
        """The median over rounds of agentmem/bound within each round (unjudged)."""
        return _paired(self.agentmem_rounds, self.bound_rounds)

    @property
    def paired_off(self) -> bool:
        """Whether the paired ratios miss the floor's target as the judged ones would: off the
        floor and off the bound (unjudged; the SDK target aside)."""
        floor, bound = self.paired_vs_floor, self.paired_vs_bound
        if floor is None or floor <= FLOOR_RATIO_TARGET:
            return False
        return bound is None or bound > FLOOR_RATIO_TARGET

    @property
    def bound_vs_floor(self) -> float | None:
        """What agentmem's inner work (statements, schema, validation) and a caller's pool
        cost over the floor's one bare row."""
        if self.bound_us is None or self.floor_us is None:
            return None
        return self.bound_us / self.floor_us

    @property
    def floor_vs_sdk(self) -> float | None:
        """The best agentmem/SDK ratio the floor allows."""
        if self.floor_us is None or self.sdk_us is None:
            return None
        return self.floor_us / self.sdk_us

    @property
    def vs_sdk_p99(self) -> float | None:
        return None if self.sdk_p99_us is None else self.agentmem_p99_us / self.sdk_p99_us

    @property
    def vs_floor_p99(self) -> float | None:
        return None if self.floor_p99_us is None else self.agentmem_p99_us / self.floor_p99_us

    @property
    def sdk_judged(self) -> bool:
        """Whether the SDK target applies: the floor itself is at least 2x faster than the SDK."""
        best = self.floor_vs_sdk
        return best is None or best <= SDK_RATIO_TARGET

    @property
    def vs_bound_p99(self) -> float | None:
        return None if self.bound_p99_us is None else self.agentmem_p99_us / self.bound_p99_us

    @property
    def judged(self) -> bool:
        """Whether the pair has a floor to be judged against (W10 has none)."""
        return self.floor_us is not None

    @property
    def off_floor(self) -> bool:
        """Whether agentmem/floor is over its target."""
        return self.vs_floor is not None and self.vs_floor > FLOOR_RATIO_TARGET

    @property
    def at_bound(self) -> bool:
        """Off the floor's target but within it of the bound: the rest is what agentmem's inner
        work (statements, schema, validation) and a caller's pool cost."""
        return self.off_floor and self.vs_bound is not None and self.vs_bound <= FLOOR_RATIO_TARGET

    @property
    def misses(self) -> list[str]:
        """The targets this pair is off (p50): the floor's unless it is at its bound."""
        found = []
        if self.off_floor and not self.at_bound:
            found.append("floor")
        if self.sdk_judged and self.vs_sdk is not None and self.vs_sdk > SDK_RATIO_TARGET:
            found.append("SDK")
        return found


def _paired(ours: tuple[float | None, ...], theirs: tuple[float | None, ...]) -> float | None:
    """The median of ours/theirs over the rounds where both have a value."""
    pairs = [a / b for a, b in zip(ours, theirs, strict=False) if a is not None and b]
    return statistics.median(pairs) if pairs else None


def _rounds(stats: OpStats | None, throughput: bool) -> tuple[float | None, ...]:
    if stats is None:
        return ()
    return stats.round_wall_us if throughput else stats.round_p50_us


def _compared(stats: OpStats | None, throughput: bool) -> float | None:
    if stats is None:
        return None
    return 1e6 / stats.ops_per_s if throughput else stats.p50_us


def _p99(stats: OpStats | None) -> float | None:
    return None if stats is None else stats.p99_us


def ratios(workloads: list[Workload], results: dict[str, WorkloadResult]) -> list[Ratio]:
    rows = []
    for workload in workloads:
        stats, by_wall = results[workload.key].stats, workload.compare_throughput
        for backend, (sdk, floor, bound) in COMPARISONS.items():
            for op, ours in stats.get(f"agentmem/{backend}", {}).items():
                value = _compared(ours, by_wall)
                assert value is not None
                theirs, bare = stats.get(sdk, {}).get(op), stats.get(floor, {}).get(op)
                same_work = stats.get(bound, {}).get(op)
                rows.append(
                    Ratio(
                        workload.key,
                        op + (" (wall)" if by_wall else ""),
                        backend,
                        value,
                        _compared(theirs, by_wall),
                        _compared(bare, by_wall),
                        ours.p99_us,
                        _p99(theirs),
                        _p99(bare),
                        _compared(same_work, by_wall),
                        _p99(same_work),
                        _rounds(ours, by_wall),
                        _rounds(bare, by_wall),
                        _rounds(same_work, by_wall),
                    )
                )
    return rows


def _verdict(value: float | None, limit: float, judged: bool = True) -> str:
    if value is None:
        return f"{'-':>7} {'':<4}"
    verdict = ("PASS" if value <= limit else "MISS") if judged else "n/a"
    return f"{value:>7.2f} {verdict:<4}"


def _ratio(value: float | None) -> str:
    return f"{'-':>8}" if value is None else f"{value:>8.2f}"


def _us(value: float | None) -> str:
    return f"{'-':>10}" if value is None else f"{value:>10.1f}"


def print_ratios(rows: list[Ratio]) -> None:
    print(
        f"\nRatios of p50 latency (W6: of wall time per turn): agentmem/floor must be <= "
        f"{FLOOR_RATIO_TARGET}; agentmem/SDK <= {SDK_RATIO_TARGET} wherever the floor allows it "
        f"(floor/SDK <= {SDK_RATIO_TARGET}; elsewhere n/a). The p99 columns give the same "
        "ratios of p99 latency, unjudged. The bound does agentmem's inner work (its validation, "
        "statements or scripts, schema) straight through the driver: a pair off the floor but "
        f"within {FLOOR_RATIO_TARGET}x of its bound is AT its bound (bound/floor: what that "
        "inner work and a caller's pool cost). The paired columns, unjudged: the median over "
        "rounds of the same ratios taken within each round"
    )
    print(
        f"  {'wl':<4}{'operation':<17}{'backend':<19}{'agentmem':>10}{'SDK':>10}"
        f"{'am/SDK':>8}      {'floor':>10}{'am/floor':>9}      {'bound':>10}{'am/bound':>9}"
        f"      {'bound/floor':>11}{'floor/SDK':>10}{'p99 am/SDK':>11}{'am/floor':>9}"
        f"{'am/bound':>9}{'paired am/floor':>16}{'am/bound':>9}"
    )
    for r in rows:
        best = "-" if r.floor_vs_sdk is None else f"{r.floor_vs_sdk:.2f}"
        floor_verdict = _verdict(r.vs_floor, FLOOR_RATIO_TARGET)
        if r.at_bound:
            floor_verdict = f"{r.vs_floor:>7.2f} {'AT':<4}"
        bound_verdict = _verdict(r.vs_bound, FLOOR_RATIO_TARGET, r.off_floor)
        print(
            f"  {r.workload:<4}{r.op:<17}{r.backend:<19}{_us(r.agentmem_us)}"
            f"{_us(r.sdk_us)}{_verdict(r.vs_sdk, SDK_RATIO_TARGET, r.sdk_judged)} "
            f"{_us(r.floor_us)} {floor_verdict} {_us(r.bound_us)} {bound_verdict} "
            f"{_ratio(r.bound_vs_floor):>11}{best:>10}"
            f"{_ratio(r.vs_sdk_p99):>11}{_ratio(r.vs_floor_p99):>9}{_ratio(r.vs_bound_p99):>9}"
            f"{_ratio(r.paired_vs_floor):>16}{_ratio(r.paired_vs_bound):>9}"
        )
    judged = [r for r in rows if r.judged]
    bounded = [r for r in judged if r.at_bound]
    print(
        f"\nAt the bound (off the floor by bound/floor, within {FLOOR_RATIO_TARGET}x of the "
        f"bound): {len(bounded)} of {len(judged)} judged pairs"
    )
    for r in bounded:
        also = "  (and off the SDK target)" if r.misses else ""
        print(
            f"  {r.workload:<4}{r.op:<17}{r.backend:<19}am/floor {r.vs_floor:.2f} = "
            f"am/bound {r.vs_bound:.2f} x bound/floor {r.bound_vs_floor:.2f}{also}"
        )
    off = [r for r in judged if r.misses]
    print(f"\nOff target (p50): {len(off)} of {len(judged)} judged pairs")
    for r in off:
        print(f"  {r.workload:<4}{r.op:<17}{r.backend:<19}{' and '.join(r.misses)}")
    paired_off = [r for r in judged if r.paired_off]
    print(
        f"\nOff the floor's target and the bound's on the paired ratios (the median over rounds "
        f"of each round's ratio; unjudged): {len(paired_off)} of {len(judged)} judged pairs"
    )
    for r in paired_off:
        print(
            f"  {r.workload:<4}{r.op:<17}{r.backend:<19}am/floor {r.paired_vs_floor:.2f}, "
            f"am/bound {_ratio(r.paired_vs_bound).strip()}"
        )


def print_parsers(results: dict[str, WorkloadResult]) -> None:
    """The Redis floor with hiredis's reply parser and with redis-py's pure-Python one, and
    agentmem's Redis session against each (p50 µs)."""
    lines = []
    for key, result in results.items():
        ours = result.stats.get("agentmem/redis", {})
        fast = result.stats.get("floor/redis", {})
        slow = result.stats.get("floor/redis-pyparser", {})
        for op in slow:
            if op in fast and op in ours:
                lines.append(
                    f"  {key:<4}{op:<17}{fast[op].p50_us:>10.1f}{slow[op].p50_us:>12.1f}"
                    f"{ours[op].p50_us:>10.1f}{ours[op].p50_us / fast[op].p50_us:>10.2f}"
                    f"{ours[op].p50_us / slow[op].p50_us:>10.2f}"
                )
    if lines:
        print("\nThe Redis floor by reply parser (p50 µs): hiredis, pure Python; agentmem/redis")
        print(
            f"  {'wl':<4}{'operation':<17}{'hiredis':>10}{'pure Python':>12}{'agentmem':>10}"
            f"{'/hiredis':>10}{'/python':>10}"
        )
        print("\n".join(lines))


def print_lock_cost(turn: WorkloadResult, locked: WorkloadResult) -> None:
    """What ``exclusive()`` adds to a turn: W10's p50 minus W5's, per agentmem backend."""
    print("\nThe lock's cost (exclusive(), uncontended): p50 of W10 minus p50 of W5")
    for name, ops in sorted(locked.stats.items()):
        plain = turn.stats.get(name, {}).get("turn")
        if plain is not None and "turn" in ops:
            under = ops["turn"].p50_us
            extra = under - plain.p50_us
            print(f"  {name:<28}{plain.p50_us:>10.1f} -> {under:>10.1f} µs ({extra:+.1f})")


def print_cache_gain(results: dict[str, WorkloadResult]) -> None:
    """What the Redis cache buys: its reads against PostgreSQL alone, measured in the same run."""
    lines = []
    for key, result in results.items():
        cached = result.stats.get("agentmem/cached", {})
        sql = result.stats.get("agentmem/postgres", {})
        for op in cached:
            if op.startswith("get") and op in sql:
                gain = sql[op].p50_us / cached[op].p50_us
                lines.append(
                    f"  {key:<4}{op:<22}{sql[op].p50_us:>12.1f}{cached[op].p50_us:>12.1f}"
                    f"{gain:>9.2f}x"
                )
    if lines:
        print("\nCachedSession reads vs PostgreSQL alone (p50 µs; >1x: the cache is faster)")
        print(f"  {'wl':<4}{'operation':<22}{'postgres':>12}{'cached':>12}{'speed-up':>10}")
        print("\n".join(lines))


def print_encryption_overhead(results: dict[str, WorkloadResult]) -> None:
    """What EncryptedSession costs: each operation against the same backend unencrypted,
    measured in the same run."""
    lines = []
    for key, result in results.items():
        for backend in AgentmemEncrypted.INNER_BACKENDS:
            plain = result.stats.get(f"agentmem/{backend}", {})
            encrypted = result.stats.get(f"agentmem/enc-{backend}", {})
            for op in encrypted:
                if op in plain:
                    extra = encrypted[op].p50_us - plain[op].p50_us
                    lines.append(
                        f"  {key:<4}{op:<22}{backend:<13}{plain[op].p50_us:>10.1f}"
                        f"{encrypted[op].p50_us:>11.1f}{extra:>+10.1f}"
                        f"{encrypted[op].p50_us / plain[op].p50_us:>8.2f}x"
                    )
    if lines:
        print("\nEncryptedSession vs the same backend unencrypted (p50 µs)")
        print(
            f"  {'wl':<4}{'operation':<22}{'backend':<13}{'plain':>10}{'encrypted':>11}"
            f"{'extra':>10}{'ratio':>9}"
        )
        print("\n".join(lines))


def scaling(result: WorkloadResult, sizes: Sizes) -> dict[str, float]:
    small, large = f"get 20 @{sizes.w8_small:,}", f"get 20 @{sizes.w8_large:,}"
    return {
        name: ops[large].p50_us / ops[small].p50_us
        for name, ops in result.stats.items()
        if small in ops and large in ops
    }


def print_scaling(by_target: dict[str, float], sizes: Sizes, judge: bool) -> None:
    print(
        f"\nW8 scaling: p50 of newest 20 at {sizes.w8_large:,} items / at {sizes.w8_small:,}"
        + (f" (agentmem must be <= {SCALING_TARGET})" if judge else "")
    )
    for name, value in sorted(by_target.items()):
        verdict = ""
        if judge and name.startswith("agentmem/"):
            verdict = "PASS" if value <= SCALING_TARGET else "MISS"
        print(f"  {name:<28}{value:>7.2f} {verdict}")


# --- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small counts, no targets")
    parser.add_argument("--only", help="comma-separated workloads, e.g. W1,W3")
    parser.add_argument(
        "--targets", default=",".join(FAMILIES), help="comma-separated: sqlite,postgres,redis"
    )
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args(argv)
    known = {w.key for w in WORKLOADS}
    args.only = {w.strip().upper() for w in args.only.split(",")} if args.only else known
    args.targets = {f.strip() for f in args.targets.split(",")}
    if not args.only <= known or not args.targets <= set(FAMILIES):
        parser.error(f"workloads are {sorted(known)}; target families are {list(FAMILIES)}")
    return args


async def bench(args: argparse.Namespace) -> int:
    sizes = QUICK if args.quick else FULL
    tag = f"agentmem_bench_{secrets.token_hex(4)}"
    workloads = [w for w in WORKLOADS if w.key in args.only]
    print(
        f"agentmem bench{' --quick' if args.quick else ''}: {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
        f"Redis replies parsed by {'hiredis' if HIREDIS_AVAILABLE else 'pure Python'}, run {tag}"
    )
    for note in missing_parts():
        print(f"note: {note}")
    results: dict[str, WorkloadResult] = {}
    async with environment(tag, args.targets) as env:
        targets = [t for t in all_targets() if t.family in args.targets]
        targets = await start_targets(targets, env)
        try:
            for workload in workloads:
                start = perf_counter_ns()
                runs_on = [t for t in targets if t.kind == "agentmem" or not workload.agentmem_only]
                results[workload.key] = await run_workload(workload, runs_on, sizes, tag)
                print_workload(workload, results[workload.key], runs_on)
                print(f"  ({(perf_counter_ns() - start) / 1e9:.1f} s with setup and checks)")
        finally:
            for target in targets:
                await target.stop()

    rows = [] if args.quick else ratios(workloads, results)
    if rows:
        print_ratios(rows)
        print_parsers(results)
        print_cache_gain(results)
        print_encryption_overhead(results)
    if "W5" in results and "W10" in results:
        print_lock_cost(results["W5"], results["W10"])
    w8 = scaling(results["W8"], sizes) if "W8" in results else {}
    if w8:
        print_scaling(w8, sizes, judge=not args.quick)
    problems = {key: r.problems for key, r in results.items() if r.problems}
    if args.json:
        document = {
            "run": tag,
            "quick": args.quick,
            "sizes": asdict(sizes),
            "targets": [t.name for t in targets],
            "stats": {
                key: {
                    name: {op: asdict(s) for op, s in ops.items()} for name, ops in r.stats.items()
                }
                for key, r in results.items()
            },
            "ratios": [
                asdict(r)
                | {
                    "vs_sdk": r.vs_sdk,
                    "vs_floor": r.vs_floor,
                    "vs_sdk_p99": r.vs_sdk_p99,
                    "vs_floor_p99": r.vs_floor_p99,
                    "vs_bound": r.vs_bound,
                    "vs_bound_p99": r.vs_bound_p99,
                    "bound_vs_floor": r.bound_vs_floor,
                    "at_bound": r.at_bound,
                    "sdk_judged": r.sdk_judged,
                    "misses": r.misses,
                    "paired_vs_floor": r.paired_vs_floor,
                    "paired_vs_bound": r.paired_vs_bound,
                    "paired_off": r.paired_off,
                }
                for r in rows
            ],
            "w8_scaling": w8,
            "problems": problems,
        }
        args.json.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    if problems:
        print("\nFAILED: items lost, reordered or misreturned, or errors (see PROBLEM lines)")
        return 1
    print("\nOK: every read returned exactly what was written, on every target")
    return 0


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(bench(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
