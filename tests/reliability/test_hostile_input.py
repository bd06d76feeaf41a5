"""Hostile input on every backend: ids built to reach other sessions' data, items at and past
the stated limits, and a fuzz run of random ids and JSON items."""

from __future__ import annotations

import asyncio
import enum
import uuid
from typing import Any

import pytest
from hypothesis import given

from agentmem import RedisSessionManager, Session
from tests.conftest import unique_id
from tests.reliability import _strategies
from tests.reliability._stores import PROFILE, Store

# --- ids that try to reach other sessions ------------------------------------------------------

REACHING_IDS = [
    "*",
    "?",
    "[a-z]*",
    "\\*",
    "{x}",
    "}{",
    "{",
    "%7B%7D",
    "' OR '1'='1",
    "x'; DELETE FROM messages; --",
    "a%",
    "_",
    "line\nbreak\r\n",
    "\t ",
    "é" * 255,
    "🙂" * 255,
]


@pytest.mark.parametrize("hostile", REACHING_IDS)
async def test_an_id_cannot_read_or_clear_another_sessions_data(
    any_store: Store, hostile: str
) -> None:
    """Neighbours are ids a pattern, a LIKE, a hash tag or an injected clause would also match."""
    tag = unique_id("")[-12:]
    neighbours = [f"a{tag}", f"b{tag}", f"{{{tag}}}", f"%{tag}", f"x{tag}"]
    sessions: list[Session] = []
    try:
        for sid in neighbours:
            sessions.append(session := any_store.open(sid))
            await session.add_items([{"owner": sid}])
        sessions.append(attacker := any_store.open(hostile))
        await attacker.clear_session()
        assert await attacker.get_items() == []
        await attacker.add_items([{"owner": hostile}])
        assert await attacker.get_items() == [{"owner": hostile}]
        assert await attacker.pop_item() == {"owner": hostile}
        assert await attacker.pop_item() is None
        await attacker.clear_session()
        for sid, session in zip(neighbours, sessions, strict=False):
            assert await session.get_items() == [{"owner": sid}], f"{hostile!r} reached {sid!r}"
    finally:
        for session in sessions:
            await session.clear_session()
            await session.close()  # type: ignore[attr-defined]


@pytest.mark.redis
async def test_redis_list_and_delete_take_glob_and_hash_tag_ids_literally(
    redis_store: Store,
) -> None:
    prefix = f"{redis_store.prefix}:{unique_id('mgr')}"
    ids = ["*", "?", "[ab]", "{a}", "}", "a", "b", "{", "%7B", "a*", "\\*"]
    async with RedisSessionManager(
        redis_store.redis_url,
        session_prefix=f"{prefix}:session",
        messages_prefix=f"{prefix}:messages",
    ) as manager:
        for sid in ids:
            await manager.get_session(sid).add_items([{"owner": sid}])
        assert await manager.list_sessions() == sorted(ids)
        assert await manager.delete_session("*") is True
        assert await manager.delete_session("{a}") is True
        assert await manager.delete_session("[ab]") is True
        assert await manager.list_sessions() == sorted(set(ids) - {"*", "{a}", "[ab]"})
        for sid in set(ids) - {"*", "{a}", "[ab]"}:
            assert await manager.get_session(sid).get_items() == [{"owner": sid}]
            await manager.delete_session(sid)


# --- items at and past the limits --------------------------------------------------------------


def _nested(depth: int) -> dict[str, Any]:
    """An item ``depth`` levels deep (the item itself is level 1)."""
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


async def test_nesting_up_to_254_levels_round_trips_and_10000_is_refused(
    any_store: Store,
) -> None:
    session = any_store.open(unique_id("deep"))
    try:
        deepest = _nested(254)
        await session.add_items([deepest])
        for depth in (255, 10_000):
            with pytest.raises(TypeError, match="item 1 is not valid JSON: Recursion limit"):
                await session.add_items([{"ok": 1}, _nested(depth)])
        assert await session.get_items() == [deepest]
        await session.clear_session()
    finally:
        await session.close()  # type: ignore[attr-defined]


