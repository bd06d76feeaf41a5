"""Forks, on every backend of the contract suite: ``session.fork(new_id, upto=None)``."""

from __future__ import annotations

from typing import Any

import pytest

from agentmem.forks import ForkOrigin, ItemCursor
from tests.conftest import SessionFactory, unique_id

ITEMS: list[dict[str, Any]] = [
    {"role": "user", "content": "one"},
    {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
    {"type": "function_call_output", "call_id": "c1", "output": "1"},
    {"role": "assistant", "content": "two"},
    {"role": "user", "content": "three"},
]


async def dispose(fork: Any) -> None:
    await fork.clear_session()
    await fork.close()


async def test_a_fork_copies_the_history_and_records_its_origin(
    make_session: SessionFactory,
) -> None:
    session = await make_session()
    await session.add_items(ITEMS)

    fork = await session.fork(unique_id("fork"))  # type: ignore[attr-defined]
    try:
        assert type(fork) is type(session)
        assert fork.session_id != session.session_id
        assert await fork.get_items() == ITEMS
        assert await fork.fork_origin() == ForkOrigin(session.session_id, ItemCursor(5))
        assert await session.fork_origin() is None  # type: ignore[attr-defined]
        await fork.clear_session()
        assert await fork.fork_origin() is None
    finally:
        await dispose(fork)


async def test_a_fork_upto_a_cursor_copies_the_items_before_it(
    make_session: SessionFactory,
) -> None:
    session = await make_session()
    await session.add_items(ITEMS)

    first = await session.fork(unique_id("fork"), upto=ItemCursor.first(3))  # type: ignore[attr-defined]
    second = await session.fork(unique_id("fork"), upto=str(ItemCursor.first(0)))  # type: ignore[attr-defined]
    beyond = await session.fork(unique_id("fork"), upto=ItemCursor.first(99))  # type: ignore[attr-defined]
    try:
        assert await first.get_items() == ITEMS[:3]
        assert (await first.fork_origin()).fork_point == ItemCursor(3)
        assert await second.get_items() == []
        assert await second.fork_origin() == ForkOrigin(session.session_id, ItemCursor(0))
        again = await session.fork(second.session_id)  # type: ignore[attr-defined]
        assert await again.get_items() == ITEMS  # an id stored without items may be forked onto
        assert await again.fork_origin() == ForkOrigin(session.session_id, ItemCursor(5))
        await again.close()
        assert await beyond.get_items() == ITEMS
        assert (await beyond.fork_origin()).fork_point == ItemCursor(5)
    finally:
        for fork in (first, second, beyond):
            await dispose(fork)


async def test_writing_to_either_never_changes_the_other(make_session: SessionFactory) -> None:
    session = await make_session()
    await session.add_items(ITEMS)
    fork = await session.fork(unique_id("fork"))  # type: ignore[attr-defined]
    try:
        await fork.add_items([{"role": "user", "content": "only in the fork"}])
        await session.add_items([{"role": "user", "content": "only in the parent"}])
        assert await fork.pop_item() == {"role": "user", "content": "only in the fork"}
        assert await fork.pop_item() == ITEMS[-1]

        assert await session.get_items() == [
            *ITEMS,
            {"role": "user", "content": "only in the parent"},
        ]
        assert await fork.get_items() == ITEMS[:-1]
        await session.clear_session()
        assert await fork.get_items() == ITEMS[:-1]
    finally:
        await dispose(fork)


async def test_forking_onto_a_session_with_items_raises_and_writes_nothing(
    make_session: SessionFactory,
) -> None:
    session = await make_session()
    await session.add_items(ITEMS)
    taken = await session.fork(unique_id("taken"), upto=ItemCursor.first(1))  # type: ignore[attr-defined]
    try:
        await taken.add_items([{"role": "user", "content": "mine"}])

        with pytest.raises(ValueError, match="already holds items"):
            await session.fork(taken.session_id)  # type: ignore[attr-defined]
        with pytest.raises(ValueError, match="onto itself"):
            await session.fork(session.session_id)  # type: ignore[attr-defined]
        with pytest.raises(TypeError, match="upto"):
            await session.fork(unique_id("fork"), upto=3)  # type: ignore[attr-defined]
        with pytest.raises(ValueError, match="not an item cursor"):
            await session.fork(unique_id("fork"), upto="bogus")  # type: ignore[attr-defined]

        assert await taken.get_items() == [ITEMS[0], {"role": "user", "content": "mine"}]
        assert await taken.fork_origin() == ForkOrigin(session.session_id, ItemCursor(1))
        assert await session.get_items() == ITEMS
    finally:
        await dispose(taken)


async def test_a_fork_replaces_what_a_reader_saw_of_its_id(make_session: SessionFactory) -> None:
    session = await make_session()
    await session.add_items(ITEMS)
    new_id = unique_id("fork")
    reader = await make_session(new_id)
    assert await reader.get_items() == []  # a cached session caches the empty history

    fork = await session.fork(new_id)  # type: ignore[attr-defined]
    try:
        if getattr(reader, "db_path", None) != ":memory:":  # not a private in-memory database
            assert await reader.get_items() == ITEMS
        assert await fork.get_items() == ITEMS
    finally:
        await dispose(fork)


async def test_a_fork_keeps_the_session_options(make_session: SessionFactory) -> None:
    session = await make_session(whole_turns=True, session_settings={"limit": 1})
    await session.add_items(ITEMS)
    fork = await session.fork(unique_id("fork"))  # type: ignore[attr-defined]
    try:
        assert fork.window_mode == "turns"
        assert await fork.get_items() == ITEMS[-1:]  # the limit of 1 starts at a user message
        assert await fork.get_items(limit=2) == ITEMS
    finally:
        await dispose(fork)


def test_item_cursors_round_trip_their_text_form() -> None:
    cursor = ItemCursor.first(42)
    assert ItemCursor.parse(str(cursor)) == cursor
    with pytest.raises(ValueError):
        ItemCursor(-1)
    with pytest.raises(ValueError):
        ItemCursor.parse("")
    with pytest.raises(TypeError):
        ItemCursor.parse(42)
