"""``AdvancedSession`` against the OpenAI Agents SDK's ``AdvancedSQLiteSession``: one scenario
with the real ``Runner``, a scripted model and real tool calls, run on the SDK's session and on
``AdvancedSession`` over every backend, gives the same turns, branches and usage answers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from agents import Agent, Runner, function_tool, set_tracing_disabled
from agents.extensions.memory import AdvancedSQLiteSession
from agents.testing import ScriptedModel, assistant_message, function_call
from agents.usage import Usage
from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails

from agentmem import AdvancedSession, SQLiteSession, SQLiteSessionManager
from agentmem.advanced import MAIN_BRANCH
from tests.conftest import SessionFactory, unique_id


@pytest.fixture(autouse=True, scope="module")
def no_trace_export() -> Iterator[None]:
    set_tracing_disabled(True)
    yield
    set_tracing_disabled(False)


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"Sunny in {city}"


USAGE = Usage(
    requests=1,
    input_tokens=100,
    output_tokens=20,
    total_tokens=120,
    input_tokens_details=InputTokensDetails(cached_tokens=7, cache_write_tokens=0),
    output_tokens_details=OutputTokensDetails(reasoning_tokens=3),
)


def agent() -> Agent[Any]:
    """Turn 1 calls the tool twice, then answers; every later run just answers."""
    model = ScriptedModel(
        [
            [
                function_call("get_weather", {"city": "Paris"}, call_id="call_paris"),
                function_call("get_weather", {"city": "Rome"}, call_id="call_rome"),
            ],
            [assistant_message("Sunny in Paris and Rome.")],
            *([assistant_message(f"Answer {n}.")] for n in range(8)),
        ],
        default_usage=USAGE,
    )
    return Agent(name="Assistant", model=model, tools=[get_weather])


async def outcome(call: Callable[[], Any]) -> Any:
    """What a call gives, or the error it raises (type and message)."""
    try:
        return await call()
    except (ValueError, LookupError) as exc:
        return (type(exc).__name__, str(exc))


def untimed(rows: Any) -> Any:
    """Rows without the times (agentmem has no per-item time; see the README)."""
    if isinstance(rows, list):
        return [untimed(row) for row in rows]
    if isinstance(rows, dict):
        return {k: v for k, v in rows.items() if k not in ("timestamp", "created_at")}
    return rows


def branches(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``list_branches`` by id: the SDK orders by creation time in whole seconds, so branches
    made in one second come in no set order."""
    return sorted(untimed(rows), key=lambda row: row["branch_id"])


async def scenario(session: Any) -> list[Any]:
    """Runs, branches, pops and clears; every answer of the advanced API along the way."""
    bot = agent()
    answers: list[Any] = []

    async def run(text: str) -> None:
        result = await Runner.run(bot, text, session=session)
        await session.store_run_usage(result)

    async def look(label: str) -> None:
        answers.append(
            (
                label,
                await session.get_items(),
                untimed(await session.get_conversation_turns()),
                untimed(await session.find_turns_by_content("cities")),
                untimed(await session.find_turns_by_content("PARIS")),
                await session.get_conversation_by_turns(),
                sorted(await session.get_tool_usage(), key=lambda row: (row[2], str(row[0]))),
                await session.get_turn_usage(),
                await session.get_turn_usage(1),
                await session.get_turn_usage(9),
                await session.get_session_usage(),
                await session.get_session_usage(MAIN_BRANCH),
                branches(await session.list_branches()),
            )
        )

    await run("Weather in Paris and Rome?")
    await run("Which cities did I ask about?")
    await run("Thanks!")
    await look("main, three turns")

    answers.append(await outcome(lambda: session.create_branch_from_turn(2, "alt")))
    await look("alt, from turn 2")
    await run("Which countries are they in?")
    await look("alt, a new turn 2")
    answers.append(await session.get_turn_usage(branch_id="alt"))
    answers.append(await session.get_session_usage("alt"))
    answers.append(await outcome(lambda: session.create_branch_from_turn(2, "alt")))
    answers.append(await outcome(lambda: session.create_branch_from_turn(7)))
    answers.append(await outcome(lambda: session.create_branch_from_turn(1, "  ")))

    auto = await session.create_branch_from_content("paris")  # turn 1: copies nothing
    assert re.fullmatch(r"branch_from_turn_1_\d+", auto), auto
    answers.append(await outcome(lambda: session.create_branch_from_content("Lisbon")))
    answers.append(branches(await session.list_branches()))
    refused = await outcome(lambda: session.switch_to_branch(auto))
    answers.append(str(refused).replace(auto, "<auto>"))
    answers.append(await outcome(lambda: session.switch_to_branch("nowhere")))
    await session.switch_to_branch("alt")
    answers.append(await outcome(lambda: session.delete_branch("alt")))
    answers.append(await outcome(lambda: session.delete_branch("main")))
    answers.append(await outcome(lambda: session.delete_branch(" ")))
    answers.append(await outcome(lambda: session.delete_branch("nowhere")))
    await session.delete_branch("alt", force=True)
    await look("main after deleting alt")
    answers.append(await outcome(lambda: session.switch_to_branch("alt")))
    answers.append(await outcome(lambda: session.create_branch_from_turn(1, "alt")))

    await session.create_branch_from_turn(3, "short")
    await run("Rain tomorrow?")
    answers.append(await session.pop_item())
    answers.append(await session.pop_item())  # the user message: turn 3 is gone, with its usage
    await look("short after two pops")
    await run("Snow?")
    await look("short, a new turn 3")
    await session.switch_to_branch("main")
    await session.clear_session()
    await look("cleared")
    answers.append(await outcome(lambda: session.create_branch_from_turn(1, "short")))
    return answers


