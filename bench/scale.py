"""PostgreSQL at size: agentmem's reads, appends, listings, purge and vacuum on a store of
10,000,000 messages over 100,000 sessions and on a small one, with ``messages`` as one table
and hash-partitioned by session id, side by side.

    python -m bench.scale [--quick] [--partitions 16] [--rounds 10] [--calls 50] [--explain]

All four stores (two sizes, two layouts) live in one database of their own
(``agentmem_scale_<random>``, dropped at the end), under table prefixes, migrated with
agentmem's own revisions; the partitioned layout then gets a ``messages`` table hash-partitioned
by ``session_id`` (see ``partitioned_ddl``). A store is generated in bulk (one ``INSERT ...
SELECT`` per table; the partitioned one copied from the plain one in id order). Items are SDK-like
JSON, 90-260 bytes (a user message, a function call, its output and an assistant message per
turn). Session ``n`` was last active at BASE + n s and belongs to the measured user when ``n`` is
even (as in ``bench.lifecycle``); its turns are interleaved in id order with those of the ~1,000
sessions active at the same time, as in a live store. Sessions hold 1-193 items (97 on average);
the newest few hold 100,000 items (``LONG``) or 1,000 (``FULL``).

Measured through the public API, client-side (median and p99, µs), in interleaved rounds (the
four stores take turns, in a rotating order): newest 20 items of a short and of a 100,000-item
session, append 1 and 50 items, a full read of a 1,000-item session, ``find_sessions`` first and
deep page. Then, twice, ``purge_expired(batch_size=1000)`` of 10% of the sessions (the oldest)
and ``VACUUM (ANALYZE)`` of ``messages`` after it. Every read, page, pop and fork is checked
against what was written. ``--quick``: small stores (the CI smoke run). ``--explain``: PostgreSQL's
plans of agentmem's read, append, pop and purge statements on the large stores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from agentmem import SQLAlchemySessionManager
from agentmem.manager import encode_cursor
from agentmem.records import SessionInfo

POSTGRES_URL = os.environ.get(
    "AGENTMEM_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
USER = "bench-user"
PAGE = 50
BASE = datetime(2026, 1, 1, tzinfo=UTC)
GAP = 50  # session starts between two turns of one session: ~1,000 sessions are active at once
PURGE_ROUNDS = 2
EXPIRED_SHARE = 10  # each purge round expires 1/10 of the sessions (the oldest left)


@dataclass(frozen=True)
class Size:
    """A store's shape: ``sessions`` sessions, the newest ``longs`` of ``long_items`` items,
    the ``fulls`` before them of ``full_items``, the rest of 1-193 items."""

    sessions: int
    longs: int
    long_items: int
    fulls: int
    full_items: int

    def count(self, n: int) -> int:
        if n >= self.sessions - self.longs:
            return self.long_items
        if n >= self.sessions - self.longs - self.fulls:
            return self.full_items
        return 1 + (n * 7919) % 193

    def count_sql(self) -> str:
        return (
            f"CASE WHEN g >= {self.sessions - self.longs} THEN {self.long_items} "
            f"WHEN g >= {self.sessions - self.longs - self.fulls} THEN {self.full_items} "
            f"ELSE 1 + (g * 7919) % 193 END"
        )

    @property
    def messages(self) -> int:
        return sum(self.count(n) for n in range(self.sessions))

    @property
    def special(self) -> int:
        """The first session of ``FULL`` or ``LONG`` size."""
        return self.sessions - self.longs - self.fulls


LARGE = Size(100_000, 3, 100_000, 10, 1_000)
SMALL = Size(1_000, 1, 100_000, 10, 1_000)
QUICK_LARGE = Size(1_000, 2, 2_000, 3, 200)
QUICK_SMALL = Size(100, 1, 2_000, 3, 200)


def sid(n: int) -> str:
    return f"s{n:08d}"


def item(n: int, k: int) -> dict[str, Any]:
    """Item ``k`` of session ``n``, as the setup's SQL (``ITEM_SQL``) writes it."""
    s, city, temp = sid(n), n % 97, k % 30
    kind = k % 4
    if kind == 0:
        question = f"Question {k} in {s}: what is the weather like in city {city} tomorrow, "
        return {"role": "user", "content": question + "and should I pack an umbrella?"}
    if kind == 1:
        return {
            "type": "function_call",
            "id": f"fc_{s}_{k}",
            "call_id": f"call_{s}_{k}",
            "name": "get_weather",
            "arguments": f'{{"city": "city {city}"}}',
            "status": "completed",
        }
    if kind == 2:
        return {
            "type": "function_call_output",
            "call_id": f"call_{s}_{k - 1}",
            "output": f'{{"forecast": "rain", "temperature_c": {temp}}}',
        }
    text = f"It will rain in city {city} tomorrow ({temp} °C): pack an umbrella."
    return {
        "id": f"msg_{s}_{k}",
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


_SID = "('s' || lpad(g::text, 8, '0'))"
ITEM_SQL = f"""CASE k % 4
  WHEN 0 THEN json_build_object('role', 'user', 'content', 'Question ' || k || ' in ' || {_SID}
    || ': what is the weather like in city ' || g % 97
    || ' tomorrow, and should I pack an umbrella?')
  WHEN 1 THEN json_build_object('type', 'function_call', 'id', 'fc_' || {_SID} || '_' || k,
    'call_id', 'call_' || {_SID} || '_' || k, 'name', 'get_weather',
    'arguments', '{{"city": "city ' || g % 97 || '"}}', 'status', 'completed')
  WHEN 2 THEN json_build_object('type', 'function_call_output',
    'call_id', 'call_' || {_SID} || '_' || (k - 1),
    'output', '{{"forecast": "rain", "temperature_c": ' || k % 30 || '}}')
  ELSE json_build_object('id', 'msg_' || {_SID} || '_' || k, 'type', 'message',
    'role', 'assistant', 'status', 'completed', 'content', json_build_array(json_build_object(
      'type', 'output_text', 'text', 'It will rain in city ' || g % 97 || ' tomorrow ('
      || k % 30 || ' °C): pack an umbrella.', 'annotations', json_build_array())))
END::text"""
ROLE_SQL = "CASE k % 4 WHEN 0 THEN 'user' WHEN 3 THEN 'assistant' END"
TYPE_SQL = (
    "CASE k % 4 WHEN 1 THEN 'function_call' WHEN 2 THEN 'function_call_output' "
    "WHEN 3 THEN 'message' END"
)


def owner(n: int) -> str:
    return USER if n % 2 == 0 else f"other-{n % 1000}"


def rank_info(size: Size, rank: int) -> SessionInfo:
    """The user's session at ``rank`` (0: the newest): session ``n`` was active at BASE + n s."""
    last = size.sessions - 1
    n = last - last % 2 - 2 * rank
    stamp = BASE + timedelta(seconds=n)
    return SessionInfo(sid(n), 0, stamp, stamp, user_id=USER)


def partitioned_ddl(prefix: str, partitions: int) -> list[str]:
    """``messages`` hash-partitioned by ``session_id``: the same columns, indexes and foreign key
    as the migrated table, but a primary key of ``(id, session_id)`` (a partitioned table's unique
    keys must hold the partition key)."""
    m, s = f"{prefix}messages", f"{prefix}sessions"
    statements = [
        f"DROP TABLE {m}",
        f"CREATE TABLE {m} (id bigserial NOT NULL, session_id varchar(255) NOT NULL, "
        f"message_data text NOT NULL, role varchar(64), item_type varchar(64), "
        f"created_at timestamptz NOT NULL DEFAULT now(), batch_id varchar(32), "
        f"CONSTRAINT pk_{m} PRIMARY KEY (id, session_id), "
        f"CONSTRAINT fk_{m}_session_id_{s} FOREIGN KEY (session_id) "
        f"REFERENCES {s} (session_id) ON DELETE CASCADE) PARTITION BY HASH (session_id)",
    ]
    statements += [
        f"CREATE TABLE {m}_p{i} PARTITION OF {m} FOR VALUES WITH (MODULUS {partitions}, "
        f"REMAINDER {i})"
        for i in range(partitions)
    ]
    return [
        *statements,
        f"CREATE INDEX ix_{m}_session_id_id ON {m} (session_id, id)",
        f"CREATE UNIQUE INDEX ix_{m}_session_id_batch_id ON {m} (session_id, batch_id) "
        f"WHERE batch_id IS NOT NULL",
    ]


COLUMNS = "id, session_id, message_data, role, item_type, created_at, batch_id"


@dataclass
class Store:
    """One store: a size in one layout, under its own table prefix."""

    name: str
    prefix: str
    size: Size
    partitions: int  # 0: one table
    manager: SQLAlchemySessionManager = field(init=False)
    expected: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    shorts: list[int] = field(init=False)
    targets: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.shorts = short_sessions(self.size)
        self.targets = append_targets(self.size)

    @property
    def messages_tables(self) -> list[str]:
        m = f"{self.prefix}messages"
        return [f"{m}_p{i}" for i in range(self.partitions)] if self.partitions else [m]

    def items_of(self, n: int) -> list[dict[str, Any]]:
        """What session ``n`` holds now (as generated, plus what the run appended)."""
        if n not in self.expected:
            self.expected[n] = [item(n, k) for k in range(self.size.count(n))]
        return self.expected[n]


# --- bulk setup ---------------------------------------------------------------------------------


async def create_schema(conn: Any, store: Store, url: str) -> None:
    store.manager = SQLAlchemySessionManager.from_url(url, table_prefix=store.prefix)
    await store.manager.upgrade_schema()
    if store.partitions:
        async with conn.transaction():
            for statement in partitioned_ddl(store.prefix, store.partitions):
                await conn.execute(statement)
    for table in store.messages_tables:  # the bench vacuums by itself, timed
        await conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")


async def fill_sessions(conn: Any, store: Store) -> None:
    size, s = store.size, f"{store.prefix}sessions"
    stamp = "$1::timestamptz + g * interval '1 second'"
    await conn.execute(
        f"INSERT INTO {s} (session_id, created_at, updated_at, user_id, item_count) "
        f"SELECT {_SID}, {stamp}, {stamp}, "
        f"CASE WHEN g % 2 = 0 THEN '{USER}' ELSE 'other-' || (g % 1000) END, {size.count_sql()} "
        f"FROM generate_series(0, {size.sessions - 1}) AS g",
        BASE,
    )


async def fill_messages(conn: Any, store: Store) -> None:
    """One ``INSERT ... SELECT`` in the order of a live store: by time of the turn."""
    size, m = store.size, f"{store.prefix}messages"
    # Normal sessions write a turn (4 items) every GAP session starts; the special ones spread
    # theirs over the whole history.
    tick = (
        f"CASE WHEN g >= {size.special} THEN (k / 4) * ({4.0 * size.sessions} / c.n) "
        f"ELSE g + (k / 4) * {GAP} END"
    )
    await conn.execute(
        f"INSERT INTO {m} (session_id, message_data, role, item_type, created_at) "
        f"SELECT {_SID}, {ITEM_SQL}, {ROLE_SQL}, {TYPE_SQL}, "
        f"$1::timestamptz + x.tick * interval '1 second' FROM ("
        f"SELECT g, k, {tick} AS tick FROM generate_series(0, {size.sessions - 1}) AS g "
        f"CROSS JOIN LATERAL (SELECT {size.count_sql()} AS n) AS c "
        f"CROSS JOIN LATERAL generate_series(0, c.n - 1) AS k ORDER BY 3, 1, 2) AS x",
        BASE,
    )


async def copy_store(conn: Any, source: Store, store: Store) -> None:
    s, m = f"{store.prefix}sessions", f"{store.prefix}messages"
    await conn.execute(f"INSERT INTO {s} SELECT * FROM {source.prefix}sessions")
    await conn.execute(
        f"INSERT INTO {m} ({COLUMNS}) SELECT {COLUMNS} FROM {source.prefix}messages ORDER BY id"
    )
    await conn.execute(f"SELECT setval('{m}_id_seq', (SELECT max(id) FROM {m}))")


async def setup(url: str, stores: list[Store]) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        # The foreign key's check per row is skipped while loading (the data is consistent by
        # construction), and the sort of the interleaved order gets memory.
        await conn.execute("SET session_replication_role = replica")
        await conn.execute("SET work_mem = '256MB'")
        await conn.execute("SET maintenance_work_mem = '512MB'")
        plain: dict[Size, Store] = {}
        for store in stores:
            start = time.perf_counter()
            await create_schema(conn, store, url)
            if store.partitions and store.size in plain:
                await copy_store(conn, plain[store.size], store)
            else:
                await fill_sessions(conn, store)
                await fill_messages(conn, store)
                plain[store.size] = store
            loaded = time.perf_counter() - start
            for table in ("sessions", "messages"):
                await conn.execute(f"VACUUM (ANALYZE) {store.prefix}{table}")
            count = await conn.fetchval(f"SELECT count(*) FROM {store.prefix}messages")
            check(count, store.size.messages, f"{store.name} messages generated")
            disk = await conn.fetchval(
                "SELECT pg_size_pretty(sum(pg_total_relation_size(c.oid))) FROM pg_class c "
                "WHERE c.relname LIKE $1 AND c.relkind IN ('r', 'p')",
                f"{store.prefix}messages%",
            )
            print(f"  setup {store.name:14} {count:>11,} messages over {store.size.sessions:,} "
                  f"sessions: loaded in {loaded:6.1f} s, vacuumed in "
                  f"{time.perf_counter() - start - loaded:6.1f} s; messages {disk}",
                  flush=True)  # fmt: skip
    finally:
        await conn.close()


# --- checks and operations ----------------------------------------------------------------------


def check(got: Any, want: Any, what: str) -> None:
    if got != want:
        raise AssertionError(f"{what}: got {str(got)[:300]} want {str(want)[:300]}")


def short_sessions(size: Size) -> list[int]:
    """Sessions of 20-193 items, from the middle of the store (never expired by the purge)."""
    start = size.sessions // 2
    picked = [n for n in range(start, size.special, 2) if size.count(n) >= 20]
    return picked[:50]


def append_targets(size: Size) -> list[int]:
    """Other users' sessions (odd), so appends leave the measured user's listing alone."""
    start = size.sessions // 2 + 1
    return list(range(start, size.special, 2))[:20]


def appended(j: int, count: int) -> list[dict[str, Any]]:
    return [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"appended {j}.{i} " + "x" * 80}
        for i in range(count)
    ]


