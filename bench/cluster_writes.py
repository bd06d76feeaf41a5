"""The cost of the lifecycle's indexes on Redis Cluster: ``add_items`` of one item, p50, on a
private 3-primary cluster that it starts (tests/_cluster.py: needs ``redis-server``), for a
session without an owner and one with.

    python -m bench.cluster_writes [--calls N] [--rounds N]

A write's script runs on the session's slot and returns the index update, which the client
applies on the indexes' slots (README "Redis Cluster"): one more round trip without an owner,
two sent together with one.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

from tests._cluster import Cluster


async def p50(url: str, owner: str | None, calls: int) -> float:
    """The median ``add_items`` latency (µs) of one session, ``calls`` writes."""
    from agentmem import RedisSessionManager

    tag = f"agentmem-cw-{uuid.uuid4().hex[:8]}"
    async with RedisSessionManager(
        url, session_prefix=f"{tag}:session", messages_prefix=f"{tag}:messages"
    ) as manager:
        session = manager.get_session("one", user_id=owner)
        await session.add_items([{"n": 0}])
        samples = []
        for n in range(calls):
            start = time.perf_counter_ns()
            await session.add_items([{"n": n}])
            samples.append((time.perf_counter_ns() - start) / 1_000)
        await session.clear_session()
    return statistics.median(samples)


async def measure(url: str, calls: int, rounds: int, owners: bool) -> None:
    for number in range(rounds):
        line = f"  round {number + 1}: no owner {await p50(url, None, calls):7.0f} µs"
        if owners:
            line += f"  with an owner {await p50(url, 'user', calls):7.0f} µs"
        print(line, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster_writes")
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--no-owners", action="store_true", help="only ownerless sessions (code without owners)"
    )
    args = parser.parse_args()
    cluster = Cluster()
    cluster.start()
    try:
        url = str(cluster.url).replace("redis://", "redis+cluster://", 1)
        print(f"add_items of one item on a Redis Cluster, p50 of {args.calls} calls")
        asyncio.run(measure(url, args.calls, args.rounds, not args.no_owners))
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
