"""The cached mode's writes, round trip by round trip: what a write costs against its parts.

    python -m bench.cached_writes [--rounds 5] [--n 200] [--against FILE]

In one process, in interleaved rounds (each round visits the targets in a new random order):

- ``redis rtt``: one ``EVALSHA`` of a script that returns 1 (the cost of one cache round trip);
- ``floor/postgres``: the benchmark's PostgreSQL floor (one statement per operation);
- ``agentmem/postgres``: ``SQLAlchemySession`` alone;
- ``postgres + redis rtt``: the bound of a cached write, composed: one ``EVALSHA`` of that
  script, then ``SQLAlchemySession``'s operation (for a turn: its read, the round trip, its add);
- ``cached (end awaited)``: ``CachedSession`` that awaits each write's end before returning:
  *begin*, SQL, *end*, three sequential round trips, the protocol before ends were owed;
- ``cached``: ``CachedSession`` as it ships: *begin* (carrying the previous write's end), SQL;
- ``cached (against)``, with ``--against FILE``: the ``CachedSession`` of another version of
  ``agentmem/cache/session.py`` (``git show REV:agentmem/cache/session.py > FILE``), to compare
  a change before and after in one process.

Operations: add 1 item (W1), pop (W7), a turn (read all, add 4: W5). Prints p50 and p99 in µs,
each p50's ratio to the PostgreSQL floor's, and the p50 of the CPU time the benchmark's thread
spent per operation (``time.thread_time``: the client's own work, less noisy than the wall
time on a shared machine).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import random
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from bench.run import environment
from bench.targets import POSTGRES_POOL_SIZE, REDIS_POOL_SIZE, PostgresFloor

ITEM = {"role": "user", "content": "hello there, how are you today?"}


def _cached_class_from(path: str) -> type[Any]:
    """The ``CachedSession`` of the module file at ``path``."""
    spec = importlib.util.spec_from_file_location("bench_cached_against", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    cls: type[Any] = module.CachedSession
    return cls


def _cached_classes() -> tuple[type[Any], type[Any]]:
    from agentmem import CachedSession

    class EndAwaited(CachedSession):
        """Each write returns once its end is delivered (three sequential round trips)."""

        async def _write(self, write: Any, op: str, payload: list[Any]) -> Any:
            result = await super()._write(write, op, payload)
            await self._deliver_ends()
            return result

    return CachedSession, EndAwaited


async def main(rounds: int, n: int, against: str | None = None) -> None:
    import redis.asyncio as redis
    from sqlalchemy.ext.asyncio import create_async_engine

    from agentmem import SQLAlchemySession

    tag = f"agentmem_cw_{uuid.uuid4().hex[:8]}"
    async with environment(tag, {"postgres", "redis"}) as env:
        url = env.postgres_url.replace("postgresql://", "postgresql+asyncpg://", 1)
        engine = create_async_engine(url, pool_size=POSTGRES_POOL_SIZE, max_overflow=0)
        pool = redis.BlockingConnectionPool.from_url(env.redis_url, max_connections=REDIS_POOL_SIZE)
        client = redis.Redis(connection_pool=pool)
        floor = PostgresFloor()
        await floor.start(env)
        cached_cls, awaited_cls = _cached_classes()
        prefix = f"{tag}:cache"

        def sql(sid: str) -> Any:
            return SQLAlchemySession(engine, sid, create_tables=True)

        sessions: dict[str, Any] = {
            "agentmem/postgres": sql(f"{tag}-pg"),
            "cached (end awaited)": awaited_cls(sql(f"{tag}-aw"), client=client, key_prefix=prefix),
            "cached": cached_cls(sql(f"{tag}-c"), client=client, key_prefix=prefix),
        }
        if against is not None:
            sessions["cached (against)"] = _cached_class_from(against)(
                sql(f"{tag}-a"), client=client, key_prefix=f"{prefix}-a"
            )
        for session in sessions.values():  # warm: tables, statements, scripts
            await session.add_items([ITEM])
            await session.get_items()
            await session.pop_item()
        sha = await client.script_load("return 1")

        async def rtt() -> None:
            await client.evalsha(sha, 0)

        bare = sessions["agentmem/postgres"]

        async def bound_add() -> None:
            await rtt()
            await bare.add_items([ITEM])

        async def bound_pop() -> None:
            await rtt()
            await bare.pop_item()

        async def bound_turn() -> None:
            await bare.get_items()
            await rtt()
            await bare.add_items([ITEM, ITEM, ITEM, ITEM])

        def ops(name: str) -> dict[str, Callable[[], Awaitable[Any]]]:
            if name == "floor/postgres":
                sid = f"{tag}-floor"
                return {
                    "add 1": lambda: floor.add(sid, [ITEM]),
                    "pop": lambda: floor.pop(sid),
                    "turn": lambda: _turn_floor(floor, sid),
                }
            if name == "postgres + redis rtt":
                return {"add 1": bound_add, "pop": bound_pop, "turn": bound_turn}
            s = sessions[name]
            return {
                "add 1": lambda: s.add_items([ITEM]),
                "pop": s.pop_item,
                "turn": lambda: _turn(s),
            }

        names = ["floor/postgres", "agentmem/postgres", "postgres + redis rtt"]
        names += [name for name in sessions if name not in names]
        samples: dict[tuple[str, str], list[float]] = {}
        cpu: dict[tuple[str, str], list[float]] = {}
        for _ in range(rounds):
            for name in random.sample(["redis rtt", *names], len(names) + 1):
                if name == "redis rtt":
                    await _time(samples, cpu, (name, "round trip"), rtt, n)
                    continue
                table = ops(name)
                await _time(samples, cpu, (name, "add 1"), table["add 1"], n)
                await _time(samples, cpu, (name, "pop"), table["pop"], n)  # as many as added
                await _time(samples, cpu, (name, "turn"), table["turn"], max(1, n // 4))
        await floor.stop()
        for session in sessions.values():
            await session.clear_session()
            await session.close()
        await client.aclose()
        await engine.dispose()

    print(f"bench.cached_writes: {rounds} interleaved rounds, n={n} per op and round\n")
    print(f"  {'op':8} {'target':24} {'p50 µs':>9} {'p99 µs':>9} {'p50/floor':>10} {'CPU p50':>9}")
    for op in ("round trip", "add 1", "pop", "turn"):
        floor_p50 = statistics.median(samples.get(("floor/postgres", op), [float("nan")]))
        for name in ["redis rtt", *names]:
            values = samples.get((name, op))
            if not values:
                continue
            values.sort()
            p50 = statistics.median(values)
            p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
            cpu_p50 = statistics.median(cpu[name, op])
            print(
                f"  {op:8} {name:24} {p50:9.1f} {p99:9.1f} {p50 / floor_p50:10.2f} {cpu_p50:9.1f}"
            )


async def _turn(session: Any) -> None:
    await session.get_items()
    await session.add_items([ITEM, ITEM, ITEM, ITEM])


async def _turn_floor(floor: PostgresFloor, sid: str) -> None:
    await floor.get(sid, None)
    await floor.add(sid, [ITEM, ITEM, ITEM, ITEM])


async def _time(
    samples: dict[tuple[str, str], list[float]],
    cpu: dict[tuple[str, str], list[float]],
    key: tuple[str, str],
    call: Callable[[], Awaitable[Any]],
    n: int,
) -> None:
    out = samples.setdefault(key, [])
    out_cpu = cpu.setdefault(key, [])
    for _ in range(n):
        start, start_cpu = time.perf_counter(), time.thread_time()
        await call()
        out_cpu.append((time.thread_time() - start_cpu) * 1e6)
        out.append((time.perf_counter() - start) * 1e6)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--against", metavar="FILE", help="another agentmem/cache/session.py")
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.n, args.against))
