"""The session-manager contract, stated once and run against every backend's manager.

Stores are shared by the tests of a run (the PostgreSQL database), so each test names its
sessions with its own prefix, looks only at those, and deletes them afterwards.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agentmem import SessionClosedError
from agentmem.forks import ForkOrigin, ItemCursor
from agentmem.manager import Conversation
from tests.conftest import MANAGERS, REDIS_PREFIX, REDIS_URL, ManagerCase, unique_id


@pytest.fixture(params=MANAGERS)
def case(request: pytest.FixtureRequest) -> ManagerCase:
    """Each backend's manager in turn (see ``MANAGERS``)."""
    value: ManagerCase = request.getfixturevalue(request.param)
    return value


def at(minutes: int) -> datetime:
    """A fixed time, ``minutes`` after a base far from now (so no live write ties with it)."""
    return datetime(2001, 2, 3, 4, 5, 6, 789012, tzinfo=UTC) + timedelta(minutes=minutes)


async def test_sessions_of_a_manager_share_its_store(case: ManagerCase) -> None:
    session_id = case.new_id()
    first = case.manager.get_session(session_id)
    await first.add_items([{"role": "user", "content": "hello"}])
    second = case.manager.get_session(session_id)
    assert await second.get_items() == [{"role": "user", "content": "hello"}]
    assert second.session_id == session_id


async def test_list_sessions_gives_sorted_ids_and_delete_removes_one(case: ManagerCase) -> None:
    ids = [case.new_id(name) for name in ("c", "a", "b")]
    for session_id in ids:
        await case.manager.get_session(session_id).add_items([{"n": 1}])
    assert await case.mine() == sorted(ids)
    assert await case.manager.delete_session(ids[0]) is True
    assert await case.manager.delete_session(ids[0]) is False
    assert await case.mine() == sorted(ids[1:])
    assert await case.manager.get_session(ids[0]).get_items() == []
    assert await case.manager.get_session(ids[1]).get_items() == [{"n": 1}]


async def test_session_info_counts_items_and_keeps_timestamps(case: ManagerCase) -> None:
    session_id = case.new_id()
    assert await case.manager.session_info(session_id) is None
    session = case.manager.get_session(session_id)
    await session.add_items([{"n": 1}, {"n": 2}, {"n": 3}])
    await session.pop_item()
    info = await case.manager.session_info(session_id)
    assert info is not None
    assert (info.session_id, info.item_count) == (session_id, 2)
    assert info.created_at.tzinfo is not None and info.updated_at.tzinfo is not None
    assert info.created_at <= info.updated_at
    assert abs(datetime.now(UTC) - info.updated_at) < timedelta(minutes=5)


async def test_find_sessions_pages_newest_first_with_a_cursor(case: ManagerCase) -> None:
    # Five sessions updated at known times (two share one, ordered by id), written whole.
    times = {"a": 3, "b": 1, "c": 5, "d": 3, "e": 4}
    for name, minutes in times.items():
        conversation = Conversation(case.new_id(name), [{"n": name}], at(0), at(minutes))
        await case.manager.write_conversation(conversation)
    expected = [case.new_id(name) for name in ("c", "e", "a", "d", "b")]

    seen: list[str] = []
    infos: dict[str, Any] = {}
    cursor: str | None = None
    pages = 0
    while True:
        page = await case.manager.find_sessions(limit=2, cursor=cursor)
        assert len(page.items) <= 2
        seen.extend(info.session_id for info in page.items)
        infos.update((info.session_id, info) for info in page.items)
        pages += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    mine = [session_id for session_id in seen if session_id.startswith(case.prefix)]
    assert mine == expected
    assert len(seen) == len(set(seen))  # no session twice across pages
    # The store holds other tests' sessions too (updated now): the listing's records of these
    # five, as the pages gave them.
    assert infos[expected[0]].updated_at == at(5)
    assert infos[expected[0]].item_count == 1


async def test_iter_sessions_walks_every_page(case: ManagerCase) -> None:
    ids = [case.new_id(str(n)) for n in range(7)]
    for n, session_id in enumerate(ids):
        await case.manager.write_conversation(Conversation(session_id, [], at(n), at(n)))
    walked = [info.session_id async for info in case.manager.iter_sessions(page_size=3)]
    assert [i for i in walked if i.startswith(case.prefix)] == list(reversed(ids))


