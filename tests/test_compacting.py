"""CompactingSession: the Session contract over every backend's manager, and compaction itself.

The whole contract suite of ``test_contract.py`` runs again here with ``make_session`` handing out
a :class:`CompactingSession` (its threshold never reached) around the sessions of each manager of
``MANAGERS`` but the in-memory SQLite one (whose sessions share one database, which the contract's
in-memory case does not expect); compaction runs over every manager.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from agents import Agent, Runner, set_tracing_disabled
from agents.testing import ScriptedModel, assistant_message

from agentmem import CompactingSession, CompactionError, EncryptedSession
from agentmem.wrappers import generate_key
from agentmem.wrappers.compacting import turn_starts
from tests._backends import NEW_ID
from tests.conftest import MANAGERS, ManagerCase, SessionFactory
from tests.test_contract import *  # noqa: F403  # the contract suite, on the wrapped backends

SHARED_MANAGERS = [param for param in MANAGERS if param.id != "sqlite-memory"]


async def summary_of(items: list[Any]) -> dict[str, Any]:
    """A local summarizer: the texts of the user messages it was given."""
    said = [item["content"] for item in items if item.get("role") == "user"]
    earlier = [item["content"] for item in items if item.get("role") == "system"]
    return {"role": "system", "content": " | ".join([*earlier, *said])}


@pytest.fixture(params=SHARED_MANAGERS)
def case(request: pytest.FixtureRequest) -> ManagerCase:
    """Each backend's manager in turn."""
    value: ManagerCase = request.getfixturevalue(request.param)
    return value


@pytest.fixture
def make_session(case: ManagerCase) -> SessionFactory:
    """Compacting sessions (never compacting) around each manager's sessions in turn."""

    async def make(session_id: Any = NEW_ID, **kwargs: Any) -> CompactingSession:
        inner = case.manager.get_session(
            case.new_id() if session_id is NEW_ID else session_id, **kwargs
        )
        return CompactingSession(
            inner, summarize=summary_of, manager=case.manager, max_items=100_000
        )

    return make


@pytest.fixture
async def file_case(tmp_path: Path) -> AsyncIterator[ManagerCase]:
    """The manager of a SQLite file of this test's own."""
    from agentmem import SQLiteSessionManager

    manager = SQLiteSessionManager(tmp_path / "compacting.db")
    yield ManagerCase(manager)
    await manager.close()


def turn(n: int) -> list[dict[str, Any]]:
    return [{"role": "user", "content": f"q{n}"}, {"type": "message", "content": f"a{n}"}]


def compacting(case: ManagerCase, **options: Any) -> CompactingSession:
    options.setdefault("summarize", summary_of)
    options.setdefault("max_items", 8)
    session_id = options.pop("session_id", None) or case.new_id()
    return CompactingSession(case.manager.get_session(session_id), manager=case.manager, **options)


async def test_the_oldest_whole_turns_become_one_summary(case: ManagerCase) -> None:
    session = compacting(case, keep_last_turns=2)
    for n in range(4):
        await session.add_items(turn(n))
    assert len(await session.get_items()) == 8  # at the threshold: not past it
    await session.add_items(turn(4))
    assert await session.get_items() == [
        {"role": "system", "content": "q0 | q1 | q2"},
        *turn(3),
        *turn(4),
    ]
    for n in range(5, 8):  # the summary is summarized again with the next turns
        await session.add_items(turn(n))
    assert await session.get_items() == [
        {"role": "system", "content": "q0 | q1 | q2 | q3 | q4"},
        *turn(5),
        *turn(6),
        *turn(7),
    ]


async def test_tool_calls_stay_with_their_turn(case: ManagerCase) -> None:
    session = compacting(case, max_items=6, keep_last_turns=1)
    call = {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}
    output = {"type": "function_call_output", "call_id": "c1", "output": "1"}
    await session.add_items([*turn(0), {"role": "user", "content": "q1"}, call, output])
    await session.add_items([{"type": "message", "content": "a1"}, *turn(2)])
    items = await session.get_items()
    assert items == [{"role": "system", "content": "q0 | q1"}, *turn(2)]
    assert turn_starts(items) == [1]


async def test_a_failed_summary_leaves_the_history_unchanged(case: ManagerCase) -> None:
    async def broken(items: list[Any]) -> Any:
        raise RuntimeError("the model is down")

    session = compacting(case, summarize=broken, keep_last_turns=1)
    for n in range(4):
        await session.add_items(turn(n))
    with pytest.raises(CompactionError, match="the model is down") as raised:
        await session.add_items(turn(4))
    assert "unchanged" in str(raised.value)
    assert await session.get_items() == [item for n in range(5) for item in turn(n)]