Call = Callable[[], Awaitable[Any]]
Verify = Callable[[Any], None]


@dataclass
class Operation:
    """``prepare(store, i)``: the ``i``-th call of an operation and the check of its result
    (only the call is timed)."""

    name: str
    prepare: Callable[[Store, int], tuple[Call, Verify]]


def newest(store: Store, n: int) -> tuple[Call, Verify]:
    want = store.items_of(n)[-20:]
    session = store.manager.get_session(sid(n))
    return (
        lambda: session.get_items(limit=20),
        lambda got: check(got, want, f"{store.name} newest 20 of {sid(n)}"),
    )


def newest_short(store: Store, i: int) -> tuple[Call, Verify]:
    return newest(store, store.shorts[i % len(store.shorts)])


def newest_long(store: Store, i: int) -> tuple[Call, Verify]:
    return newest(store, store.size.sessions - 1 - i % store.size.longs)


def full_read(store: Store, i: int) -> tuple[Call, Verify]:
    n = store.size.special + i % store.size.fulls
    want = store.items_of(n)
    session = store.manager.get_session(sid(n))
    return session.get_items, lambda got: check(got, want, f"{store.name} all of {sid(n)}")


def appender(count: int) -> Callable[[Store, int], tuple[Call, Verify]]:
    def append(store: Store, i: int) -> tuple[Call, Verify]:
        n = store.targets[i % len(store.targets)]
        items = appended(i, count)
        session = store.manager.get_session(sid(n))
        return lambda: session.add_items(items), lambda _: store.items_of(n).extend(items)

    return append