async def test_existing_sessions_names_the_stored_ones(case: ManagerCase) -> None:
    stored, absent = case.new_id("stored"), case.new_id("absent")
    await case.manager.get_session(stored).add_items([{"n": 1}])
    assert await case.manager.existing_sessions([stored, absent]) == {stored}
    assert await case.manager.existing_sessions([]) == set()


async def test_a_conversation_round_trips_whole_with_its_timestamps(
    case: ManagerCase, sdk_items: list[dict[str, Any]]
) -> None:
    session_id = case.new_id()
    await case.manager.write_conversation(Conversation(session_id, sdk_items, at(1), at(2)))
    read = await case.manager.read_conversation(session_id)
    assert read is not None
    assert read.items == sdk_items
    assert (read.created_at, read.updated_at) == (at(1), at(2))
    assert await case.manager.get_session(session_id).get_items() == sdk_items
    assert await case.manager.read_conversation(case.new_id("absent")) is None


async def test_a_conversation_carries_its_lifecycle(case: ManagerCase) -> None:
    parent, session_id = case.new_id("parent"), case.new_id()
    expires = datetime.now(UTC).replace(microsecond=250000) + timedelta(hours=1)
    written = Conversation(
        session_id,
        [{"n": 1}, {"n": 2}],
        at(1),
        at(2),
        title="Trip",
        metadata={"topic": "billing", "n": [1, {"x": None}]},
        expires_at=expires,
        fork_origin=ForkOrigin(parent, ItemCursor(2)),
    )
    await case.manager.write_conversation(written)
    read = await case.manager.read_conversation(session_id)
    assert read is not None
    assert read.items == written.items
    assert (read.created_at, read.updated_at) == (at(1), at(2))
    assert (read.user_id, read.title, read.metadata) == (None, "Trip", written.metadata)
    assert read.fork_origin == ForkOrigin(parent, ItemCursor(2))
    assert read.expires_at is not None and abs(read.expires_at - expires) < timedelta(seconds=1)
    session = case.manager.get_session(session_id)
    assert await session.fork_origin() == ForkOrigin(parent, ItemCursor(2))
    info = await session.info()
    assert info is not None and (info.title, info.metadata) == ("Trip", written.metadata)

    # Written again without them: the session is replaced whole, its lifecycle with it.
    await case.manager.write_conversation(Conversation(session_id, [{"n": 3}], at(3), at(3)))
    plain = await case.manager.read_conversation(session_id)
    assert plain is not None
    assert (plain.title, plain.metadata, plain.expires_at, plain.fork_origin) == (
        None,
        {},
        None,
        None,
    )


async def test_a_conversation_past_its_expiry_is_written_expired(case: ManagerCase) -> None:
    session_id = case.new_id()
    past = datetime.now(UTC) - timedelta(minutes=1)
    await case.manager.write_conversation(Conversation(session_id, [{"n": 1}], expires_at=past))
    assert await case.manager.read_conversation(session_id) is None
    assert await case.manager.get_session(session_id).get_items() == []


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"user_id": ""}, ValueError),
        ({"title": 5}, TypeError),
        ({"metadata": ["not", "an", "object"]}, TypeError),
        ({"fork_origin": "parent"}, TypeError),
        ({"fork_origin": ForkOrigin("parent", 2)}, TypeError),  # type: ignore[arg-type]
    ],
)
async def test_a_conversation_with_a_bad_lifecycle_writes_nothing(
    case: ManagerCase, fields: dict[str, Any], error: type[Exception]
) -> None:
    session_id = case.new_id()
    with pytest.raises(error):
        await case.manager.write_conversation(Conversation(session_id, [{"n": 1}], **fields))
    assert await case.manager.read_conversation(session_id) is None


async def test_writing_a_conversation_replaces_the_session(case: ManagerCase) -> None:
    session_id = case.new_id()
    await case.manager.get_session(session_id).add_items([{"old": 1}, {"old": 2}])
    await case.manager.write_conversation(Conversation(session_id, [{"new": 1}]))
    assert await case.manager.get_session(session_id).get_items() == [{"new": 1}]
    info = await case.manager.session_info(session_id)
    assert info is not None and info.item_count == 1


