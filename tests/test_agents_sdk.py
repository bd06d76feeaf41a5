"""The OpenAI Agents SDK's real ``Runner`` on every backend, with its deterministic
``ScriptedModel`` standing in for the LLM (no network, no API key).

Each test runs on every backend of the contract suite (``make_session``). Where the SDK itself
shapes what a session sees (``session_settings``, ``session_input_callback``), the same run on the
SDK's own ``SQLiteSession`` is the reference.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from agents import Agent, RunConfig, Runner, function_tool, set_tracing_disabled
from agents.memory import SessionSettings
from agents.memory import SQLiteSession as SDKSQLiteSession
from agents.testing import ScriptedModel, assistant_message, function_call

from agentmem import Session
from tests.conftest import SessionFactory


@pytest.fixture(autouse=True, scope="module")
def no_trace_export() -> Iterator[None]:
    """The scripted runs have nothing to export to OpenAI's tracing service."""
    set_tracing_disabled(True)
    yield
    set_tracing_disabled(False)


DOCS_TURNS = [
    ("What city is the Golden Gate Bridge in?", "San Francisco"),
    ("What state is it in?", "California"),
    ("What's the population?", "About 800,000 people live in San Francisco."),
]


def user(text: str) -> dict[str, Any]:
    """A user turn as the Runner stores it."""
    return {"content": text, "role": "user"}


def texts(items: Sequence[Any]) -> list[tuple[str, str]]:
    """(role, text) of the messages among ``items``; other items as (type, call id)."""
    out: list[tuple[str, str]] = []
    for item in items:
        if item.get("role") == "user":
            out.append(("user", item["content"]))
        elif item.get("type") == "message":
            out.append(("assistant", "".join(part["text"] for part in item["content"])))
        else:
            out.append((item["type"], item.get("call_id", "")))
    return out


def scripted_agent(*answers: str, name: str = "Assistant") -> tuple[Agent[Any], ScriptedModel]:
    model = ScriptedModel([[assistant_message(answer)] for answer in answers])
    return Agent(name=name, instructions="Reply very concisely.", model=model), model


async def test_second_turn_sees_the_first(make_session: SessionFactory) -> None:
    session = await make_session()
    agent, model = scripted_agent(*(answer for _, answer in DOCS_TURNS[:2]))

    first = await Runner.run(agent, DOCS_TURNS[0][0], session=session)
    second = await Runner.run(agent, DOCS_TURNS[1][0], session=session)

    assert (first.final_output, second.final_output) == ("San Francisco", "California")
    assert texts(model.calls[1].input) == [
        ("user", "What city is the Golden Gate Bridge in?"),
        ("assistant", "San Francisco"),
        ("user", "What state is it in?"),
    ]
    assert texts(await session.get_items()) == [
        *texts(model.calls[1].input),
        ("assistant", "California"),
    ]


def test_run_sync_continues_the_same_session(make_session: SessionFactory) -> None:
    # A sync test: the fixtures' event loop is this thread's loop, which run_sync reuses.
    loop = asyncio.get_event_loop()
    session = loop.run_until_complete(make_session())
    agent, model = scripted_agent(*(answer for _, answer in DOCS_TURNS))

    loop.run_until_complete(Runner.run(agent, DOCS_TURNS[0][0], session=session))
    second = Runner.run_sync(agent, DOCS_TURNS[1][0], session=session)
    third = Runner.run_sync(agent, DOCS_TURNS[2][0], session=session)

    assert (second.final_output, third.final_output) == ("California", DOCS_TURNS[2][1])
    assert texts(model.calls[2].input) == [
        ("user", DOCS_TURNS[0][0]),
        ("assistant", DOCS_TURNS[0][1]),
        ("user", DOCS_TURNS[1][0]),
        ("assistant", DOCS_TURNS[1][1]),
        ("user", DOCS_TURNS[2][0]),
    ]
    assert len(loop.run_until_complete(session.get_items())) == 6


async def test_streamed_run_is_stored(make_session: SessionFactory) -> None:
    session = await make_session()
    agent, model = scripted_agent("San Francisco", "California")

    streamed = Runner.run_streamed(agent, DOCS_TURNS[0][0], session=session)
    async for _ in streamed.stream_events():
        pass
    await Runner.run(agent, DOCS_TURNS[1][0], session=session)

    assert streamed.final_output == "San Francisco"
    assert texts(model.calls[1].input)[:2] == [
        ("user", DOCS_TURNS[0][0]),
        ("assistant", "San Francisco"),
    ]


async def test_tool_call_and_output_are_stored_and_replayed(make_session: SessionFactory) -> None:
    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return f"Sunny in {city}"

    session = await make_session()
    model = ScriptedModel(
        [
            [function_call("get_weather", {"city": "Paris"}, call_id="call_1")],
            [assistant_message("It is sunny in Paris.")],
            [assistant_message("You asked about Paris.")],
        ]
    )
    agent = Agent(name="Assistant", model=model, tools=[get_weather])

    await Runner.run(agent, "What's the weather in Paris?", session=session)
    stored = await session.get_items()
    call = next(item for item in stored if item.get("type") == "function_call")
    output = next(item for item in stored if item.get("type") == "function_call_output")
    assert (call["name"], call["arguments"], call["call_id"]) == (
        "get_weather",
        '{"city":"Paris"}',
        "call_1",
    )
    assert (output["call_id"], output["output"]) == ("call_1", "Sunny in Paris")

    await Runner.run(agent, "Which city was that?", session=session)
    replayed = model.calls[2].input
    assert texts(replayed) == [
        ("user", "What's the weather in Paris?"),
        ("function_call", "call_1"),
        ("function_call_output", "call_1"),
        ("assistant", "It is sunny in Paris."),
        ("user", "Which city was that?"),
    ]
    assert [item for item in replayed if item.get("call_id") == "call_1"] == [call, output]


