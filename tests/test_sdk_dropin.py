"""Drop-in for the OpenAI Agents SDK's sessions: its constructors and attributes, ``close()``
called plainly, its defaults and edges (stored rows that are not JSON), and its compaction
session (``OpenAIResponsesCompactionSession``) over every backend, with the real ``Runner``."""

from __future__ import annotations

import asyncio
import gc
import logging
import types
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agents import Agent, RunConfig, Runner, set_tracing_disabled
from agents.memory import OpenAIResponsesCompactionSession, SessionSettings
from agents.memory import SQLiteSession as SDKSQLiteSession
from agents.testing import ScriptedModel, assistant_message

from agentmem import (
    CachedSession,
    RedisSession,
    SessionClosedError,
    SQLAlchemySession,
    SQLiteSession,
)
from agentmem.session import EncodedItem
from agentmem.sql.base import SQLSessionBase
from tests.conftest import REDIS_PREFIX, REDIS_URL, SessionFactory, unique_id


@pytest.fixture(autouse=True, scope="module")
def no_trace_export() -> Iterator[None]:
    set_tracing_disabled(True)
    yield
    set_tracing_disabled(False)


def msg(role: str, text: str) -> dict[str, Any]:
    return {"role": role, "content": text}


async def write_raw(session: Any, texts: list[str]) -> None:
    """Append stored rows as another program would: JSON text as is, unchecked."""
    if isinstance(session, CachedSession):
        session = session.store
    if isinstance(session, SQLSessionBase):
        await session.add_encoded_items([EncodedItem(text, None, None) for text in texts])
        return
    assert isinstance(session, RedisSession)
    # The session's own client: a Redis server or a Redis Cluster.
    await session._client().rpush(session.messages_key, *texts)


# --- defaults and edges -------------------------------------------------------------------------


async def test_session_settings_default_to_the_sdks(make_session: SessionFactory) -> None:
    session = await make_session()
    assert session.session_settings == SessionSettings()
    limited = await make_session(session_settings={"limit": 2})
    assert limited.session_settings == SessionSettings(limit=2)


async def test_rows_that_are_not_json_are_skipped_and_named(
    make_session: SessionFactory, caplog: pytest.LogCaptureFixture
) -> None:
    session = await make_session()
    await session.add_items([msg("user", "one")])
    await write_raw(session, ["{not json"])
    await session.add_items([msg("assistant", "two")])
    await write_raw(session, ["also not json"])
    with caplog.at_level(logging.WARNING, logger="agentmem"):
        assert await session.get_items() == [msg("user", "one"), msg("assistant", "two")]
    warned = [r.getMessage() for r in caplog.records if "not valid JSON" in r.getMessage()]
    assert warned and all(repr(session.session_id) in text for text in warned)
    assert any("{not json" in text for text in warned)
    # The limit counts valid items, as in the SDK.
    assert await session.get_items(limit=1) == [msg("assistant", "two")]
    assert await session.get_items(limit=2) == [msg("user", "one"), msg("assistant", "two")]
    # pop removes the invalid newest row and returns the next valid item.
    assert await session.pop_item() == msg("assistant", "two")
    assert await session.pop_item() == msg("user", "one")
    assert await session.pop_item() is None
    assert await session.get_items() == []


async def test_edges_match_or_refuse_clearly(make_session: SessionFactory) -> None:
    session = await make_session()
    await session.add_items([])  # an empty batch: nothing, no error (as in the SDK)
    assert await session.get_items() == []
    with pytest.raises(ValueError, match="limit must be >= 0"):
        await session.get_items(limit=-1)
    await session.close()
    with pytest.raises(SessionClosedError):
        await session.get_items()


# --- close(): awaited, or called plainly as the SDK's sessions are ------------------------------


async def _drain() -> None:
    """Let every other task of the loop finish (a plain close() releases in a task)."""
    me = asyncio.current_task()
    await asyncio.gather(*(t for t in asyncio.all_tasks() if t is not me))


async def test_close_called_plainly_closes_and_releases(make_session: SessionFactory) -> None:
    session = await make_session()
    await session.add_items([msg("user", "hi")])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        handle = session.close()  # type: ignore[attr-defined]
        assert session.closed  # type: ignore[attr-defined]
        with pytest.raises(SessionClosedError):
            await session.get_items()
        await _drain()
        assert handle.done()
        gc.collect()
    assert session.close() is handle  # type: ignore[attr-defined]


