"""What a call on a caller's SQLAlchemy engine pays for the engine's pool: the same driver call
on a connection held outside any pool, and on one checked out of an ``AsyncEngine``'s pool and
back in (SQLAlchemy's async API: a greenlet for the checkout, another for the check-in, the
pool's reset skipped where agentmem skips it), as the benchmark's bounds do
(``bench.targets._pooled``) and agentmem's sessions on a caller's engine.

    python -m bench.engine_pool [--calls 3000] [--rounds 5]

PostgreSQL (asyncpg) runs ``SELECT 1``; SQLite (aiosqlite, a file in a scratch directory) runs
agentmem's newest-20 read of an empty session in aiosqlite's thread. The shapes alternate in
each round; the table gives the median over the rounds of the wall time and of the event loop
thread's CPU time per call. ``AGENTMEM_BENCH_POSTGRES_URL`` overrides the PostgreSQL server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.targets import _pooled

POSTGRES_URL = os.environ.get(
    "AGENTMEM_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


async def measure(
    shapes: dict[str, Callable[[], Awaitable[Any]]], calls: int, rounds: int
) -> dict[str, tuple[float, float]]:
    walls: dict[str, list[float]] = {name: [] for name in shapes}
    cpus: dict[str, list[float]] = {name: [] for name in shapes}
    for _ in range(rounds):
        for name, call in shapes.items():
            cpu, wall = time.thread_time(), time.perf_counter()
            for _ in range(calls):
                await call()
            walls[name].append((time.perf_counter() - wall) / calls * 1e6)
            cpus[name].append((time.thread_time() - cpu) / calls * 1e6)
    return {n: (statistics.median(walls[n]), statistics.median(cpus[n])) for n in shapes}


async def postgres(calls: int, rounds: int) -> dict[str, tuple[float, float]]:
    import asyncpg
    from sqlalchemy.ext.asyncio import create_async_engine

    url = POSTGRES_URL.replace("postgresql://", "postgresql+asyncpg://", 1)
    engine = create_async_engine(url, pool_size=2, max_overflow=0)
    held = await asyncpg.connect(POSTGRES_URL)
    try:
        shapes = {
            "asyncpg, a held connection": lambda: held.fetchval("SELECT 1"),
            "asyncpg, through the engine's pool": lambda: _pooled(
                engine, lambda c: c.fetchval("SELECT 1")
            ),
        }
        return await measure(shapes, calls, rounds)
    finally:
        await held.close()
        await engine.dispose()


async def sqlite(calls: int, rounds: int) -> dict[str, tuple[float, float]]:
    import aiosqlite
    from sqlalchemy.ext.asyncio import create_async_engine

    from agentmem.sql import _sqlite_schema
    from agentmem.sql import _statements as ops
    from agentmem.sql.sqlalchemy import use_sqlite_settings

    sql = ops.sqlite_statements("")
    with tempfile.TemporaryDirectory() as workdir:
        path = Path(workdir) / "pool.db"
        engine = create_async_engine(f"sqlite+aiosqlite:///{path}")
        use_sqlite_settings(engine)
        await _pooled(engine, lambda d: d._execute(lambda: _sqlite_schema.sqlite_upgrade(d._conn)))
        held = await aiosqlite.connect(path, isolation_level=None)

        def read(driver: Any) -> Awaitable[Any]:
            return driver._execute(lambda: ops.sqlite_get(driver._conn, sql, "s", 20))  # type: ignore[no-any-return]

        try:
            shapes = {
                "aiosqlite, a held connection": lambda: read(held),
                "aiosqlite, through the engine's pool": lambda: _pooled(engine, read),
            }
            return await measure(shapes, calls, rounds)
        finally:
            await held.close()
            await engine.dispose()


async def main(calls: int, rounds: int) -> None:
    print(f"µs per call, median of {rounds} rounds of {calls} calls: wall, event loop CPU")
    for results in (await postgres(calls, rounds), await sqlite(calls, rounds)):
        for name, (wall, cpu) in results.items():
            print(f"  {name:40} {wall:8.1f} {cpu:8.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args()
    asyncio.run(main(options.calls, options.rounds))
