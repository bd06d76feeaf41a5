"""The Session conformance kit: the contract agentmem's own backends are tested against, for
checking a Session class of your own against the same semantics.

Subclass :class:`SessionConformance` in a pytest test module (a ``Test...`` name, so pytest
collects it) and say how to build one of your sessions::

    from agentmem.testing import SessionConformance

    class TestMySession(SessionConformance):
        def new_session(self, session_id, **options):
            return MySession(session_id, **options)

Every test then runs against ``MySession``: ordering, limits, ``pop_item``, clearing, isolation
of ids, rejection of bad items and ids with nothing written, concurrent tasks, ``close()`` and
``async with``. A class built on :class:`agentmem.SessionABC` and
:func:`agentmem.items.encode_items` gets agentmem's validation and lifecycle for free.

Needs pytest and pytest-asyncio: ``pip install "agentmem-sessions[testing]"``. The tests carry
the ``asyncio`` mark, so they run in pytest-asyncio's strict mode as in its auto mode.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import math
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any, ClassVar

from agentmem._deps import missing
from agentmem.errors import SessionClosedError
from agentmem.session import Session

try:
    import pytest
    import pytest_asyncio
except ImportError as exc:
    raise missing("testing", exc.name or "pytest") from exc

__all__ = ["NEW_ID", "SDK_ITEMS", "SessionConformance", "SessionFactory"]

SessionFactory = Callable[..., Awaitable[Session]]
"""``make(session_id=NEW_ID, **options) -> Session``: the ``make_session`` fixture's type."""

NEW_ID: Any = object()
"""``make_session()``'s default session id: a fresh unique one."""

SDK_ITEMS: list[dict[str, Any]] = [
    {"content": "What's the weather in Paris?", "role": "user"},
    {
        "id": "rs_123",
        "summary": [{"text": "thinking about the weather", "type": "summary_text"}],
        "type": "reasoning",
    },
    {
        "arguments": '{"city":"Paris"}',
        "call_id": "call_1",
        "name": "get_weather",
        "type": "function_call",
        "id": "call_1",
    },
    {"call_id": "call_1", "output": "sunny in Paris", "type": "function_call_output"},
    {
        "id": "msg_1",
        "content": [
            {
                "annotations": [],
                "text": "It is sunny in Paris. ☀️ Ünïcødé ok.",
                "type": "output_text",
                "logprobs": [],
            }
        ],
        "role": "assistant",
        "status": "completed",
        "type": "message",
    },
    {"role": "user", "content": [{"type": "input_text", "text": "Which city did I ask about?"}]},
    {
        "id": "msg_2",
        "content": [
            {
                "annotations": [],
                "text": "You asked about Paris.",
                "type": "output_text",
                "logprobs": [],
            }
        ],
        "role": "assistant",
        "status": "completed",
        "type": "message",
    },
]
"""Items as the OpenAI Agents SDK's Runner stores them: a user turn, reasoning, a tool call and
its output, assistant messages."""


class _Opaque:
    pass


