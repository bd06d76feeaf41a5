"""The Session contract, stated once and run against every backend (see ``BACKENDS``).

Select one backend with its marker: ``pytest -m sqlite`` needs no server.
"""

from __future__ import annotations

import asyncio
import math
from datetime import datetime
from typing import Any

import pytest

from agentmem import Session, SessionClosedError
from tests.conftest import SessionFactory, unique_id


async def test_is_an_agents_sdk_session(make_session: SessionFactory) -> None:
    from agents.memory.session import Session as SDKSession

    session = await make_session()
    assert isinstance(session, SDKSession)
    assert isinstance(session, Session)
    assert session.session_settings is None or hasattr(session.session_settings, "limit")


async def test_new_session_is_empty(make_session: SessionFactory) -> None:
    session = await make_session()
    assert await session.get_items() == []
    assert await session.get_items(limit=5) == []
    assert await session.pop_item() is None


async def test_items_come_back_oldest_first(make_session: SessionFactory) -> None:
    session = await make_session()
    await session.add_items([{"n": 1}, {"n": 2}])
    await session.add_items([{"n": 3}])
    assert await session.get_items() == [{"n": 1}, {"n": 2}, {"n": 3}]


async def test_limit_returns_newest_oldest_first(make_session: SessionFactory) -> None:
    session = await make_session()
    await session.add_items([{"n": i} for i in range(10)])
    assert await session.get_items(limit=3) == [{"n": 7}, {"n": 8}, {"n": 9}]
    assert await session.get_items(limit=1) == [{"n": 9}]
    assert await session.get_items(limit=100) == [{"n": i} for i in range(10)]
    assert await session.get_items(limit=0) == []


@pytest.mark.parametrize("limit", [-1, -100])
async def test_negative_limit_is_a_value_error(make_session: SessionFactory, limit: int) -> None:
    session = await make_session()
    with pytest.raises(ValueError, match="limit"):
        await session.get_items(limit=limit)


@pytest.mark.parametrize("limit", ["3", 2.5, True])
async def test_non_int_limit_is_a_type_error(make_session: SessionFactory, limit: Any) -> None:
    session = await make_session()
    with pytest.raises(TypeError, match="limit"):
        await session.get_items(limit=limit)


async def test_session_settings_limit_is_the_default(make_session: SessionFactory) -> None:
    from agents.memory import SessionSettings

    session = await make_session(session_settings=SessionSettings(limit=2))
    await session.add_items([{"n": i} for i in range(5)])
    assert await session.get_items() == [{"n": 3}, {"n": 4}]
    assert await session.get_items(limit=4) == [{"n": i} for i in range(1, 5)]


async def test_add_empty_list_is_a_no_op(make_session: SessionFactory) -> None:
    session = await make_session()
    await session.add_items([])
    assert await session.get_items() == []
    await session.add_items([{"n": 1}])
    await session.add_items([])
    assert await session.get_items() == [{"n": 1}]


class _Opaque:
    pass


BAD_ITEMS = [
    pytest.param({"v": _Opaque()}, TypeError, id="object"),
    pytest.param({"v": b"bytes"}, TypeError, id="bytes"),
    pytest.param({"v": {1, 2}}, TypeError, id="set"),
    pytest.param({"v": math.nan}, ValueError, id="nan"),
    pytest.param({"v": [math.inf]}, ValueError, id="infinity"),
    pytest.param({"v": datetime(2026, 1, 1)}, TypeError, id="datetime"),
    pytest.param({1: "int key"}, TypeError, id="non-str-key"),
    pytest.param({"v": 2**64}, TypeError, id="int-beyond-64-bits"),
    pytest.param("not a dict", TypeError, id="str-item"),
    pytest.param(["a", "list"], TypeError, id="list-item"),
    pytest.param(None, TypeError, id="none-item"),
]


@pytest.mark.parametrize(("bad", "error"), BAD_ITEMS)
async def test_a_bad_item_rejects_the_whole_batch(
    make_session: SessionFactory, bad: Any, error: type[Exception]
) -> None:
    session = await make_session()
    await session.add_items([{"n": 0}])
    with pytest.raises(error, match="item 2"):
        await session.add_items([{"n": 1}, {"n": 2}, bad, {"n": 3}])
    assert await session.get_items() == [{"n": 0}]


@pytest.mark.parametrize("items", [{"n": 1}, "text", None, ({"n": 1},)[0]])
async def test_items_must_be_a_list(make_session: SessionFactory, items: Any) -> None:
    session = await make_session()
    with pytest.raises(TypeError, match="list"):
        await session.add_items(items)
    assert await session.get_items() == []


async def test_pop_returns_newest_then_none(make_session: SessionFactory) -> None:
    session = await make_session()
    await session.add_items([{"n": 1}, {"n": 2}, {"n": 3}])
    assert await session.pop_item() == {"n": 3}
    assert await session.pop_item() == {"n": 2}
    assert await session.get_items() == [{"n": 1}]
    assert await session.pop_item() == {"n": 1}
    assert await session.pop_item() is None
    await session.add_items([{"n": 4}])
    assert await session.get_items() == [{"n": 4}]


async def test_clear_empties_only_its_own_session(make_session: SessionFactory) -> None:
    mine = await make_session()
    other = await make_session()
    await mine.add_items([{"who": "mine"}])
    await other.add_items([{"who": "other"}])
    await mine.clear_session()
    assert await mine.get_items() == []
    assert await other.get_items() == [{"who": "other"}]
    await mine.clear_session()  # clearing an empty session is fine
    await mine.add_items([{"who": "again"}])
    assert await mine.get_items() == [{"who": "again"}]