async def test_a_summary_that_is_not_an_item_changes_nothing(case: ManagerCase) -> None:
    async def not_an_item(items: list[Any]) -> Any:
        return "a summary as a str"

    session = compacting(case, summarize=not_an_item, max_items=2, keep_last_turns=1)
    await session.add_items(turn(0))
    with pytest.raises(CompactionError, match="not a dict"):
        await session.add_items(turn(1))
    assert await session.get_items() == [*turn(0), *turn(1)]


async def test_the_archive_keeps_what_was_replaced(case: ManagerCase) -> None:
    archive = case.manager.get_session(case.new_id("archive"))
    session = compacting(case, max_items=4, keep_last_turns=1, archive=archive)
    for n in range(3):
        await session.add_items(turn(n))
    assert await archive.get_items() == [*turn(0), *turn(1)]
    assert await session.get_items() == [{"role": "system", "content": "q0 | q1"}, *turn(2)]


async def test_items_written_during_the_summary_are_kept(case: ManagerCase) -> None:
    session_id = case.new_id()
    other_writer = case.manager.get_session(session_id)

    async def slow_summary(items: list[Any]) -> Any:
        await other_writer.add_items([{"role": "user", "content": "meanwhile"}])
        return await summary_of(items)

    session = compacting(
        case, session_id=session_id, summarize=slow_summary, max_items=4, keep_last_turns=1
    )
    for n in range(3):
        await session.add_items(turn(n))
    assert await session.get_items() == [
        {"role": "system", "content": "q0 | q1"},
        *turn(2),
        {"role": "user", "content": "meanwhile"},
    ]


async def test_a_token_threshold(case: ManagerCase) -> None:
    def words(items: list[Any]) -> int:
        return sum(len(str(item.get("content", "")).split()) for item in items)

    session = compacting(case, max_items=None, max_tokens=5, count_tokens=words, keep_last_turns=1)
    for n in range(3):
        await session.add_items(turn(n))
    assert await session.get_items() == [{"role": "system", "content": "q0 | q1"}, *turn(2)]


async def test_compacts_encrypted_items(case: ManagerCase) -> None:
    """The wrappers compose: compaction around encryption summarizes the decrypted items and
    stores the summary encrypted."""
    session_id = case.new_id()
    keys = {"k": generate_key()}
    encrypted = EncryptedSession(case.manager.get_session(session_id), keys=keys, current="k")
    session = CompactingSession(
        encrypted, summarize=summary_of, manager=case.manager, max_items=4, keep_last_turns=1
    )
    for n in range(3):
        await session.add_items(turn(n))
    assert await session.get_items() == [{"role": "system", "content": "q0 | q1"}, *turn(2)]
    stored = await case.manager.get_session(session_id).get_items()
    assert [sorted(envelope) for envelope in stored] == [["data", "enc", "kid"]] * 3


BAD_OPTIONS = [
    pytest.param({"max_items": None}, ValueError, "max_items or max_tokens", id="no-threshold"),
    pytest.param({"max_items": 0}, ValueError, "at least 1", id="zero"),
    pytest.param({"max_items": "8"}, TypeError, "max_items", id="str"),
    pytest.param({"keep_last_turns": 0}, ValueError, "keep_last_turns", id="keep-zero"),
    pytest.param({"max_tokens": 10}, ValueError, "count_tokens", id="no-counter"),
]


@pytest.mark.sqlite
@pytest.mark.parametrize(("options", "error", "message"), BAD_OPTIONS)
async def test_bad_options_are_refused(
    file_case: ManagerCase, options: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        compacting(file_case, **options)


@pytest.mark.sqlite
async def test_a_200_turn_run_keeps_the_model_input_bounded(
    file_case: ManagerCase,
) -> None:
    set_tracing_disabled(True)
    turns = 200
    model = ScriptedModel([[assistant_message(f"answer {n}")] for n in range(turns)])
    agent = Agent(name="Assistant", instructions="Reply very concisely.", model=model)
    summaries: list[int] = []

    async def counted(items: list[Any]) -> Any:
        summaries.append(len(items))
        return await summary_of(items)

    session = compacting(file_case, summarize=counted, max_items=20, keep_last_turns=3)
    try:
        for n in range(turns):
            await Runner.run(agent, f"question {n}", session=session)
    finally:
        set_tracing_disabled(False)
    sizes = [len(call.input) for call in model.calls]
    assert len(sizes) == turns
    assert max(sizes) <= 21  # the stored history (at most 20 items) plus the new question
    last = model.calls[-1].input
    assert last[0]["role"] == "system" and last[0]["content"].startswith("question 0 | question 1")
    assert last[-1] == {"content": f"question {turns - 1}", "role": "user"}
    history = await session.get_items()
    assert len(history) <= 20 and history[0]["role"] == "system"
    assert history[0]["content"].count("question") >= turns - 10
    assert len(summaries) == 28  # one every 7 turns: 20 items down to a summary and 3 turns
    assert max(summaries) <= 16  # the previous summary and 7 turns