_BAD_ITEMS = [
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

_ODD_ITEMS: list[dict[str, Any]] = [
    {"text": "Ünïcødé ☀️ 漢字 🙂 \u200b", "emoji": "👩‍👩‍👧"},
    {"nested": {"a": [1, 2.5, {"b": [None, True, False]}], "c": {"d": {"e": "deep"}}}},
    {"empty": {}, "list": [], "str": ""},
    {"quotes": 'it\'s "quoted" \\ back\nslash\t', "sql": "'); DROP TABLE messages; --"},
    {"numbers": [0, -1, 2**63 - 1, -(2**63), 1e-300, 1.7976931348623157e308]},
    {"nul": "a\x00b", "controls": "\x01\x1f"},
    {},
]

_ODD_IDS = [
    "quote'\"`",
    "percent%_under",
    "star*question?[bracket]",
    "{hash}tag{}",
    "colon:slash/back\\",
    "new\nline\ttab",
    "emoji 🙂 ünï",
    "with space",
    "x" * 255,
]

_BAD_IDS = [
    ("", ValueError),
    ("x" * 256, ValueError),
    ("nul\x00byte", ValueError),
    ("lone \ud800 surrogate", ValueError),
    (None, TypeError),
    (42, TypeError),
]


def _fresh_id() -> str:
    return f"conformance-{uuid.uuid4().hex}"


class SessionConformance:
    """The Session contract as pytest tests; subclass it as ``Test...`` and override
    :meth:`new_session` (or the ``make_session`` fixture).

    The tests use two fixtures, both overridable: ``make_session`` (a
    :data:`SessionFactory`; the default one builds sessions with :meth:`new_session`, then
    empties and closes each after the test) and ``sdk_items`` (:data:`SDK_ITEMS`).
    """

    pytestmark: ClassVar = [pytest.mark.asyncio]

    def new_session(self, session_id: str, **options: Any) -> Session | Awaitable[Session]:
        """A new session object on ``session_id`` (it may be a coroutine function).

        ``options`` are the session's keyword arguments the tests pass: ``session_settings``
        (an OpenAI Agents SDK ``SessionSettings``). Invalid ids must raise here: ``TypeError``
        for a non-string, ``ValueError`` for an unusable string, naming ``session_id``.
        """
        raise NotImplementedError(
            f"{type(self).__name__} must override new_session() or the make_session fixture"
        )

    def shares_history(self, session: Session) -> bool:
        """Whether another session object on ``session``'s id sees its history; false for a
        store private to its object, such as an in-memory database."""
        return True

    @pytest_asyncio.fixture
    async def make_session(self) -> AsyncIterator[SessionFactory]:
        """``make(session_id=NEW_ID, **options)``: a session from :meth:`new_session` on a
        fresh unique id unless one is given; each is emptied (if still open) and closed after
        the test."""
        made: list[Session] = []

        async def make(session_id: Any = NEW_ID, **options: Any) -> Session:
            built = self.new_session(_fresh_id() if session_id is NEW_ID else session_id, **options)
            session = await built if inspect.isawaitable(built) else built
            made.append(session)
            return session

        yield make
        for session in made:
            if not getattr(session, "closed", False):
                await session.clear_session()
            close = getattr(session, "close", None)
            if close is not None:
                await close()

    @pytest.fixture
    def sdk_items(self) -> list[dict[str, Any]]:
        """Items as the OpenAI Agents SDK stores them (a copy of :data:`SDK_ITEMS`)."""
        return copy.deepcopy(SDK_ITEMS)

    async def test_is_an_agents_sdk_session(self, make_session: SessionFactory) -> None:
        sdk_session = pytest.importorskip("agents.memory.session", reason="needs openai-agents")

        session = await make_session()
        assert isinstance(session, sdk_session.Session)
        assert isinstance(session, Session)
        assert session.session_settings is None or hasattr(session.session_settings, "limit")

    async def test_new_session_is_empty(self, make_session: SessionFactory) -> None:
        session = await make_session()
        assert await session.get_items() == []
        assert await session.get_items(limit=5) == []
        assert await session.pop_item() is None

    async def test_items_come_back_oldest_first(self, make_session: SessionFactory) -> None:
        session = await make_session()
        await session.add_items([{"n": 1}, {"n": 2}])
        await session.add_items([{"n": 3}])
        assert await session.get_items() == [{"n": 1}, {"n": 2}, {"n": 3}]

    async def test_limit_returns_newest_oldest_first(self, make_session: SessionFactory) -> None:
        session = await make_session()
        await session.add_items([{"n": i} for i in range(10)])
        assert await session.get_items(limit=3) == [{"n": 7}, {"n": 8}, {"n": 9}]
        assert await session.get_items(limit=1) == [{"n": 9}]
        assert await session.get_items(limit=100) == [{"n": i} for i in range(10)]
        assert await session.get_items(limit=0) == []

    @pytest.mark.parametrize("limit", [-1, -100])
    async def test_negative_limit_is_a_value_error(
        self, make_session: SessionFactory, limit: int
    ) -> None:
        session = await make_session()
        with pytest.raises(ValueError, match="limit"):
            await session.get_items(limit=limit)

    @pytest.mark.parametrize("limit", ["3", 2.5, True])
    async def test_non_int_limit_is_a_type_error(
        self, make_session: SessionFactory, limit: Any
    ) -> None:
        session = await make_session()
        with pytest.raises(TypeError, match="limit"):
            await session.get_items(limit=limit)

    async def test_session_settings_limit_is_the_default(
        self, make_session: SessionFactory
    ) -> None:
        memory = pytest.importorskip("agents.memory", reason="needs openai-agents")

        session = await make_session(session_settings=memory.SessionSettings(limit=2))
        await session.add_items([{"n": i} for i in range(5)])
        assert await session.get_items() == [{"n": 3}, {"n": 4}]
        assert await session.get_items(limit=4) == [{"n": i} for i in range(1, 5)]

    async def test_add_empty_list_is_a_no_op(self, make_session: SessionFactory) -> None:
        session = await make_session()
        await session.add_items([])
        assert await session.get_items() == []
        await session.add_items([{"n": 1}])
        await session.add_items([])
        assert await session.get_items() == [{"n": 1}]

    @pytest.mark.parametrize(("bad", "error"), _BAD_ITEMS)
    async def test_a_bad_item_rejects_the_whole_batch(
        self, make_session: SessionFactory, bad: Any, error: type[Exception]
    ) -> None:
        session = await make_session()
        await session.add_items([{"n": 0}])
        with pytest.raises(error, match="item 2"):
            await session.add_items([{"n": 1}, {"n": 2}, bad, {"n": 3}])
        assert await session.get_items() == [{"n": 0}]

    @pytest.mark.parametrize("items", [{"n": 1}, "text", None, ({"n": 1},)[0]])
    async def test_items_must_be_a_list(self, make_session: SessionFactory, items: Any) -> None:
        session = await make_session()
        with pytest.raises(TypeError, match="list"):
            await session.add_items(items)
        assert await session.get_items() == []

    async def test_pop_returns_newest_then_none(self, make_session: SessionFactory) -> None:
        session = await make_session()
        await session.add_items([{"n": 1}, {"n": 2}, {"n": 3}])
        assert await session.pop_item() == {"n": 3}
        assert await session.pop_item() == {"n": 2}
        assert await session.get_items() == [{"n": 1}]
        assert await session.pop_item() == {"n": 1}
        assert await session.pop_item() is None
        await session.add_items([{"n": 4}])
        assert await session.get_items() == [{"n": 4}]

    async def test_clear_empties_only_its_own_session(self, make_session: SessionFactory) -> None:
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

    async def test_sessions_never_see_each_other(self, make_session: SessionFactory) -> None:
        a = await make_session()
        b = await make_session()
        await a.add_items([{"who": "a", "n": i} for i in range(3)])
        await b.add_items([{"who": "b"}])
        assert await b.pop_item() == {"who": "b"}
        assert await b.pop_item() is None
        assert len(await a.get_items()) == 3
        assert await b.get_items() == []

    async def test_sdk_items_round_trip(
        self, make_session: SessionFactory, sdk_items: list[Any]
    ) -> None:
        session = await make_session()
        await session.add_items(sdk_items)
        assert await session.get_items() == sdk_items
        assert await session.get_items(limit=2) == sdk_items[-2:]
        assert await session.pop_item() == sdk_items[-1]

    async def test_odd_items_round_trip(self, make_session: SessionFactory) -> None:
        session = await make_session()
        await session.add_items(_ODD_ITEMS)
        assert await session.get_items() == _ODD_ITEMS

    async def test_a_one_megabyte_item_round_trips(self, make_session: SessionFactory) -> None:
        session = await make_session()
        big = {"role": "user", "content": "x" * 1_000_000 + "end"}
        await session.add_items([{"n": 1}, big])
        assert await session.get_items() == [{"n": 1}, big]
        assert await session.pop_item() == big

    async def test_two_objects_on_one_id_see_each_other(self, make_session: SessionFactory) -> None:
        first = await make_session()
        second = await make_session(first.session_id)
        await first.add_items([{"n": 1}])
        if not self.shares_history(first):
            assert await second.get_items() == []
            return
        assert await second.get_items() == [{"n": 1}]
        await second.add_items([{"n": 2}])
        assert await first.pop_item() == {"n": 2}
        assert await second.get_items() == [{"n": 1}]

    async def test_concurrent_tasks_keep_every_item(self, make_session: SessionFactory) -> None:
        session = await make_session()

        async def writer(w: int) -> None:
            for i in range(10):
                await session.add_items([{"w": w, "i": i}])

        await asyncio.gather(*(writer(w) for w in range(8)))
        items = await session.get_items()
        assert len(items) == 80
        for w in range(8):
            assert [it["i"] for it in items if it["w"] == w] == list(range(10))

    async def test_concurrent_pops_return_each_item_once(
        self, make_session: SessionFactory
    ) -> None:
        session = await make_session()
        await session.add_items([{"n": i} for i in range(40)])
        popped = await asyncio.gather(*(session.pop_item() for _ in range(50)))
        values = sorted(item["n"] for item in popped if item is not None)
        assert values == list(range(40))
        assert await session.get_items() == []

    @pytest.mark.parametrize("session_id", _ODD_IDS)
    async def test_any_id_string_works_and_is_exact(
        self, make_session: SessionFactory, session_id: str
    ) -> None:
        session_id = f"{session_id}{_fresh_id()}"[:255]
        session = await make_session(session_id)
        neighbour = await make_session()
        await neighbour.add_items([{"n": "neighbour"}])
        assert session.session_id == session_id
        await session.add_items([{"id": session_id}])
        assert await session.get_items() == [{"id": session_id}]
        assert await neighbour.get_items() == [{"n": "neighbour"}]
        await session.clear_session()
        assert await neighbour.get_items() == [{"n": "neighbour"}]

    @pytest.mark.parametrize(("session_id", "error"), _BAD_IDS)
    async def test_bad_ids_are_rejected(
        self, make_session: SessionFactory, session_id: Any, error: type[Exception]
    ) -> None:
        with pytest.raises(error, match="session_id"):
            await make_session(session_id)

    async def test_close_releases_and_use_after_close_raises(
        self, make_session: SessionFactory
    ) -> None:
        session: Any = await make_session()
        await session.add_items([{"n": 1}])
        await session.close()
        await session.close()  # idempotent
        for call in (
            session.get_items(),
            session.add_items([{"n": 2}]),
            session.pop_item(),
            session.clear_session(),
        ):
            with pytest.raises(SessionClosedError, match="closed"):
                await call

    async def test_async_with_closes(self, make_session: SessionFactory) -> None:
        session: Any = await make_session()
        async with session as entered:
            assert entered is session
            await session.add_items([{"n": 1}])
            assert await session.get_items() == [{"n": 1}]
        with pytest.raises(SessionClosedError):
            await session.get_items()