async def test_pop_item_corrections_are_not_seen_by_the_next_turn(
    make_session: SessionFactory,
) -> None:
    session = await make_session()
    agent, model = scripted_agent("San Francisco", "Nevada", "California")

    await Runner.run(agent, "What city is the Golden Gate Bridge in?", session=session)
    await Runner.run(agent, "What state is it in? Guess wrong.", session=session)
    answer = await session.pop_item()
    question = await session.pop_item()
    assert texts([question, answer]) == [
        ("user", "What state is it in? Guess wrong."),
        ("assistant", "Nevada"),
    ]

    result = await Runner.run(agent, "What state is it in?", session=session)
    assert result.final_output == "California"
    assert texts(model.calls[2].input) == [
        ("user", "What city is the Golden Gate Bridge in?"),
        ("assistant", "San Francisco"),
        ("user", "What state is it in?"),
    ]


async def test_two_agents_share_one_session(make_session: SessionFactory) -> None:
    session = await make_session()
    support, support_model = scripted_agent("Your order 42 ships Monday.", name="Support")
    billing, billing_model = scripted_agent("Order 42 was paid by card.", name="Billing")

    await Runner.run(support, "When does order 42 ship?", session=session)
    await Runner.run(billing, "How was it paid?", session=session)

    assert texts(billing_model.calls[0].input) == [
        ("user", "When does order 42 ship?"),
        ("assistant", "Your order 42 ships Monday."),
        ("user", "How was it paid?"),
    ]
    assert len(support_model.calls) == 1
    assert texts(await session.get_items()) == [
        *texts(billing_model.calls[0].input),
        ("assistant", "Order 42 was paid by card."),
    ]


async def test_sessions_are_isolated(make_session: SessionFactory) -> None:
    users = ["alice", "bob", "carol"]
    sessions = [await make_session() for _ in users]
    agents = [scripted_agent(f"Hello {name}", f"You are {name}") for name in users]

    await asyncio.gather(
        *(
            Runner.run(agent, f"I am {name}", session=session)
            for name, session, (agent, _) in zip(users, sessions, agents, strict=True)
        )
    )
    await asyncio.gather(
        *(
            Runner.run(agent, "Who am I?", session=session)
            for session, (agent, _) in zip(sessions, agents, strict=True)
        )
    )

    for name, session, (_, model) in zip(users, sessions, agents, strict=True):
        assert texts(model.calls[1].input) == [
            ("user", f"I am {name}"),
            ("assistant", f"Hello {name}"),
            ("user", "Who am I?"),
        ]
        assert len(await session.get_items()) == 4


# --- what the Runner passes: compared with the SDK's own SQLiteSession ------------------------


async def converse(session: Session, run_config: RunConfig | None = None) -> list[Any]:
    """Four scripted turns; returns the model's input of each turn."""
    agent, model = scripted_agent("one", "two", "three", "four")
    for question in ["first?", "second?", "third?", "fourth?"]:
        await Runner.run(agent, question, session=session, run_config=run_config)
    return [call.input for call in model.calls]


async def assert_same_as_sdk(
    session: Session,
    reference: Any,
    run_config: RunConfig | None = None,
) -> list[Any]:
    try:
        expected_inputs = await converse(reference, run_config)
        expected_items = await reference.get_items()
    finally:
        reference.close()
    inputs = await converse(session, run_config)
    assert inputs == expected_inputs
    assert await session.get_items() == expected_items
    return inputs


async def test_run_config_session_settings_limit_as_with_sdk_sessions(
    make_session: SessionFactory,
) -> None:
    config = RunConfig(session_settings=SessionSettings(limit=2))
    session = await make_session()

    inputs = await assert_same_as_sdk(session, SDKSQLiteSession("reference"), config)

    assert texts(inputs[3]) == [("user", "third?"), ("assistant", "three"), ("user", "fourth?")]
    assert len(await session.get_items()) == 8


async def test_session_own_settings_limit_as_with_sdk_sessions(
    make_session: SessionFactory,
) -> None:
    settings = SessionSettings(limit=3)
    session = await make_session(session_settings=settings)
    reference = SDKSQLiteSession("reference", session_settings=settings)

    inputs = await assert_same_as_sdk(session, reference)

    assert texts(inputs[3]) == [
        ("assistant", "two"),
        ("user", "third?"),
        ("assistant", "three"),
        ("user", "fourth?"),
    ]


def keep_user_turns(history: list[Any], new_input: list[Any]) -> list[Any]:
    """A ``session_input_callback``: drop the assistant's past answers."""
    return [item for item in history if item.get("role") == "user"] + new_input


async def test_session_input_callback_as_with_sdk_sessions(make_session: SessionFactory) -> None:
    callback: Callable[[list[Any], list[Any]], list[Any]] = keep_user_turns
    config = RunConfig(session_input_callback=callback)
    session = await make_session()

    inputs = await assert_same_as_sdk(session, SDKSQLiteSession("reference"), config)

    assert texts(inputs[2]) == [("user", "first?"), ("user", "second?"), ("user", "third?")]
    assert len(await session.get_items()) == 8  # the callback shapes the input, not the store
