"""W9: the session lifecycle at scale. ``find_sessions`` (first page and a deep page of one
user, and of every session without ``user_id``) in stores of 10,000 and 1,000,000 sessions, and
``purge_expired`` throughput.

    python -m bench.lifecycle [--quick] [--targets sqlite,postgres,redis] [--explain]
        [--repeats N] [--interleaved]

Each store is generated in bulk in setup (one ``INSERT ... SELECT`` on SQL, pipelines on Redis;
Redis holds 100,000 sessions at most). Half of a store's sessions belong to the measured user,
each with its own activity time, the other half to 1,000 other users. A page is 50 sessions; the
deep page starts 90% of the way through the user's sessions (its cursor is built from the
session there, as a client holding it would send it); without ``user_id`` likewise over every
session. Purge: 100,000 expired sessions with one
item each (2,000 with ``--quick``), ``purge_expired(batch_size=1000)``. PostgreSQL runs in a
database of its own, created and dropped; Redis under a run tag, deleted at the end.
``--explain`` prints PostgreSQL's plans of both pages at the largest size. ``--interleaved``
(Redis only) fills both sizes under two tags at once and alternates the calls on them, so that
the noise of a shared machine falls on both alike (then no purge).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from agentmem.manager import SessionManagerABC, encode_cursor
from agentmem.records import SessionInfo

POSTGRES_URL = os.environ.get(
    "AGENTMEM_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("AGENTMEM_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
USER = "bench-user"
PAGE = 50
BASE = datetime(2026, 1, 1, tzinfo=UTC)
SQL_SIZES = (10_000, 1_000_000)
REDIS_SIZES = (10_000, 100_000)
QUICK_SIZES = (200, 2_000)
PURGE = 100_000
QUICK_PURGE = 2_000
REPEATS = 200
QUICK_REPEATS = 10


def owner(n: int) -> str:
    return USER if n % 2 == 0 else f"other-{n % 1000}"


def rank_info(size: int, rank: int) -> SessionInfo:
    """The user's session at ``rank`` (0: the newest): session ``n`` was active at BASE + n s."""
    n = (size - 1) - (size - 1) % 2 - 2 * rank
    stamp = BASE + timedelta(seconds=n)
    return SessionInfo(f"s{n:08d}", 0, stamp, stamp, user_id=USER)


def any_rank_info(size: int, rank: int) -> SessionInfo:
    """The session at ``rank`` among every session (0: the newest)."""
    n = size - 1 - rank
    stamp = BASE + timedelta(seconds=n)
    return SessionInfo(f"s{n:08d}", 0, stamp, stamp, user_id=owner(n))


async def timed(call: Callable[[], Awaitable[Any]], repeats: int) -> float:
    """The median of ``repeats`` calls, in microseconds."""
    samples = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        await call()
        samples.append((time.perf_counter_ns() - start) / 1_000)
    return statistics.median(samples)


# --- bulk setup ---------------------------------------------------------------------------------


def sqlite_fill(path: str, size: int, expired: bool) -> None:
    import sqlite3

    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    conn.execute("DELETE FROM messages")
    conn.execute("DELETE FROM sessions")
    stamp = f"strftime('%Y-%m-%d %H:%M:%S', {int(BASE.timestamp())} + g, 'unixepoch') || '.000000'"
    expires = "'2001-01-01 00:00:00.000000'" if expired else "NULL"
    conn.execute(
        f"WITH RECURSIVE c(g) AS (SELECT 0 UNION ALL SELECT g + 1 FROM c WHERE g < ?) "
        f"INSERT INTO sessions (session_id, created_at, updated_at, expires_at, user_id, "
        f"item_count) SELECT printf('s%08d', g), {stamp}, {stamp}, {expires}, "
        f"CASE WHEN g % 2 = 0 THEN '{USER}' ELSE 'other-' || (g % 1000) END, "
        f"{1 if expired else 0} FROM c",
        (size - 1,),
    )
    if expired:
        conn.execute(
            "INSERT INTO messages (session_id, message_data, created_at) "
            'SELECT session_id, \'{"role": "user", "content": "x"}\', created_at FROM sessions'
        )
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.close()


