"""The session lifecycle contract, stated once and run over every backend's manager: info and
owners, finding and counting sessions, expiry and purge, retention, paging through a history.

Expiry is never raced: a session is written with a TTL of a few milliseconds, and the test polls
(with a generous deadline) until the store says it has expired; nothing asserts that it has not
expired yet unless its TTL is an hour.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from datetime import timedelta
from typing import Any

import pytest

from agentmem import SessionInfo
from agentmem.manager import Conversation
from tests import _lifecycle_workers
from tests.conftest import MANAGERS, ManagerCase, unique_id

HOUR = 3600
TINY_TTL = 0.005
DEADLINE_SECONDS = 60.0


@pytest.fixture(params=MANAGERS)
def case(request: pytest.FixtureRequest) -> ManagerCase:
    """Each backend's manager in turn (``MANAGERS`` of test_managers)."""
    value: ManagerCase = request.getfixturevalue(request.param)
    return value


async def eventually(check: Callable[[], Awaitable[bool]]) -> None:
    """Poll ``check`` until it holds; fail only after a deadline no busy machine reaches."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not await check():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.01)


async def expired(case: ManagerCase, session_id: str) -> None:
    async def gone() -> bool:
        return await case.manager.session_info(session_id) is None

    await eventually(gone)


# --- info ---------------------------------------------------------------------------------------


async def test_info_given_at_creation_is_stored_with_the_first_write(case: ManagerCase) -> None:
    user = unique_id("u")
    session = case.manager.get_session(
        case.new_id(), user_id=user, title="Billing", metadata={"topic": "billing", "n": 1}
    )
    assert await session.info() is None  # nothing stored before a write
    await session.add_items([{"role": "user", "content": "hi"}])
    info = await session.info()
    assert isinstance(info, SessionInfo)
    assert (info.user_id, info.title, info.metadata) == (
        user,
        "Billing",
        {"topic": "billing", "n": 1},
    )
    assert info.item_count == 1
    assert info.expires_at is None
    assert await case.manager.session_info(session.session_id) == info


async def test_update_info_changes_only_the_given_fields(case: ManagerCase) -> None:
    user = unique_id("u")
    session = case.manager.get_session(case.new_id(), user_id=user, title="T", metadata={"a": 1})
    await session.add_items([{"n": 1}])
    info = await session.update_info(title="New")
    assert (info.user_id, info.title, info.metadata) == (user, "New", {"a": 1})
    info = await session.update_info(metadata={"b": 2}, user_id=None)
    assert (info.user_id, info.title, info.metadata) == (None, "New", {"b": 2})
    assert await session.info() == info
    assert await session.get_items() == [{"n": 1}]


async def test_a_session_without_items_can_carry_info(case: ManagerCase) -> None:
    user = unique_id("u")
    session = case.manager.get_session(case.new_id())
    info = await session.update_info(user_id=user, title="Draft")
    assert (info.item_count, info.user_id, info.title) == (0, user, "Draft")
    page = await case.manager.find_sessions(user_id=user)
    assert [i.session_id for i in page.items] == [session.session_id]
    assert await case.manager.count_sessions(user) == 1


async def test_update_info_of_a_new_session_keeps_the_info_given_at_creation(
    case: ManagerCase,
) -> None:
    user = unique_id("u")
    session = case.manager.get_session(case.new_id(), user_id=user, title="Given")
    info = await session.update_info(metadata={"k": 1})
    assert (info.user_id, info.title, info.metadata) == (user, "Given", {"k": 1})
    assert info.item_count == 0


async def test_bad_info_is_refused_before_anything_is_written(case: ManagerCase) -> None:
    session = case.manager.get_session(case.new_id())
    with pytest.raises(TypeError):
        await session.update_info(metadata=["not", "an", "object"])  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        await session.update_info(title="")
    with pytest.raises(ValueError):
        case.manager.get_session(case.new_id(), user_id="x" * 256)
    with pytest.raises(ValueError):
        case.manager.get_session(case.new_id(), ttl=0)
    with pytest.raises(ValueError):
        case.manager.get_session(case.new_id(), max_items=0)
    assert await session.info() is None


# --- find and count -----------------------------------------------------------------------------


async def test_find_sessions_pages_one_owner_newest_activity_first(case: ManagerCase) -> None:
    user, other = unique_id("u"), unique_id("u")
    ids = [case.new_id(f"{n:02d}") for n in range(7)]
    for session_id in ids:
        await case.manager.get_session(session_id, user_id=user).add_items([{"id": session_id}])
    await case.manager.get_session(case.new_id("other"), user_id=other).add_items([{"n": 1}])
    await case.manager.get_session(ids[0], user_id=user).add_items([{"again": True}])
    expected = [ids[0], *reversed(ids[1:])]

    seen: list[str] = []
    cursor: str | None = None
    while True:
        page = await case.manager.find_sessions(user_id=user, limit=3, cursor=cursor)
        assert len(page.items) <= 3
        seen.extend(info.session_id for info in page.items)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == expected
    assert all(i.user_id == user for i in (await case.manager.find_sessions(user_id=user)).items)
    assert await case.manager.count_sessions(user) == 7
    assert await case.manager.count_sessions(other) == 1
    assert await case.manager.count_sessions() >= 8


async def test_a_replacement_is_activity_like_any_write(case: ManagerCase) -> None:
    user = unique_id("u")
    older = case.manager.get_session(case.new_id("older"), user_id=user)
    newer = case.manager.get_session(case.new_id("newer"), user_id=user)
    await older.add_items([{"n": 1}, {"n": 2}])
    await newer.add_items([{"n": 1}])
    before = await older.info()
    assert before is not None
    assert await older.replace_items([{"summary": 1}], newest=2)
    after = await older.info()
    assert after is not None and after.updated_at > before.updated_at
    for owner in (user, None):
        page = await case.manager.find_sessions(user_id=owner, limit=1000)
        mine = [i.session_id for i in page.items if i.session_id.startswith(case.prefix)]
        assert mine == [older.session_id, newer.session_id]


async def test_find_sessions_filters_by_metadata_containment(case: ManagerCase) -> None:
    user = unique_id("u")
    billing = case.manager.get_session(
        case.new_id("b"), user_id=user, metadata={"topic": "billing", "tier": 2, "vip": True}
    )
    support = case.manager.get_session(
        case.new_id("s"), user_id=user, metadata={"topic": "support"}
    )
    for session in (billing, support):
        await session.add_items([{"n": 1}])

    async def found(**metadata: Any) -> list[str]:
        page = await case.manager.find_sessions(user_id=user, metadata=metadata)
        return [info.session_id for info in page.items]

    assert await found(topic="billing") == [billing.session_id]
    assert await found(topic="billing", tier=2) == [billing.session_id]
    assert await found(vip=True) == [billing.session_id]
    assert await found(vip=False) == []
    assert await found(tier="2") == []
    assert await found(topic="nothing") == []
    assert sorted(await found()) == sorted([billing.session_id, support.session_id])
    with pytest.raises(TypeError):
        await case.manager.find_sessions(metadata={"nested": {"a": 1}})


async def test_list_sessions_keeps_its_meaning(case: ManagerCase) -> None:
    session = case.manager.get_session(case.new_id(), user_id=unique_id("u"), title="T")
    await session.add_items([{"n": 1}])
    assert await case.mine() == [session.session_id]


async def test_a_written_conversation_keeps_its_owner_and_is_listed_under_it(
    case: ManagerCase,
) -> None:
    user, other = unique_id("u"), unique_id("u")
    session_id = case.new_id()
    await case.manager.get_session(session_id, user_id=other).add_items([{"n": 0}])
    conversation = Conversation(session_id, [{"n": 1}], user_id=user, metadata={"k": "v"})
    await case.manager.write_conversation(conversation)
    read = await case.manager.read_conversation(session_id)
    assert read is not None and (read.user_id, read.metadata) == (user, {"k": "v"})
    page = await case.manager.find_sessions(user_id=user, metadata={"k": "v"})
    assert [info.session_id for info in page.items] == [session_id]
    assert await case.manager.count_sessions(user) == 1
    # The session it replaced was the other owner's: it is no longer listed under them.
    assert (await case.manager.find_sessions(user_id=other)).items == []
    assert await case.manager.count_sessions(other) == 0


# --- expiry and purge ---------------------------------------------------------------------------


async def test_an_expired_session_reads_empty_and_is_neither_listed_nor_counted(
    case: ManagerCase,
) -> None:
    user = unique_id("u")
    session = case.manager.get_session(case.new_id(), user_id=user, ttl=TINY_TTL)
    await session.add_items([{"n": 1}, {"n": 2}])
    await expired(case, session.session_id)
    assert await session.get_items() == []
    assert await session.pop_item() is None
    assert await session.info() is None
    assert (await session.get_page()).items == []
    assert session.session_id not in await case.mine()
    assert (await case.manager.find_sessions(user_id=user)).items == []
    assert await case.manager.count_sessions(user) == 0


async def test_an_expired_session_reads_empty_through_windows(case: ManagerCase) -> None:
    session = case.manager.get_session(case.new_id(), ttl=TINY_TTL)
    await session.add_items([{"role": "user", "content": "hi"}, {"role": "assistant", "n": 2}])
    await expired(case, session.session_id)
    assert await session.get_items(1, whole_pairs=True) == []
    assert await session.get_items(1, whole_turns=True) == []
    assert (await session.get_page(limit=1)).items == []


async def test_a_write_to_an_expired_session_starts_a_fresh_history(case: ManagerCase) -> None:
    user = unique_id("u")
    session_id = case.new_id()
    old = case.manager.get_session(session_id, user_id=user, title="old", ttl=TINY_TTL)
    await old.add_items([{"old": 1}, {"old": 2}])
    await expired(case, session_id)
    fresh = case.manager.get_session(session_id, title="new", ttl=HOUR)
    await fresh.add_items([{"new": 1}])
    assert await fresh.get_items() == [{"new": 1}]
    info = await fresh.info()
    assert info is not None
    assert (info.item_count, info.user_id, info.title) == (1, None, "new")
    assert info.expires_at is not None


async def test_ttl_slides_on_write_and_sets_expires_at(case: ManagerCase) -> None:
    session = case.manager.get_session(case.new_id(), ttl=timedelta(hours=1))
    await session.add_items([{"n": 1}])
    first = await session.info()
    await session.add_items([{"n": 2}])
    second = await session.info()
    assert first is not None and second is not None
    assert first.expires_at is not None and second.expires_at is not None
    assert second.expires_at >= first.expires_at
    assert timedelta(minutes=59) < second.expires_at - second.updated_at < timedelta(minutes=61)


async def test_touch_on_read_slides_the_expiry(case: ManagerCase) -> None:
    session = case.manager.get_session(case.new_id(), ttl=HOUR)
    await session.add_items([{"n": 1}])
    before = await session.info()
    assert before is not None and before.expires_at is not None
    case.manager.touch_on_read = True  # as a manager made with touch_on_read=True
    reader = case.manager.get_session(session.session_id, ttl=2 * HOUR)
    case.manager.touch_on_read = False
    assert reader.lifecycle.touch_on_read
    assert await reader.get_items() == [{"n": 1}]
    after = await session.info()
    assert after is not None and after.expires_at is not None
    assert after.expires_at - before.expires_at > timedelta(minutes=30)
    assert after.updated_at == before.updated_at  # a read is not activity


async def test_purge_expired_deletes_only_expired_sessions(case: ManagerCase) -> None:
    user = unique_id("u")
    doomed = [case.new_id(f"d{n}") for n in range(5)]
    for session_id in doomed:
        await case.manager.get_session(session_id, user_id=user, ttl=TINY_TTL).add_items([{"n": 1}])
    kept = case.manager.get_session(case.new_id("kept"), user_id=user, ttl=HOUR)
    await kept.add_items([{"n": 1}])
    forever = case.manager.get_session(case.new_id("forever"), user_id=user)
    await forever.add_items([{"n": 1}])
    for session_id in doomed:
        await expired(case, session_id)
    batches: list[int] = []
    assert await case.manager.purge_expired(batch_size=2, on_batch=batches.append) >= 5
    assert sum(batches) >= 5 and max(batches) <= 2
    assert sorted(await case.mine()) == sorted([kept.session_id, forever.session_id])
    assert await kept.get_items() == [{"n": 1}]
    for session_id in doomed:  # their rows (on Redis: keys) are gone, not merely hidden
        assert await case.manager.delete_session(session_id) is False
    with pytest.raises(ValueError):
        await case.manager.purge_expired(batch_size=0)


# --- retention ----------------------------------------------------------------------------------


async def test_max_items_drops_the_oldest_in_the_same_write(case: ManagerCase) -> None:
    session = case.manager.get_session(case.new_id(), max_items=3)
    await session.add_items([{"n": n} for n in range(2)])
    await session.add_items([{"n": n} for n in range(2, 5)])
    assert await session.get_items() == [{"n": 2}, {"n": 3}, {"n": 4}]
    await session.add_items([{"n": n} for n in range(5, 10)])
    assert await session.get_items() == [{"n": 7}, {"n": 8}, {"n": 9}]
    assert await session.pop_item() == {"n": 9}
    assert await session.get_items(limit=1) == [{"n": 8}]
    info = await session.info()
    assert info is not None and info.item_count == 2


# --- paging through one history -----------------------------------------------------------------


async def test_get_page_scrolls_back_and_its_cursors_survive_appends(case: ManagerCase) -> None:
    session = case.manager.get_session(case.new_id())
    await session.add_items([{"n": n} for n in range(10)])
    newest = await session.get_page(limit=4)
    assert newest.items == [{"n": n} for n in range(6, 10)]
    assert newest.before is not None
    await session.add_items([{"n": n} for n in range(10, 15)])  # appends keep cursors valid
    middle = await session.get_page(limit=4, before=newest.before)
    assert middle.items == [{"n": n} for n in range(2, 6)]
    assert middle.before is not None
    oldest = await session.get_page(limit=4, before=middle.before)
    assert oldest.items == [{"n": 0}, {"n": 1}]
    assert oldest.before is None
    whole = await session.get_page(limit=100)
    assert whole.items == [{"n": n} for n in range(15)] and whole.before is None
    with pytest.raises(ValueError):
        await session.get_page(limit=0)
    with pytest.raises(ValueError):
        await session.get_page(before="not a cursor")


# --- two processes ------------------------------------------------------------------------------


@pytest.fixture(
    params=[
        pytest.param("sqlite", marks=pytest.mark.sqlite),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
def shared_store(request: pytest.FixtureRequest, tmp_path: Any) -> tuple[str, str]:
    """(kind, target) of a store two processes open: a SQLite file or PostgreSQL."""
    if request.param == "sqlite":
        return "sqlite", str(tmp_path / "lifecycle.db")
    url: str = request.getfixturevalue("postgres_url")
    return "postgres", url


@pytest.fixture(scope="module")
def process() -> Iterator[ProcessPoolExecutor]:
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


async def test_expiry_and_purge_are_seen_from_another_process(
    shared_store: tuple[str, str], process: ProcessPoolExecutor
) -> None:
    kind, target = shared_store
    user = unique_id("u")
    doomed, kept = unique_id("doomed"), unique_id("kept")
    async with _lifecycle_workers.open_manager(kind, target) as manager:
        await manager.get_session(doomed, user_id=user, ttl=TINY_TTL).add_items([{"n": 1}])
        await manager.get_session(kept, user_id=user, ttl=HOUR).add_items([{"n": 2}])

        async def other_sees_it_expired() -> bool:
            seen = await asyncio.wrap_future(
                process.submit(_lifecycle_workers.read_session, kind, target, doomed)
            )
            return bool(seen == ([], None))

        await eventually(other_sees_it_expired)
        purged = await asyncio.wrap_future(process.submit(_lifecycle_workers.purge, kind, target))
        assert purged >= 1
        assert await manager.existing_sessions([doomed, kept]) == {kept}
        assert await manager.count_sessions(user) == 1
        assert await manager.delete_session(doomed) is False  # the purge deleted its row
        await manager.delete_session(kept)


@pytest.fixture(scope="module")
def two_processes() -> Iterator[ProcessPoolExecutor]:
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


async def test_two_processes_purge_at_once_without_double_work(
    shared_store: tuple[str, str], two_processes: ProcessPoolExecutor
) -> None:
    kind, target = shared_store
    async with _lifecycle_workers.open_manager(kind, target) as manager:
        await manager.purge_expired()  # what earlier tests left expired
        ids = [unique_id("purge") for _ in range(60)]
        for session_id in ids:
            await manager.get_session(session_id, ttl=TINY_TTL).add_items([{"n": 1}])

        async def all_expired() -> bool:
            return not await manager.existing_sessions(ids)

        await eventually(all_expired)
        purges = [
            asyncio.wrap_future(two_processes.submit(_lifecycle_workers.purge, kind, target))
            for _ in range(2)
        ]
        counts = await asyncio.gather(*purges)
        assert sum(counts) == len(ids)  # each expired session deleted once, by one of them
        assert await manager.existing_sessions(ids) == set()


# --- the SQLAlchemy Core path (postgresql+psycopg) ----------------------------------------------


@pytest.mark.postgres
async def test_psycopg_writes_keep_the_item_count(postgres_url: str) -> None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.ext.asyncio import create_async_engine

    from agentmem import SQLAlchemySession, SQLAlchemySessionManager
    from agentmem.migrate import async_url

    url = make_url(async_url(postgres_url)).set(drivername="postgresql+psycopg")
    engine = create_async_engine(url)
    manager = SQLAlchemySessionManager.from_url(postgres_url)
    session = SQLAlchemySession(engine, unique_id("psycopg"))
    try:
        await session.add_items([{"n": 1}, {"n": 2}])
        await session.add_items([{"n": n} for n in range(3, 1003)])
        await session.pop_item()
        assert await session.get_items(2) == [{"n": 1000}, {"n": 1001}]
        info = await manager.session_info(session.session_id)
        assert info is not None and info.item_count == 1001
        await session.clear_session()
    finally:
        await session.close()
        await manager.close()
        await engine.dispose()