async def test_integers_at_the_64_bit_edges(any_store: Store) -> None:
    session = any_store.open(unique_id("ints"))
    try:
        edges = {"min": -(2**63), "max_signed": 2**63 - 1, "max_unsigned": 2**64 - 1}
        await session.add_items([edges])
        for bad in (-(2**63) - 1, 2**64, 10**100):
            with pytest.raises(TypeError, match="64-bit"):
                await session.add_items([{"v": bad}])
        assert await session.get_items() == [edges]
        await session.clear_session()
    finally:
        await session.close()  # type: ignore[attr-defined]


class Colour(enum.Enum):
    RED = "red"


@pytest.mark.xfail(
    strict=True,
    reason="orjson serializes Enum members and UUIDs natively (no passthrough option for them), "
    "so encode_items stores Colour.RED as 'red' and a UUID as its string instead of refusing "
    "them: they come back unequal",
)
@pytest.mark.parametrize("value", [Colour.RED, uuid.UUID(int=7)], ids=["enum", "uuid"])
async def test_enum_and_uuid_values_are_refused(value: Any) -> None:
    """(Validation is shared by every backend: one is enough to show it.)"""
    async with Store("sqlite-memory").open(unique_id("enum")) as session:  # type: ignore[attr-defined]
        with pytest.raises(TypeError, match="item 0"):
            await session.add_items([{"v": value}])
        assert await session.get_items() == []


@pytest.mark.slow
async def test_a_20_mb_string_round_trips(any_store: Store) -> None:
    session = any_store.open(unique_id("big"))
    try:
        big = {"role": "tool", "content": "\u00e9x\U0001f642" * 7_000_000 + "end"}  # 21 M chars
        await session.add_items([{"n": 1}, big])
        assert await session.get_items(limit=1) == [big]
        assert await session.pop_item() == big
        assert await session.get_items() == [{"n": 1}]
        await session.clear_session()
    finally:
        await session.close()  # type: ignore[attr-defined]


@pytest.mark.slow
async def test_100_000_items_in_one_batch(any_store: Store) -> None:
    session = any_store.open(unique_id("many"))
    try:
        items = [{"role": "user", "content": f"message {n}", "n": n} for n in range(100_000)]
        await session.add_items([{"first": True}])
        await session.add_items(items)
        history = await session.get_items()
        assert history == [{"first": True}, *items]
        assert await session.get_items(limit=3) == items[-3:]
        bad = [*items[:50_000], {"v": float("nan")}, *items[50_000:]]
        with pytest.raises(ValueError, match="item 50000"):
            await session.add_items(bad)
        assert len(await session.get_items()) == 100_001  # nothing of the bad batch
        await session.clear_session()
    finally:
        await session.close()  # type: ignore[attr-defined]


# --- fuzz --------------------------------------------------------------------------------------


def _id_error(session_id: str) -> type[Exception] | None:
    if not session_id or len(session_id) > 255 or "\x00" in session_id:
        return ValueError
    try:
        session_id.encode("utf-8")
    except UnicodeEncodeError:
        return ValueError
    return None


def test_fuzz_random_ids_and_items(any_store: Store) -> None:
    """Any string as an id is either refused with ValueError or stored exactly; any list of
    JSON objects round-trips; a neighbour session is never touched."""

    with asyncio.Runner() as runner:
        neighbour = any_store.open(unique_id("neighbour"))
        runner.run(neighbour.add_items([{"mine": True}]))

        @PROFILE
        @given(
            session_id=_strategies.any_strings | _strategies.session_ids,
            batches=_strategies.st.lists(
                _strategies.st.lists(_strategies.items, max_size=5), max_size=3
            ),
        )
        def check(session_id: str, batches: list[list[dict[str, Any]]]) -> None:
            error = _id_error(session_id)
            if error is not None:
                with pytest.raises(error, match="session_id"):
                    any_store.open(session_id)
                return
            session = any_store.open(session_id)

            async def round_trip() -> None:
                try:
                    await session.clear_session()
                    for batch in batches:
                        await session.add_items(batch)
                    expected = [item for batch in batches for item in batch]
                    assert session.session_id == session_id
                    assert await session.get_items() == expected
                    assert await session.get_items(limit=2) == expected[-2:]
                    await session.clear_session()
                    assert await neighbour.get_items() == [{"mine": True}]
                finally:
                    await session.close()  # type: ignore[attr-defined]

            runner.run(round_trip())

        try:
            check()
        finally:
            runner.run(neighbour.clear_session())
            runner.run(neighbour.close())  # type: ignore[attr-defined]