async def test_close_awaited_releases_before_returning(make_session: SessionFactory) -> None:
    session = await make_session()
    await session.add_items([msg("user", "hi")])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        handle = session.close()  # type: ignore[attr-defined]
        await handle
        assert handle.done()
        await session.close()  # type: ignore[attr-defined]  # idempotent


def test_close_without_an_event_loop_releases_at_once(tmp_path: Path) -> None:
    path = tmp_path / "plain.db"
    wal = tmp_path / "plain.db-wal"  # present while a connection to the file is open
    session = SQLiteSession("plain", path)
    asyncio.run(session.add_items([msg("user", "hi")]))
    assert wal.exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        session.close()  # the SDK's style, in synchronous code
        assert session.closed
        assert not wal.exists()  # its connection was closed
        assert session.close().done()


def test_close_run_by_a_runner_releases_in_its_loop(tmp_path: Path) -> None:
    wal = tmp_path / "runner.db-wal"
    with asyncio.Runner() as runner:
        session = SQLiteSession("runner", tmp_path / "runner.db")
        runner.run(session.add_items([msg("user", "hi")]))
        handle = session.close()
        assert session.closed and not handle.done() and wal.exists()
        runner.run(handle)
        assert handle.done() and not wal.exists()


async def test_managers_close_plainly_too(tmp_path: Path) -> None:
    from agentmem import SQLiteSessionManager

    manager = SQLiteSessionManager(tmp_path / "m.db")
    session = manager.get_session("a")
    await session.add_items([msg("user", "hi")])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        handle = manager.close()
        assert manager.closed and session.closed
        await _drain()
        assert handle.done()


# --- replace_items: the atomic replacement --------------------------------------------------------


async def test_replace_items(make_session: SessionFactory) -> None:
    session = await make_session()
    history = [msg("user", f"q{i}") for i in range(5)]
    await session.add_items(history)
    assert await session.replace_items([msg("user", "summary")], newest=3)  # type: ignore[attr-defined]
    assert await session.get_items() == [*history[:2], msg("user", "summary")]
    # Compare-and-swap: the newest items must be the expected ones.
    assert not await session.replace_items(  # type: ignore[attr-defined]
        [msg("user", "x")], if_newest=[history[1], msg("user", "other")]
    )
    assert await session.get_items() == [*history[:2], msg("user", "summary")]
    assert await session.replace_items(  # type: ignore[attr-defined]
        [msg("user", "y")], if_newest=[history[1], msg("user", "summary")]
    )
    assert await session.get_items() == [history[0], msg("user", "y")]
    assert await session.replace_items([msg("user", "all")])  # type: ignore[attr-defined]
    assert await session.get_items() == [msg("user", "all")]
    with pytest.raises(TypeError):
        await session.replace_items([msg("user", "ok"), {"bad": {1, 2}}])  # type: ignore[attr-defined]
    assert await session.get_items() == [msg("user", "all")]
    assert await session.replace_items([])  # type: ignore[attr-defined]
    assert await session.get_items() == []
    await session.add_items([msg("user", "after")])
    assert await session.get_items() == [msg("user", "after")]


async def test_replace_if_newest_never_loses_a_concurrent_append(
    make_session: SessionFactory,
) -> None:
    session = await make_session()
    history = [msg("user", f"q{i}") for i in range(4)]
    await session.add_items(history)
    summary, late = msg("user", "summary"), msg("user", "late")
    replaced, _ = await asyncio.gather(
        session.replace_items([summary], if_newest=history[2:]),  # type: ignore[attr-defined]
        session.add_items([late]),
    )
    after = await session.get_items()
    if replaced:
        assert after == [*history[:2], summary, late]
    else:
        assert after == [*history, late]


# --- the SDK's compaction session, with the real Runner -----------------------------------------