async def postgres_fill(url: str, size: int, expired: bool) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute("TRUNCATE sessions CASCADE")
        expires = "now() - interval '1 day'" if expired else "NULL"
        stamp = "$1::timestamptz + g * interval '1 second'"
        await conn.execute(
            f"INSERT INTO sessions (session_id, created_at, updated_at, expires_at, user_id, "
            f"item_count) SELECT 's' || lpad(g::text, 8, '0'), {stamp}, {stamp}, {expires}, "
            f"CASE WHEN g % 2 = 0 THEN '{USER}' ELSE 'other-' || (g % 1000) END, "
            f"{1 if expired else 0} FROM generate_series(0, $2 - 1) AS g",
            BASE,
            size,
        )
        if expired:
            await conn.execute(
                "INSERT INTO messages (session_id, message_data) "
                'SELECT session_id, \'{"role": "user", "content": "x"}\' FROM sessions'
            )
        await conn.execute("VACUUM ANALYZE sessions")
        await conn.execute("VACUUM ANALYZE messages")
    finally:
        await conn.close()


async def redis_fill(manager: Any, size: int, expired: bool) -> None:
    import redis.asyncio as redis

    from agentmem.redis.client import encode_tag, tagged_key

    client = redis.Redis.from_url(REDIS_URL)
    chunk = 5_000
    for start in range(0, size, chunk):
        async with client.pipeline(transaction=False) as pipe:
            for n in range(start, min(size, start + chunk)):
                session_id = f"s{n:08d}"
                stamp = f"{BASE.timestamp() + n:.6f}"
                user = owner(n)
                tag = encode_tag(user)
                if not expired:
                    pipe.hset(
                        tagged_key(manager.session_prefix, session_id),
                        mapping={"created_at": stamp, "updated_at": stamp, "user_id": user},
                    )
                # an expired session's keys are gone (native TTL): only its index entries stay
                for kind, tagged in (("owner", tag), ("all", "all")):
                    pipe.zadd(
                        f"{manager.session_prefix}:{kind}:{{{tagged}}}", {session_id: float(stamp)}
                    )
                    pipe.zadd(
                        f"{manager.session_prefix}:{kind}-expiry:{{{tagged}}}",
                        {session_id: 1.0 if expired else float("inf")},
                    )
            await pipe.execute()
    await client.aclose()


# --- targets ------------------------------------------------------------------------------------


class Target:
    name: str
    manager: SessionManagerABC[Any]

    async def fill(self, size: int, *, expired: bool = False) -> None: ...

    async def close(self) -> None:
        await self.manager.close()


class SQLiteTarget(Target):
    name = "sqlite"

    def __init__(self) -> None:
        from agentmem import SQLiteSessionManager

        self.dir = tempfile.TemporaryDirectory()
        self.path = str(Path(self.dir.name) / "w9.db")
        self.manager = SQLiteSessionManager(self.path)

    async def fill(self, size: int, *, expired: bool = False) -> None:
        await self.manager.upgrade_schema()  # type: ignore[attr-defined]
        await asyncio.to_thread(sqlite_fill, self.path, size, expired)

    async def close(self) -> None:
        await super().close()
        self.dir.cleanup()