async def test_an_empty_conversation_is_a_stored_session(case: ManagerCase) -> None:
    session_id = case.new_id()
    await case.manager.write_conversation(Conversation(session_id, [], at(0), at(0)))
    info = await case.manager.session_info(session_id)
    assert info is not None and info.item_count == 0
    read = await case.manager.read_conversation(session_id)
    assert read is not None and read.items == []


async def test_a_bad_conversation_writes_nothing(case: ManagerCase) -> None:
    session_id = case.new_id()
    await case.manager.get_session(session_id).add_items([{"kept": True}])
    with pytest.raises(TypeError, match="item 1"):
        await case.manager.write_conversation(Conversation(session_id, [{"ok": 1}, {1, 2}]))
    with pytest.raises(ValueError):
        await case.manager.write_conversation(Conversation("", [{"ok": 1}]))
    assert await case.manager.get_session(session_id).get_items() == [{"kept": True}]


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({"limit": 0}, ValueError),
        ({"limit": -1}, ValueError),
        ({"limit": "10"}, TypeError),
        ({"cursor": "not a cursor"}, ValueError),
        ({"cursor": 5}, TypeError),
    ],
)
async def test_find_sessions_refuses_bad_arguments(
    case: ManagerCase, arguments: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        await case.manager.find_sessions(**arguments)


async def test_bad_session_ids_are_refused(case: ManagerCase) -> None:
    calls: list[Callable[[], Any]] = [
        lambda: case.manager.session_info(""),
        lambda: case.manager.delete_session("x" * 256),
        lambda: case.manager.read_conversation("a\x00b"),
        lambda: case.manager.existing_sessions([""]),
    ]
    for call in calls:
        with pytest.raises(ValueError):
            await call()
    with pytest.raises(ValueError):
        case.manager.get_session("")


async def test_close_closes_the_manager_and_its_sessions(case: ManagerCase) -> None:
    session_id = case.new_id()
    async with case.manager as manager:
        session = manager.get_session(session_id)
        await session.add_items([{"n": 1}])
        await manager.delete_session(session_id)
    assert manager.closed
    with pytest.raises(SessionClosedError):
        manager.get_session(session_id)
    with pytest.raises(SessionClosedError):
        await manager.list_sessions()
    with pytest.raises(SessionClosedError):
        await session.get_items()
    await manager.close()  # idempotent


@pytest.mark.cached
async def test_cached_manager_writes_never_leave_a_stale_copy(
    postgres_engine: Any, redis_client: Any
) -> None:
    """A whole-conversation write or a delete through the manager is seen by a session whose
    copy was cached before it."""
    from agentmem import CachedSessionManager, SQLAlchemySessionManager

    manager = CachedSessionManager(
        SQLAlchemySessionManager(postgres_engine), REDIS_URL, key_prefix=f"{REDIS_PREFIX}:cache"
    )
    async with manager:
        session_id = unique_id("cm")
        reader = manager.get_session(session_id)
        await reader.add_items([{"n": 1}])
        assert await reader.get_items() == [{"n": 1}]  # cached now
        assert await redis_client.exists(reader.items_key)
        await manager.write_conversation(Conversation(session_id, [{"n": 2}, {"n": 3}]))
        assert await reader.get_items() == [{"n": 2}, {"n": 3}]
        assert await reader.get_items() == [{"n": 2}, {"n": 3}]  # refilled, hit
        assert await manager.delete_session(session_id) is True
        assert await reader.get_items() == []
        assert await manager.session_info(session_id) is None


async def test_a_cached_manager_refuses_an_in_memory_store() -> None:
    pytest.importorskip("redis")
    from agentmem import CachedSessionManager, SQLiteSessionManager

    store = SQLiteSessionManager()
    with pytest.raises(ValueError, match="in-memory"):
        CachedSessionManager(store)
    with pytest.raises(TypeError, match="SQL manager"):
        CachedSessionManager(object())  # type: ignore[arg-type]
    await store.close()


async def test_times_before_the_year_1000_round_trip_and_list(case: ManagerCase) -> None:
    early = datetime(999, 1, 2, 3, 4, 5, tzinfo=UTC)  # whole seconds: Redis keeps floats
    session_id = case.new_id()
    await case.manager.write_conversation(Conversation(session_id, [{"n": 1}], early, early))
    read = await case.manager.read_conversation(session_id)
    assert read is not None and (read.created_at, read.updated_at) == (early, early)
    listed = [info async for info in case.manager.iter_sessions() if info.session_id == session_id]
    assert [info.updated_at for info in listed] == [early]


@pytest.mark.sqlite
async def test_a_cancelled_sqlite_manager_write_is_over_when_the_cancel_is_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write waits in its worker thread for another connection's write lock; cancelled
    there, the caller hears of the cancel only once the thread's call is over (here: applied
    after the lock is released), never while it can still commit."""
    import asyncio
    import sqlite3
    import threading

    from agentmem import SQLiteSessionManager
    from agentmem.sql import _manage as _sql_manage

    path = tmp_path / "locked.db"
    manager = SQLiteSessionManager(path)
    await manager.upgrade_schema()
    entered = threading.Event()
    original = _sql_manage.sqlite_write

    def write(*args: Any) -> None:
        entered.set()
        original(*args)

    monkeypatch.setattr(_sql_manage, "sqlite_write", write)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        task = asyncio.create_task(manager.write_conversation(Conversation("late", [{"n": 1}])))
        await asyncio.to_thread(entered.wait, 60)
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=0.5)
        assert not done  # the thread still waits for the lock: the cancel is not raised yet
    finally:
        holder.rollback()
        holder.close()
    with pytest.raises(asyncio.CancelledError):
        await task
    read = await manager.read_conversation("late")  # it was applied before the cancel
    assert read is not None and read.items == [{"n": 1}]
    await manager.close()


async def test_a_cached_session_refuses_every_in_memory_sqlite_engine() -> None:
    pytest.importorskip("redis")
    from sqlalchemy.ext.asyncio import create_async_engine

    from agentmem import CachedSession, SQLAlchemySession

    for url in (
        "sqlite+aiosqlite://",
        "sqlite+aiosqlite:///:memory:",
        "sqlite+aiosqlite:///file:cache-test?mode=memory&cache=shared&uri=true",
    ):
        engine = create_async_engine(url)
        with pytest.raises(ValueError, match="in-memory"):
            CachedSession(SQLAlchemySession(engine, "s"))
        await engine.dispose()


async def test_fork_session_copies_one_session_into_a_new_one(case: ManagerCase) -> None:
    from agentmem.forks import ForkOrigin, ItemCursor

    source, new_id = case.new_id("source"), case.new_id("fork")
    session = case.manager.get_session(source)
    await session.add_items([{"n": 1}, {"n": 2}, {"n": 3}])

    origin = await case.manager.fork_session(source, new_id, ItemCursor.first(2))

    assert origin == ForkOrigin(source, ItemCursor(2))
    assert (await case.manager.read_conversation(new_id)).items == [{"n": 1}, {"n": 2}]  # type: ignore[union-attr]
    assert await session.get_items() == [{"n": 1}, {"n": 2}, {"n": 3}]
    with pytest.raises(ValueError, match="already holds items"):
        await case.manager.fork_session(source, new_id)
    with pytest.raises(LookupError, match="no session"):
        await case.manager.fork_session(case.new_id("missing"), case.new_id("other"))
    assert sorted(await case.mine()) == sorted([source, new_id])


async def test_get_session_takes_the_window_default(case: ManagerCase) -> None:
    items = [
        {"role": "user", "content": "q"},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "1"},
        {"role": "assistant", "content": "a"},
    ]
    session_id = case.new_id()
    turns = case.manager.get_session(session_id, whole_turns=True)
    pairs = case.manager.get_session(session_id, whole_pairs=True)
    await turns.add_items(items)

    assert (turns.window_mode, pairs.window_mode) == ("turns", "pairs")
    assert await turns.get_items(limit=1) == items
    assert await pairs.get_items(limit=2) == items[1:]
    assert await case.manager.get_session(session_id).get_items(limit=2) == items[2:]


async def test_close_called_plainly_closes_the_manager_and_its_sessions(case: ManagerCase) -> None:
    import warnings

    session = case.manager.get_session(case.new_id())
    await session.add_items([{"role": "user", "content": "hi"}])
    await session.clear_session()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        handle = case.manager.close()  # the SDK's synchronous style
        assert case.manager.closed and session.closed
        me = asyncio.current_task()
        await asyncio.gather(*(t for t in asyncio.all_tasks() if t is not me))
        assert handle.done()
        await case.manager.close()  # awaited after: the same, finished handle