async def test_the_sdk_advanced_session_and_agentmem_give_the_same_answers(
    make_session: SessionFactory,
) -> None:
    sdk = AdvancedSQLiteSession(session_id=unique_id(), create_tables=True)
    try:
        expected = await scenario(sdk)
    finally:
        sdk.close()
    inner = await make_session()
    session = AdvancedSession(inner)  # type: ignore[arg-type]
    try:
        got = await scenario(session)
    finally:
        await cleanup(session, ["alt", "short"])
    for want, have in zip(expected, got, strict=True):
        assert have == want


async def cleanup(session: AdvancedSession, branches: list[str]) -> None:
    """Remove what a test wrote beside the wrapped session: branches and the log."""
    for name in [*branches, "advanced"]:
        suffix = "::advanced" if name == "advanced" else f"::branch::{name}"
        other = session.inner.with_id(session.session_id + suffix)
        await other.clear_session()
        await other.close()
    await session.clear_session()
    await session.close()


ODD_ITEMS: list[dict[str, Any]] = [
    {"type": "message", "role": "system", "content": "be brief"},
    {"role": "user", "content": [{"type": "input_text", "text": "Look at ROME"}]},
    {"type": "mcp_call", "server_label": "maps", "name": "route", "id": "m1"},
    {"type": "mcp_call", "server_label": "maps", "id": "m2"},
    {"type": "mcp_approval_request", "name": "pay", "id": "a1"},
    {"type": "function_call", "name": "find", "namespace": "db", "call_id": "c1"},
    {"type": "function_call", "name": "echo", "namespace": "echo", "call_id": "c2"},
    {"type": "function_call_output", "call_id": "c1", "output": "ok"},
    {"type": "web_search_call", "id": "w1"},
    {"type": "shell_call", "call_id": "s1"},
    {"type": "tool_search_output", "call_id": "t0"},
    {"role": "assistant", "content": "done"},
    {"role": "user", "content": "Straße and rome_100%"},
    {"type": "tool_search_call", "call_id": "t1"},
    {"type": "tool_search_output", "call_id": "t1"},
    {"type": "custom_tool_call", "name": "grep", "call_id": "g1"},
    {"role": "user", "content": "x" * 150},
]


async def turn_answers(session: Any) -> list[Any]:
    return [
        untimed(await session.get_conversation_turns()),
        await session.get_conversation_by_turns(),
        sorted(await session.get_tool_usage(), key=lambda row: (row[2], str(row[0]))),
        *[
            untimed(await session.find_turns_by_content(term))
            for term in ("rome", "STRASSE", "Straße", "_100%", "look at", "route", "")
        ],
    ]


async def test_turn_queries_classify_items_as_the_sdk_does(make_session: SessionFactory) -> None:
    sdk = AdvancedSQLiteSession(session_id=unique_id(), create_tables=True)
    try:
        await sdk.add_items(ODD_ITEMS)
        expected = await turn_answers(sdk)
    finally:
        sdk.close()
    session = AdvancedSession(await make_session())  # type: ignore[arg-type]
    try:
        await session.add_items(ODD_ITEMS)
        assert await turn_answers(session) == expected
        rows = await session.get_tool_usage()
        assert rows == sorted(rows, key=lambda row: (row[2], str(row[0])))
    finally:
        await cleanup(session, [])