class PostgresTarget(Target):
    name = "postgres"

    def __init__(self) -> None:
        self.database = f"agentmem_w9_{secrets.token_hex(4)}"
        base = POSTGRES_URL.rsplit("/", 1)[0]
        self.url = f"{base}/{self.database}"

    async def start(self) -> None:
        import asyncpg

        from agentmem import SQLAlchemySessionManager

        admin = await asyncpg.connect(POSTGRES_URL)
        await admin.execute(f'CREATE DATABASE "{self.database}"')
        await admin.close()
        self.manager = SQLAlchemySessionManager.from_url(self.url, create_tables=True)
        await self.manager.upgrade_schema()  # type: ignore[attr-defined]

    async def fill(self, size: int, *, expired: bool = False) -> None:
        await postgres_fill(self.url, size, expired)

    async def explain(self, size: int) -> str:
        import asyncpg

        from agentmem.sql import _lifecycle

        conn = await asyncpg.connect(self.url)
        plans = []
        try:
            for label, after in (
                ("first page", None),
                ("deep page", rank_info(size, int(size // 2 * 0.9))),
            ):
                cursor = None if after is None else (after.updated_at, after.session_id)
                clauses, args = _lifecycle._pg_where(USER, None, cursor)
                args.append(PAGE + 1)
                sql = (
                    f"SELECT {_lifecycle.INFO_COLUMNS} FROM sessions AS s "
                    f"WHERE {' AND '.join(clauses)} {_lifecycle._ORDER} LIMIT ${len(args)}"
                )
                rows = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {sql}", *args)
                plans.append(
                    f"-- {label}, {size:,} sessions\n{sql}\n" + "\n".join(r[0] for r in rows)
                )
        finally:
            await conn.close()
        return "\n\n".join(plans)

    async def close(self) -> None:
        import asyncpg

        await super().close()
        admin = await asyncpg.connect(POSTGRES_URL)
        await admin.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        await admin.close()


class RedisTarget(Target):
    name = "redis"

    def __init__(self) -> None:
        from agentmem import RedisSessionManager

        self.tag = f"agentmem-w9-{secrets.token_hex(4)}"
        self.manager = RedisSessionManager(
            REDIS_URL, session_prefix=f"{self.tag}:session", messages_prefix=f"{self.tag}:messages"
        )

    async def fill(self, size: int, *, expired: bool = False) -> None:
        await self.clear()
        await redis_fill(self.manager, size, expired)

    async def clear(self) -> None:
        import redis.asyncio as redis

        client = redis.Redis.from_url(REDIS_URL)
        async for key in client.scan_iter(match=f"{self.tag}:*", count=5_000):
            await client.unlink(key)
        await client.aclose()

    async def close(self) -> None:
        await self.clear()
        await super().close()


# --- the workload -------------------------------------------------------------------------------


async def measure(
    target: Target, sizes: tuple[int, ...], repeats: int
) -> dict[int, tuple[float, float, float, float]]:
    """``{size: (first page µs, deep page µs, the same without user_id)}``."""
    results = {}
    for size in sizes:
        await target.fill(size)
        rank = int(size // 2 * 0.9)
        deep = encode_cursor(rank_info(size, rank))
        first_page = await target.manager.find_sessions(user_id=USER, limit=PAGE)
        assert [i.session_id for i in first_page.items[:1]] == [rank_info(size, 0).session_id]
        deep_page = await target.manager.find_sessions(user_id=USER, limit=PAGE, cursor=deep)
        assert deep_page.items[0].session_id == rank_info(size, rank + 1).session_id
        first = await timed(lambda: target.manager.find_sessions(user_id=USER, limit=PAGE), repeats)
        deep_us = await timed(
            lambda: target.manager.find_sessions(user_id=USER, limit=PAGE, cursor=deep),  # noqa: B023
            repeats,
        )
        rank = int(size * 0.9)
        deep_any = encode_cursor(any_rank_info(size, rank))
        any_first = await target.manager.find_sessions(limit=PAGE)
        assert any_first.items[0].session_id == any_rank_info(size, 0).session_id
        any_deep = await target.manager.find_sessions(limit=PAGE, cursor=deep_any)
        assert any_deep.items[0].session_id == any_rank_info(size, rank + 1).session_id
        any_first_us = await timed(lambda: target.manager.find_sessions(limit=PAGE), repeats)
        any_deep_us = await timed(
            lambda: target.manager.find_sessions(limit=PAGE, cursor=deep_any),  # noqa: B023
            repeats,
        )
        results[size] = (first, deep_us, any_first_us, any_deep_us)
        print(f"  {target.name:9} {size:>9,} sessions  first page {first:9.0f} µs  "
              f"deep page {deep_us:9.0f} µs", flush=True)  # fmt: skip
        print(f"  {target.name:9} {size:>9,} sessions  without user_id: first page "
              f"{any_first_us:9.0f} µs  deep page {any_deep_us:9.0f} µs", flush=True)  # fmt: skip
    return results


async def measure_interleaved(sizes: tuple[int, ...], repeats: int) -> None:
    """The four pages at each size, one call of each in turn, ``repeats`` rounds (Redis)."""
    targets = {size: RedisTarget() for size in sizes}
    try:
        calls: dict[tuple[int, str], Callable[[], Awaitable[Any]]] = {}
        for size, target in targets.items():
            await target.fill(size)
            manager = target.manager
            deep = encode_cursor(rank_info(size, int(size // 2 * 0.9)))
            deep_any = encode_cursor(any_rank_info(size, int(size * 0.9)))
            calls[size, "first page"] = partial(manager.find_sessions, user_id=USER, limit=PAGE)
            calls[size, "deep page"] = partial(
                manager.find_sessions, user_id=USER, limit=PAGE, cursor=deep
            )
            calls[size, "first page, no user_id"] = partial(manager.find_sessions, limit=PAGE)
            calls[size, "deep page, no user_id"] = partial(
                manager.find_sessions, limit=PAGE, cursor=deep_any
            )
        samples: dict[tuple[int, str], list[float]] = {key: [] for key in calls}
        for _ in range(repeats):
            for key, call in calls.items():
                start = time.perf_counter_ns()
                await call()
                samples[key].append((time.perf_counter_ns() - start) / 1_000)
        for kind in ("first page", "deep page", "first page, no user_id", "deep page, no user_id"):
            small, large = (
                statistics.median(samples[size, kind]) for size in (sizes[0], sizes[-1])
            )
            print(f"  redis     {kind:23} {sizes[0]:,}: {small:7.0f} µs  {sizes[-1]:,}: "
                  f"{large:7.0f} µs  ratio {large / small:.2f}x", flush=True)  # fmt: skip
    finally:
        for target in targets.values():
            await target.close()


async def purge_rate(target: Target, count: int) -> float:
    await target.fill(count, expired=True)
    start = time.perf_counter()
    purged = await target.manager.purge_expired(batch_size=1000)
    elapsed = time.perf_counter() - start
    assert purged == count, (purged, count)
    rate = count / elapsed
    print(f"  {target.name:9} purge {count:,} expired sessions: {elapsed:6.2f} s, "
          f"{rate:,.0f} sessions/s", flush=True)  # fmt: skip
    return rate


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.lifecycle")
    parser.add_argument("--quick", action="store_true", help="small counts (the CI smoke run)")
    parser.add_argument("--targets", default="sqlite,postgres,redis")
    parser.add_argument("--explain", action="store_true", help="PostgreSQL's plans")
    parser.add_argument("--repeats", type=int, help=f"calls per median (default {REPEATS})")
    parser.add_argument(
        "--interleaved", action="store_true", help="Redis: both sizes at once, calls alternated"
    )
    args = parser.parse_args(argv)
    repeats = args.repeats or (QUICK_REPEATS if args.quick else REPEATS)
    if args.interleaved:
        await measure_interleaved(QUICK_SIZES if args.quick else REDIS_SIZES, repeats)
        return 0
    print(f"W9 find_sessions(user_id=..., limit={PAGE}) and purge_expired(batch_size=1000)")
    for name in args.targets.split(","):
        if name == "sqlite":
            target: Target = SQLiteTarget()
        elif name == "postgres":
            target = PostgresTarget()
            await target.start()
        elif name == "redis":
            target = RedisTarget()
        else:
            raise SystemExit(f"unknown target {name!r}")
        try:
            sizes = QUICK_SIZES if args.quick else (REDIS_SIZES if name == "redis" else SQL_SIZES)
            results = await measure(target, sizes, repeats)
            small, large = results[sizes[0]], results[sizes[-1]]
            print(f"  {name:9} ratio at {sizes[-1]:,} / at {sizes[0]:,}: first page "
                  f"{large[0] / small[0]:.2f}x, deep page {large[1] / small[1]:.2f}x; "
                  f"without user_id {large[2] / small[2]:.2f}x, "
                  f"{large[3] / small[3]:.2f}x")  # fmt: skip
            if args.explain and isinstance(target, PostgresTarget):
                print(await target.explain(sizes[-1]))
            await purge_rate(target, QUICK_PURGE if args.quick else PURGE)
        finally:
            await target.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