def first_page(store: Store, i: int) -> tuple[Call, Verify]:
    want = [rank_info(store.size, r).session_id for r in range(PAGE)]
    return (
        lambda: store.manager.find_sessions(user_id=USER, limit=PAGE),
        lambda page: check([x.session_id for x in page.items], want, f"{store.name} first page"),
    )


def deep_page(store: Store, i: int) -> tuple[Call, Verify]:
    rank = int(store.size.sessions // 2 * 0.9)
    cursor = encode_cursor(rank_info(store.size, rank))
    ranks = range(rank + 1, min(rank + 1 + PAGE, (store.size.sessions + 1) // 2))
    want = [rank_info(store.size, r).session_id for r in ranks]
    return (
        lambda: store.manager.find_sessions(user_id=USER, limit=PAGE, cursor=cursor),
        lambda page: check([x.session_id for x in page.items], want, f"{store.name} deep page"),
    )


OPERATIONS = [
    Operation("newest 20, short session", newest_short),
    Operation("newest 20, long session", newest_long),
    Operation("append 1", appender(1)),
    Operation("append 50", appender(50)),
    Operation("full read, 1,000 items", full_read),
    Operation("find_sessions first page", first_page),
    Operation("find_sessions deep page", deep_page),
]


async def check_writes(store: Store) -> None:
    """Append, pop, fork and clear on a new session: the statements that draw ids from the
    sequence, order by id and delete by id, on this layout."""
    session = store.manager.get_session(f"check-{secrets.token_hex(4)}")
    first, second = item(0, 0), item(0, 1)
    await session.add_items([first, second])
    check(await session.pop_item(), second, f"{store.name} pop")
    fork = await session.fork(f"fork-{secrets.token_hex(4)}")
    await session.add_items([second])
    check(await fork.get_items(), [first], f"{store.name} fork")
    check(await session.get_items(), [first, second], f"{store.name} after the fork")
    for each in (session, fork):
        await each.clear_session()
        check(await each.get_items(), [], f"{store.name} clear")


# --- measurement --------------------------------------------------------------------------------


def quantiles(samples: list[float]) -> tuple[float, float]:
    """Median and p99 (µs)."""
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered), p99


async def measure(
    stores: list[Store], rounds: int, calls: int
) -> dict[tuple[str, str], list[float]]:
    samples: dict[tuple[str, str], list[float]] = {}
    for r in range(rounds):
        order = stores[r % len(stores) :] + stores[: r % len(stores)]
        for op in OPERATIONS:
            for store in order:
                bucket = samples.setdefault((store.name, op.name), [])
                for c in range(calls):
                    call, verify = op.prepare(store, r * calls + c)
                    start = time.perf_counter_ns()
                    result = await call()
                    bucket.append((time.perf_counter_ns() - start) / 1_000)
                    verify(result)
        print(f"  round {r + 1}/{rounds} done", flush=True)
    # What the appends left: each target session holds its history and then the appended items.
    for store in stores:
        for n in store.targets:
            got = await store.manager.get_session(sid(n)).get_items()
            check(got, store.items_of(n), f"{store.name} {sid(n)} after the appends")
    return samples


async def purge(url: str, stores: list[Store], explain: bool) -> list[str]:
    """``purge_expired`` of the oldest 10% of sessions, twice, then ``VACUUM (ANALYZE)``;
    returns the report's lines (and the purge plans when ``explain``)."""
    import asyncpg

    lines, plans = [], []
    conn = await asyncpg.connect(url)
    try:
        for r in range(PURGE_ROUNDS):
            order = stores if r % 2 == 0 else stores[::-1]
            for store in order:
                share = store.size.sessions // EXPIRED_SHARE
                low, high = sid(r * share), sid((r + 1) * share)
                await conn.execute(
                    f"UPDATE {store.prefix}sessions SET expires_at = now() - interval '1 day' "
                    f"WHERE session_id >= $1 AND session_id < $2",
                    low,
                    high,
                )
                if explain and r == 0 and store.size is stores[0].size:
                    plans.append(await explain_purge(conn, store))
            for store in order:
                share = store.size.sessions // EXPIRED_SHARE
                doomed = sum(store.size.count(n) for n in range(r * share, (r + 1) * share))
                before = await conn.fetchval(f"SELECT count(*) FROM {store.prefix}messages")
                start = time.perf_counter()
                purged = await store.manager.purge_expired(batch_size=1000)
                took = time.perf_counter() - start
                check(purged, share, f"{store.name} purged sessions")
                after = await conn.fetchval(f"SELECT count(*) FROM {store.prefix}messages")
                check(before - after, doomed, f"{store.name} purged messages")
                start = time.perf_counter()
                await conn.execute(f"VACUUM (ANALYZE) {store.prefix}messages")
                vacuum = time.perf_counter() - start
                line = (
                    f"  purge {r + 1} {store.name:14} {share:>6,} sessions, {doomed:>9,} "
                    f"messages: {took:7.2f} s ({share / took:8,.0f} sessions/s, "
                    f"{doomed / took:9,.0f} messages/s); VACUUM (ANALYZE) messages {vacuum:6.2f} s"
                )
                print(line, flush=True)
                lines.append(line)
    finally:
        await conn.close()
    return lines + plans


# --- plans --------------------------------------------------------------------------------------


async def plan(conn: Any, title: str, sql: str, *args: Any) -> str:
    """``EXPLAIN (ANALYZE, BUFFERS)`` of one statement, rolled back."""
    transaction = conn.transaction()
    await transaction.start()
    try:
        rows = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {sql}", *args)
    finally:
        await transaction.rollback()
    return f"-- {title}\n{sql}\n" + "\n".join(row[0] for row in rows)


class _Capture:
    """A connection stand-in that answers ``execute`` with the plan of the statement sent."""

    def __init__(self, conn: Any, title: str) -> None:
        self.conn, self.title, self.text = conn, title, ""

    async def execute(self, sql: str, *args: Any) -> str:
        self.text = await plan(self.conn, self.title, sql, *args)
        return "DELETE 0"


async def explain_purge(conn: Any, store: Store) -> str:
    from agentmem.sql import _lifecycle

    capture = _Capture(conn, f"{store.name}: purge_expired, one batch of 1,000")
    await _lifecycle.postgres_purge_batch(capture, store.prefix, 1000)
    return capture.text


async def explain(url: str, store: Store) -> list[str]:
    import asyncpg

    from agentmem.items import encode_items
    from agentmem.sql._statements import postgres_statements

    sql = postgres_statements(store.prefix)
    size = store.size
    short, long_, full = store.shorts[0], size.sessions - 1, size.special
    encoded = encode_items(appended(0, 1))
    add_args = (
        sid(store.targets[0]),
        [e[0] for e in encoded],
        [e[1] for e in encoded],
        [e[2] for e in encoded],
        None,
        None,
        None,
        None,
        secrets.token_hex(16),
    )
    conn = await asyncpg.connect(url)
    try:
        return [
            await plan(conn, f"{store.name}: newest 20, short", sql.select_newest, sid(short), 20),
            await plan(conn, f"{store.name}: newest 20, long", sql.select_newest, sid(long_), 20),
            await plan(
                conn, f"{store.name}: full read, {size.full_items:,}", sql.select_all, sid(full)
            ),
            await plan(conn, f"{store.name}: append 1", sql.add, *add_args),
            await plan(conn, f"{store.name}: pop", sql.pop, sid(long_), None),
        ]
    finally:
        await conn.close()


# --- the run ------------------------------------------------------------------------------------


def report(stores: list[Store], samples: dict[tuple[str, str], list[float]]) -> None:
    print("\nmedian / p99 of each call, client-side (µs)")
    print(f"  {'operation':28}" + "".join(f"{s.name:>22}" for s in stores))
    for op in OPERATIONS:
        cells = []
        for store in stores:
            median, p99 = quantiles(samples[store.name, op.name])
            cells.append(f"{median:>11,.0f} / {p99:>8,.0f}")
        print(f"  {op.name:28}" + "".join(cells))
    print("\nratios of medians: large/small per layout (flat: ~1), partitioned/plain per size")
    names = [s.name for s in stores]  # large, large-part, small, small-part
    pairs = [(names[0], names[2]), (names[1], names[3]), (names[1], names[0]), (names[3], names[2])]
    print(f"  {'operation':28}" + "".join(f"{a + '/' + b:>28}" for a, b in pairs))
    for op in OPERATIONS:
        medians = {name: quantiles(samples[name, op.name])[0] for name in names}
        print(f"  {op.name:28}" + "".join(f"{medians[a] / medians[b]:>28.2f}" for a, b in pairs))


async def main(argv: list[str] | None = None) -> int:
    import asyncpg

    parser = argparse.ArgumentParser(prog="python -m bench.scale")
    parser.add_argument("--quick", action="store_true", help="small stores (the CI smoke run)")
    parser.add_argument("--partitions", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--calls", type=int, default=None)
    parser.add_argument("--explain", action="store_true", help="PostgreSQL's plans")
    args = parser.parse_args(argv)
    large, small = (QUICK_LARGE, QUICK_SMALL) if args.quick else (LARGE, SMALL)
    rounds = args.rounds or (2 if args.quick else 10)
    calls = args.calls or (3 if args.quick else 50)
    p = args.partitions
    stores = [
        Store("large", "l_", large, 0),
        Store(f"large-hash{p}", "lp_", large, p),
        Store("small", "s_", small, 0),
        Store(f"small-hash{p}", "sp_", small, p),
    ]
    database = f"agentmem_scale_{secrets.token_hex(4)}"
    url = f"{POSTGRES_URL.rsplit('/', 1)[0]}/{database}"
    admin = await asyncpg.connect(POSTGRES_URL)
    await admin.execute(f'CREATE DATABASE "{database}"')
    await admin.close()
    print(f"PostgreSQL at size: {large.messages:,} and {small.messages:,} messages, "
          f"messages as one table and in {p} hash partitions; database {database}")  # fmt: skip
    try:
        await setup(url, stores)
        for store in stores:
            await check_writes(store)
        samples = await measure(stores, rounds, calls)
        report(stores, samples)
        plans = []
        if args.explain:
            for store in stores[:2]:
                plans += await explain(url, store)
        print()
        plans += [line for line in await purge(url, stores, args.explain) if "\n" in line]
        if plans:
            print("\n" + "\n\n".join(plans))
    finally:
        for store in stores:
            if hasattr(store, "manager"):
                await store.manager.close()
        admin = await asyncpg.connect(POSTGRES_URL)
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
