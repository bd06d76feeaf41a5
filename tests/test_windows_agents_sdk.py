"""Whole-pair and whole-turn windows under the OpenAI Agents SDK's real ``Runner``, on every
backend, with its ``ScriptedModel`` and real tool calls: a limit that would cut a tool call from
its output gives the model a valid history.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from agents import Agent, RunConfig, Runner, function_tool, set_tracing_disabled
from agents.memory import SessionSettings
from agents.testing import ScriptedModel, assistant_message, function_call

from agentmem.windows import mark_of
from tests.conftest import SessionFactory


@pytest.fixture(autouse=True, scope="module")
def no_trace_export() -> Iterator[None]:
    set_tracing_disabled(True)
    yield
    set_tracing_disabled(False)


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"Sunny in {city}"


def weather_agent() -> tuple[Agent[Any], ScriptedModel]:
    """Turn 1 calls the tool twice in parallel, then answers; turn 2 just answers."""
    model = ScriptedModel(
        [
            [
                function_call("get_weather", {"city": "Paris"}, call_id="call_paris"),
                function_call("get_weather", {"city": "Rome"}, call_id="call_rome"),
            ],
            [assistant_message("Sunny in Paris and Rome.")],
            [assistant_message("You asked about Paris and Rome.")],
        ]
    )
    return Agent(name="Assistant", model=model, tools=[get_weather]), model


def shape(items: list[Any]) -> list[str]:
    """The items as ``type:call_id`` or ``role``: what the model was given, in order."""
    return [
        f"{item['type']}:{item['call_id']}" if "call_id" in item else item.get("role", "?")
        for item in items
    ]


def assert_valid(items: list[Any]) -> None:
    """Every tool output is preceded by its call; every call has its output."""
    calls = {mark_of(item).gives for item in items} - {None}
    outputs = {mark_of(item).needs for item in items} - {None}
    assert calls == outputs, shape(items)
    seen: set[str | None] = set()
    for item in items:
        mark = mark_of(item)
        seen.add(mark.gives)
        assert mark.needs is None or mark.needs in seen, shape(items)


TURN_ONE = [
    "user",
    "function_call:call_paris",
    "function_call:call_rome",
    "function_call_output:call_paris",
    "function_call_output:call_rome",
    "assistant",
]


async def two_turns(session: Any, run_config: RunConfig | None = None) -> list[Any]:
    """Run two turns; the model's input on the second."""
    agent, model = weather_agent()
    await Runner.run(agent, "Weather in Paris and Rome?", session=session, run_config=run_config)
    assert shape(await session.get_items(limit=100, whole_pairs=False)) == TURN_ONE
    await Runner.run(agent, "Which cities?", session=session, run_config=run_config)
    return list(model.calls[-1].input)


async def test_a_bare_limit_that_splits_a_pair_loses_the_outputs(
    make_session: SessionFactory,
) -> None:
    # The SDK's own handling of the cut (documented contrast): the newest 3 items begin at
    # an output whose call is cut off, and the Runner drops the orphaned outputs.
    session = await make_session(session_settings={"limit": 3})
    given = await two_turns(session)
    assert shape(given) == ["assistant", "user"]


async def test_whole_pairs_give_the_model_the_calls_with_their_outputs(
    make_session: SessionFactory,
) -> None:
    session = await make_session(session_settings={"limit": 3}, whole_pairs=True)
    given = await two_turns(session)
    assert shape(given) == [*TURN_ONE[1:], "user"]
    assert_valid(given)


async def test_whole_turns_give_the_model_the_whole_turn(make_session: SessionFactory) -> None:
    session = await make_session(whole_turns=True)
    given = await two_turns(session, RunConfig(session_settings=SessionSettings(limit=2)))
    assert shape(given) == [*TURN_ONE, "user"]
    assert_valid(given)