async def test_sessions_never_see_each_other(make_session: SessionFactory) -> None:
    a = await make_session()
    b = await make_session()
    await a.add_items([{"who": "a", "n": i} for i in range(3)])
    await b.add_items([{"who": "b"}])
    assert await b.pop_item() == {"who": "b"}
    assert await b.pop_item() is None
    assert len(await a.get_items()) == 3
    assert await b.get_items() == []


async def test_sdk_items_round_trip(make_session: SessionFactory, sdk_items: list[Any]) -> None:
    session = await make_session()
    await session.add_items(sdk_items)
    assert await session.get_items() == sdk_items
    assert await session.get_items(limit=2) == sdk_items[-2:]
    assert await session.pop_item() == sdk_items[-1]


ODD_ITEMS: list[dict[str, Any]] = [
    {"text": "Ünïcødé ☀️ 漢字 🙂 \u200b", "emoji": "👩‍👩‍👧"},
    {"nested": {"a": [1, 2.5, {"b": [None, True, False]}], "c": {"d": {"e": "deep"}}}},
    {"empty": {}, "list": [], "str": ""},
    {"quotes": 'it\'s "quoted" \\ back\nslash\t', "sql": "'); DROP TABLE messages; --"},
    {"numbers": [0, -1, 2**63 - 1, -(2**63), 1e-300, 1.7976931348623157e308]},
    {"nul": "a\x00b", "controls": "\x01\x1f"},
    {},
]


async def test_odd_items_round_trip(make_session: SessionFactory) -> None:
    session = await make_session()
    await session.add_items(ODD_ITEMS)
    assert await session.get_items() == ODD_ITEMS


async def test_a_one_megabyte_item_round_trips(make_session: SessionFactory) -> None:
    session = await make_session()
    big = {"role": "user", "content": "x" * 1_000_000 + "end"}
    await session.add_items([{"n": 1}, big])
    assert await session.get_items() == [{"n": 1}, big]
    assert await session.pop_item() == big


async def test_two_objects_on_one_id_see_each_other(make_session: SessionFactory) -> None:
    first = await make_session()
    second = await make_session(first.session_id)
    await first.add_items([{"n": 1}])
    if getattr(getattr(first, "inner", first), "db_path", None) == ":memory:":
        # An in-memory SQLite database is private to its session object.
        assert await second.get_items() == []
        return
    assert await second.get_items() == [{"n": 1}]
    await second.add_items([{"n": 2}])
    assert await first.pop_item() == {"n": 2}
    assert await second.get_items() == [{"n": 1}]


async def test_concurrent_tasks_keep_every_item(make_session: SessionFactory) -> None:
    session = await make_session()

    async def writer(w: int) -> None:
        for i in range(10):
            await session.add_items([{"w": w, "i": i}])

    await asyncio.gather(*(writer(w) for w in range(8)))
    items = await session.get_items()
    assert len(items) == 80
    for w in range(8):
        assert [it["i"] for it in items if it["w"] == w] == list(range(10))


async def test_concurrent_pops_return_each_item_once(make_session: SessionFactory) -> None:
    session = await make_session()
    await session.add_items([{"n": i} for i in range(40)])
    popped = await asyncio.gather(*(session.pop_item() for _ in range(50)))
    values = sorted(item["n"] for item in popped if item is not None)
    assert values == list(range(40))
    assert await session.get_items() == []


@pytest.mark.parametrize(
    "session_id",
    [
        "quote'\"`",
        "percent%_under",
        "star*question?[bracket]",
        "{hash}tag{}",
        "colon:slash/back\\",
        "new\nline\ttab",
        "emoji 🙂 ünï",
        "with space",
        "x" * 255,
    ],
)
async def test_any_id_string_works_and_is_exact(
    make_session: SessionFactory, session_id: str
) -> None:
    session_id = f"{session_id}{unique_id('')}"[:255]
    session = await make_session(session_id)
    neighbour = await make_session()
    await neighbour.add_items([{"n": "neighbour"}])
    assert session.session_id == session_id
    await session.add_items([{"id": session_id}])
    assert await session.get_items() == [{"id": session_id}]
    assert await neighbour.get_items() == [{"n": "neighbour"}]
    await session.clear_session()
    assert await neighbour.get_items() == [{"n": "neighbour"}]


@pytest.mark.parametrize(
    ("session_id", "error"),
    [
        ("", ValueError),
        ("x" * 256, ValueError),
        ("nul\x00byte", ValueError),
        ("lone \ud800 surrogate", ValueError),
        (None, TypeError),
        (42, TypeError),
    ],
)
async def test_bad_ids_are_rejected(
    make_session: SessionFactory, session_id: Any, error: type[Exception]
) -> None:
    with pytest.raises(error, match="session_id"):
        await make_session(session_id)


async def test_close_releases_and_use_after_close_raises(make_session: SessionFactory) -> None:
    session = await make_session()
    await session.add_items([{"n": 1}])
    await session.close()  # type: ignore[attr-defined]
    await session.close()  # type: ignore[attr-defined]  # idempotent
    for call in (
        session.get_items(),
        session.add_items([{"n": 2}]),
        session.pop_item(),
        session.clear_session(),
    ):
        with pytest.raises(SessionClosedError, match="closed"):
            await call


async def test_async_with_closes(make_session: SessionFactory) -> None:
    session = await make_session()
    async with session as entered:  # type: ignore[attr-defined]
        assert entered is session
        await session.add_items([{"n": 1}])
        assert await session.get_items() == [{"n": 1}]
    with pytest.raises(SessionClosedError):
        await session.get_items()