async def test_a_second_object_on_the_id_sees_branches_usage_and_clears(
    make_session: SessionFactory,
) -> None:
    inner = await make_session()
    if getattr(inner, "db_path", None) == ":memory:":
        pytest.skip("an in-memory SQLite database is private to its session object")
    first = AdvancedSession(inner)  # type: ignore[arg-type]
    second = AdvancedSession(await make_session(inner.session_id))  # type: ignore[arg-type]
    try:
        bot = agent()
        result = await Runner.run(bot, "Weather in Paris and Rome?", session=first)
        await first.store_run_usage(result)
        await Runner.run(bot, "And tomorrow?", session=first)
        await first.create_branch_from_turn(2, "b")
        assert [row["branch_id"] for row in await second.list_branches()] == ["main", "b"]
        assert (await second.get_session_usage() or {})["requests"] == 2
        await second.switch_to_branch("b")
        assert await second.get_items() == await first.get_items()
        assert await second.get_items(branch_id="main") == await inner.get_items()

        with pytest.raises(ValueError, match="already been used"):  # reserved via the log
            await second.create_branch_from_turn(1, "b")

        await first.clear_session()  # elsewhere: `second` follows back to main
        assert await second.get_current_branch() == "main"
        assert await second.get_items() == []
        assert await second.get_session_usage() is None
        assert await second.list_branches() == []
    finally:
        await cleanup(first, ["b"])
        await second.close()


async def test_a_branch_whose_id_would_pass_the_limit_is_refused(
    make_session: SessionFactory,
) -> None:
    long_id = "L" * 240
    session = AdvancedSession(await make_session(long_id))  # type: ignore[arg-type]
    try:
        await session.add_items([{"role": "user", "content": "hi"}])
        with pytest.raises(ValueError, match="maximum is 255"):
            await session.create_branch_from_turn(1, "a-long-branch-name")
        assert await session.get_current_branch() == "main"
        assert await session.get_items() == [{"role": "user", "content": "hi"}]
    finally:
        await cleanup(session, [])

    no_room = AdvancedSession(await make_session("N" * 250))  # type: ignore[arg-type]
    try:
        await no_room.add_items([{"role": "user", "content": "hi"}])
        with pytest.raises(ValueError, match="maximum is 255"):
            await no_room.create_branch_from_turn(1, "b")
        with pytest.raises(ValueError, match="maximum is 255"):
            await no_room.get_session_usage()
        assert await no_room.pop_item() == {"role": "user", "content": "hi"}
        await no_room.clear_session()
    finally:
        await no_room.close()


async def test_a_fork_of_the_current_branch_is_a_new_advanced_session(
    make_session: SessionFactory,
) -> None:
    session = AdvancedSession(await make_session())  # type: ignore[arg-type]
    forked: AdvancedSession | None = None
    try:
        await session.add_items(
            [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
        )
        await session.create_branch_from_turn(2, "only-a")
        forked = await session.fork(unique_id())
        assert isinstance(forked, AdvancedSession)
        assert await forked.get_items() == [{"role": "user", "content": "a"}]
        assert await forked.list_branches() == [
            {
                "branch_id": "main",
                "message_count": 1,
                "user_turns": 1,
                "is_current": True,
                "created_at": None,
            }
        ]
        origin = await forked.fork_origin()
        assert origin is not None
        assert origin.parent_id == session.branch_session_id("only-a")
    finally:
        if forked is not None:
            await cleanup(forked, [])
        await cleanup(session, ["only-a"])


async def test_the_sdk_constructor_opens_an_agentmem_sqlite_session(tmp_path: Any) -> None:
    path = tmp_path / "advanced.db"
    session = AdvancedSession(session_id="conversation", db_path=path, create_tables=True)
    try:
        assert isinstance(session.inner, SQLiteSession)
        result = await Runner.run(agent(), "Weather in Paris and Rome?", session=session)
        await session.store_run_usage(result)
        assert (await session.get_turn_usage(1))["requests"] == 2  # type: ignore[index]
    finally:
        await session.close()
    reopened = AdvancedSession(SQLiteSession("conversation", path))
    try:
        assert (await reopened.get_session_usage() or {})["total_turns"] == 1
    finally:
        await reopened.close()


async def test_a_manager_session_can_be_wrapped(tmp_path: Any) -> None:
    async with SQLiteSessionManager(tmp_path / "managed.db") as manager:
        session = AdvancedSession(manager.get_session("conversation"))
        await session.add_items([{"role": "user", "content": "hi"}])
        await session.create_branch_from_turn(1, "again")
        await session.add_items([{"role": "user", "content": "hello"}])
        assert set(await manager.list_sessions()) == {
            "conversation",
            "conversation::advanced",
            "conversation::branch::again",
        }
        await manager.delete_session("conversation")  # the branch and the log stay
        assert set(await manager.list_sessions()) == {
            "conversation::advanced",
            "conversation::branch::again",
        }
        await session.close()


def test_bad_constructor_arguments_are_type_errors() -> None:
    with pytest.raises(TypeError, match="session_id"):
        AdvancedSession()
    with pytest.raises(TypeError, match="either"):
        AdvancedSession(SQLiteSession("a"), session_id="a")
    with pytest.raises(TypeError, match="can fork"):
        AdvancedSession(object())  # type: ignore[arg-type]