class ScriptedCompactions:
    """Stands in for ``AsyncOpenAI().responses``: ``compact`` answers locally."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def compact(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        summary = {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": f"summary {len(self.calls)}"}],
        }
        return types.SimpleNamespace(output=[summary], usage=None)


async def compacted_runs(
    store: Any, turns: int, *, threshold: int, limit: int | None = None, **options: Any
) -> tuple[list[Any], int]:
    compactions = ScriptedCompactions()
    session = OpenAIResponsesCompactionSession(
        "compacted",
        store,
        client=types.SimpleNamespace(responses=compactions),  # type: ignore[arg-type]
        should_trigger_compaction=lambda c: len(c["compaction_candidate_items"]) >= threshold,
        **options,
    )
    agent = Agent(
        name="A", model=ScriptedModel([[assistant_message(f"a{i}")] for i in range(turns)])
    )
    config = RunConfig(session_settings=SessionSettings(limit=limit))
    for i in range(turns):
        await Runner.run(agent, f"q{i}", session=session, run_config=config)
    return await store.get_items(), len(compactions.calls)


async def test_sdk_compaction_replaces_the_whole_history(make_session: SessionFactory) -> None:
    reference = await compacted_runs(SDKSQLiteSession("ref"), 4, threshold=2)
    assert reference[1] == 2
    assert await compacted_runs(await make_session(), 4, threshold=2) == reference


async def test_sdk_compaction_replaces_a_suffix_and_keeps_the_rest(
    make_session: SessionFactory,
) -> None:
    older = [msg("user", "old question"), msg("assistant", "old answer")]
    ref_store = SDKSQLiteSession("ref")
    await ref_store.add_items(older)
    reference = await compacted_runs(ref_store, 1, threshold=1, limit=1)
    assert reference[0][:2] == older and reference[1] == 1
    store = await make_session()
    await store.add_items(older)
    assert await compacted_runs(store, 1, threshold=1, limit=1) == reference


async def test_sdk_compaction_of_long_histories_with_a_rollback_budget(
    make_session: SessionFactory,
) -> None:
    """Automatic compaction replaces the matched suffix atomically: no whole-history
    rollback read, so a history longer than max_rollback_items still compacts."""
    older = [msg("user", f"old {i}") for i in range(30)]
    ref_store = SDKSQLiteSession("ref")
    await ref_store.add_items(older)
    reference = await compacted_runs(ref_store, 2, threshold=1, limit=2, max_rollback_items=5)
    assert reference[1] == 2 and reference[0][:20] == older[:20]
    store = await make_session()
    await store.add_items(older)
    assert await compacted_runs(store, 2, threshold=1, limit=2, max_rollback_items=5) == reference


async def test_sdk_manual_compaction_replaces_atomically(make_session: SessionFactory) -> None:
    store = await make_session()
    await store.add_items([msg("user", "q"), msg("assistant", "a")] * 3)
    compactions = ScriptedCompactions()
    session = OpenAIResponsesCompactionSession(
        "manual",
        store,
        client=types.SimpleNamespace(responses=compactions),  # type: ignore[arg-type]
    )
    await session.run_compaction({"force": True, "compaction_mode": "input"})
    assert len(compactions.calls) == 1
    assert await store.get_items() == [
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "summary 1"}],
        }
    ]


# --- constructors and attributes ------------------------------------------------------------------


@pytest.mark.sqlite
async def test_sqlalchemy_session_takes_both_forms(tmp_path: Path) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'forms.db'}")
    try:
        ours = SQLAlchemySession(engine, "s", create_tables=True)
        sdk = SQLAlchemySession("s", engine=engine, create_tables=True)
        keywords = SQLAlchemySession(session_id="s", engine=engine)
        await ours.add_items([msg("user", "hi")])
        assert await sdk.get_items() == await keywords.get_items() == [msg("user", "hi")]
        assert sdk.engine is ours.engine is engine
        with pytest.raises(TypeError, match="engine twice"):
            SQLAlchemySession(engine, "s", engine=engine)  # type: ignore[call-overload]
        with pytest.raises(TypeError, match="session id twice"):
            SQLAlchemySession("s", session_id="t", engine=engine)  # type: ignore[call-overload]
        with pytest.raises(TypeError, match="needs an engine"):
            SQLAlchemySession("s")  # type: ignore[call-overload]
        for session in (ours, sdk, keywords):
            await session.close()
    finally:
        await engine.dispose()


@pytest.mark.sqlite
async def test_sdk_table_names_map_onto_a_prefix(tmp_path: Path) -> None:
    from sqlalchemy import inspect
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'names.db'}")
    try:
        session = SQLAlchemySession(
            "s",
            engine=engine,
            create_tables=True,
            sessions_table="agent_sessions",
            messages_table="agent_messages",
        )
        assert session.table_prefix == "agent_"
        await session.add_items([msg("user", "hi")])
        async with engine.connect() as conn:
            names = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
        assert {"agent_sessions", "agent_messages", "agent_agentmem_alembic_version"} <= names
        with pytest.raises(ValueError, match="must end with 'messages'"):
            SQLAlchemySession("s", engine=engine, messages_table="agent_msgs")
        with pytest.raises(ValueError, match="different table prefixes"):
            SQLAlchemySession(
                "s", engine=engine, sessions_table="a_sessions", messages_table="b_messages"
            )
        await session.close()
    finally:
        await engine.dispose()


@pytest.mark.sqlite
async def test_sqlalchemy_from_url_in_the_sdks_form(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'url.db'}"
    session = SQLAlchemySession.from_url(
        "s", url=url, engine_kwargs={"echo": False}, create_tables=True
    )
    await session.add_items([msg("user", "hi")])
    assert session.engine.url.database == str(tmp_path / "url.db")
    assert await session.get_items() == [msg("user", "hi")]
    await session.close()


@pytest.mark.sqlite
def test_a_from_url_engine_outside_any_loop_is_a_clear_error(tmp_path: Path) -> None:
    session = SQLAlchemySession.from_url("s", url=f"sqlite+aiosqlite:///{tmp_path / 'e.db'}")
    with pytest.raises(RuntimeError, match="belongs to an event loop"):
        _ = session.engine
    session.close()


@pytest.mark.redis
async def test_redis_session_takes_the_sdks_forms(redis_client: Any) -> None:
    prefix = f"{REDIS_PREFIX}:sdk"
    session = RedisSession("s", redis_client=redis_client, key_prefix=prefix, ttl=60)
    assert session.session_key == f"{prefix}:session:{{s}}"
    assert session.messages_key == f"{prefix}:messages:{{s}}"
    await session.add_items([msg("user", "hi")])
    assert 0 < await redis_client.ttl(session.messages_key) <= 60
    assert await session.ping() is True
    with pytest.raises(ValueError, match="not both"):
        RedisSession("s", redis_client=redis_client, key_prefix=prefix, session_prefix="x")
    with pytest.raises(TypeError, match="once"):
        RedisSession("s", client=redis_client, redis_client=redis_client)

    from_url = RedisSession.from_url(
        "s",
        url=REDIS_URL,
        redis_kwargs={"socket_timeout": 5, "health_check_interval": 30},
        key_prefix=prefix,
    )
    assert await from_url.get_items() == [msg("user", "hi")]
    await from_url.clear_session()
    await from_url.close()
    await session.close()
    with pytest.raises(SessionClosedError):
        await session.ping()


@pytest.mark.redis
async def test_redis_ping_answers_false_when_unreachable() -> None:
    session = RedisSession.from_url(unique_id(), url="redis://127.0.0.1:1")
    assert await session.ping() is False
    await session.close()


@pytest.mark.sqlite
async def test_sqlite_session_takes_the_sdks_table_names(tmp_path: Path) -> None:
    session = SQLiteSession("s", tmp_path / "names.db", "agent_sessions", "agent_messages")
    assert session.table_prefix == "agent_"
    await session.add_items([msg("user", "hi")])
    assert await session.get_items() == [msg("user", "hi")]
    session.close()


async def test_sdk_encrypted_session_over_agentmem(make_session: SessionFactory) -> None:
    from agents.extensions.memory import EncryptedSession

    store = await make_session()
    session = EncryptedSession(store.session_id, store, encryption_key="k" * 32)  # type: ignore[arg-type]
    model = ScriptedModel([[assistant_message("San Francisco")], [assistant_message("CA")]])
    agent = Agent(name="A", model=model)
    await Runner.run(agent, "Where is the bridge?", session=session)
    await Runner.run(agent, "Which state?", session=session)
    assert [item.get("content") for item in model.calls[1].input][:1] == ["Where is the bridge?"]
    stored = await store.get_items()
    assert len(stored) == 4 and all("Where" not in json_text(item) for item in stored)


def json_text(item: Any) -> str:
    import json

    return json.dumps(item)
