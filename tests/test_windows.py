"""Whole-pair and whole-turn windows, on every backend of the contract suite.

Each backend walks the window in its own store (SQL, Lua); :func:`agentmem.windows.window_length`
states the rule, and these tests hold every backend to it on hand-made and generated histories.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from agentmem.windows import OUTPUT_TO_CALL, WindowMode, mark_of, window_length
from tests.conftest import SessionFactory


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, Any]:
    return {
        "type": "message",
        "role": "assistant",
        "id": f"msg_{text}",
        "status": "completed",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


def reasoning(name: str) -> dict[str, Any]:
    return {"type": "reasoning", "id": f"rs_{name}", "summary": []}


def call(call_id: str, kind: str = "function_call") -> dict[str, Any]:
    return {"type": kind, "call_id": call_id, "name": "tool", "arguments": "{}"}


def output(call_id: str, kind: str = "function_call_output") -> dict[str, Any]:
    return {"type": kind, "call_id": call_id, "output": f"result of {call_id}"}


# user, reasoning, two parallel calls, their outputs, the answer; then a second turn.
TOOL_TURNS = [
    user("weather in Paris and Rome?"),
    reasoning("1"),
    call("c1"),
    call("c2"),
    output("c1"),
    output("c2"),
    assistant("sunny in both"),
    user("and Oslo?"),
    call("c3"),
    output("c3"),
    assistant("rain in Oslo"),
]


def expected(items: list[dict[str, Any]], limit: int, mode: WindowMode) -> list[dict[str, Any]]:
    """The reference window: the rule of agentmem.windows, applied in memory."""
    taken = window_length((mark_of(item) for item in reversed(items)), limit, mode)
    return items[len(items) - taken :]


def is_valid_history(items: list[dict[str, Any]]) -> bool:
    """Every output follows its call, and every reasoning item is followed by an item."""
    seen: set[str] = set()
    for index, item in enumerate(items):
        mark = mark_of(item)
        if mark.gives is not None:
            seen.add(mark.gives)
        if mark.needs is not None and mark.needs not in seen:
            return False
        if mark.item_type == "reasoning" and index == len(items) - 1:
            return False
    return True


async def test_a_plain_limit_keeps_its_exact_meaning(make_session: SessionFactory) -> None:
    session = await make_session()
    await session.add_items(TOOL_TURNS)

    assert await session.get_items(limit=6) == TOOL_TURNS[-6:]  # begins at c2's output
    assert await session.get_items(limit=7) == TOOL_TURNS[-7:]


async def test_whole_pairs_moves_the_start_back_to_the_calls(make_session: SessionFactory) -> None:
    session = await make_session()
    await session.add_items(TOOL_TURNS)

    # The newest 6 begin at the output of c2: its call, and c1's pair, and the reasoning item
    # before them are taken too.
    assert await session.get_items(limit=6, whole_pairs=True) == TOOL_TURNS[1:]
    # The newest 2 begin at c3's output: the window starts at its call.
    assert await session.get_items(limit=2, whole_pairs=True) == TOOL_TURNS[-3:]
    # A cut between whole pairs does not move.
    assert await session.get_items(limit=4, whole_pairs=True) == TOOL_TURNS[-4:]
    assert await session.get_items(limit=1, whole_pairs=True) == TOOL_TURNS[-1:]


async def test_whole_turns_start_at_a_user_message(make_session: SessionFactory) -> None:
    session = await make_session()
    await session.add_items(TOOL_TURNS)

    assert await session.get_items(limit=1, whole_turns=True) == TOOL_TURNS[7:]
    assert await session.get_items(limit=4, whole_turns=True) == TOOL_TURNS[7:]
    assert await session.get_items(limit=5, whole_turns=True) == TOOL_TURNS
    assert await session.get_items(limit=100, whole_turns=True) == TOOL_TURNS


async def test_every_tool_kind_and_mcp_approvals_stay_paired(make_session: SessionFactory) -> None:
    session = await make_session()
    items: list[dict[str, Any]] = [user("go")]
    for index, (output_type, call_type) in enumerate(OUTPUT_TO_CALL.items()):
        items += [call(f"k{index}", call_type), assistant(f"between{index}")]
        items += [output(f"k{index}", output_type)]
    items += [
        {"type": "mcp_approval_request", "id": "mcpr_1", "name": "x", "arguments": "{}"},
        assistant("waiting"),
        {"type": "mcp_approval_response", "approval_request_id": "mcpr_1", "approve": True},
    ]
    await session.add_items(items)

    for limit in range(1, len(items) + 2):
        window = await session.get_items(limit=limit, whole_pairs=True)
        assert window == expected(items, limit, "pairs"), limit
        assert is_valid_history(window), limit
    # Each output's call sits two items before it: the window of 1 takes all three.
    assert await session.get_items(limit=1, whole_pairs=True) == items[-3:]


def generated_history(seed: int) -> list[dict[str, Any]]:
    """An SDK-like history: turns of reasoning, parallel calls, late outputs, answers, and now
    and then an output whose call is missing or a call left without an output."""
    rng = random.Random(seed)
    items: list[dict[str, Any]] = []
    serial = 0
    for turn in range(rng.randint(1, 6)):
        items.append(user(f"q{seed}-{turn}"))
        for _ in range(rng.randint(0, 3)):
            if rng.random() < 0.5:
                items.append(reasoning(f"{seed}-{serial}"))
            ids = [f"c{seed}-{serial}-{n}" for n in range(rng.randint(1, 3))]
            serial += 1
            kinds = [rng.choice(list(OUTPUT_TO_CALL.items())) for _ in ids]
            items += [call(i, kind) for i, (_, kind) in zip(ids, kinds, strict=True)]
            answered = [pair for pair in zip(ids, kinds, strict=True) if rng.random() < 0.9]
            rng.shuffle(answered)
            items += [output(i, out) for i, (out, _) in answered]
        if rng.random() < 0.1:
            items.append(output(f"missing-{seed}-{turn}"))
        if rng.random() < 0.3:
            items.append(reasoning(f"{seed}-answer-{turn}"))
        items.append(assistant(f"a{seed}-{turn}"))
    return items


@pytest.mark.parametrize("mode", ["pairs", "turns"])
async def test_every_backend_cuts_the_reference_window(
    make_session: SessionFactory, mode: WindowMode
) -> None:
    flags = {"whole_turns": True} if mode == "turns" else {"whole_pairs": True}
    for seed in range(12):
        session = await make_session()
        items = generated_history(seed)
        await session.add_items(items)
        for limit in range(1, len(items) + 2):
            window = await session.get_items(limit=limit, **flags)
            assert window == expected(items, limit, mode), (seed, limit)
            assert window[-min(limit, len(items)) :] == items[-limit:]
            if not any(item.get("call_id", "").startswith("missing") for item in items):
                assert is_valid_history(window), (seed, limit)


async def test_the_session_option_is_the_default_of_limited_reads(
    make_session: SessionFactory,
) -> None:
    session = await make_session(whole_turns=True, session_settings={"limit": 2})
    await session.add_items(TOOL_TURNS)

    assert session.window_mode == "turns"  # type: ignore[attr-defined]
    assert await session.get_items() == TOOL_TURNS[7:]  # session_settings.limit, whole turns
    assert await session.get_items(limit=2) == TOOL_TURNS[7:]
    assert await session.get_items(limit=2, whole_turns=False) == TOOL_TURNS[-2:]
    assert await session.get_items(limit=2, whole_pairs=True) == TOOL_TURNS[-3:]
    assert await session.get_items(limit=None) == TOOL_TURNS[7:]
    assert await session.get_items(limit=0) == []

    pairs = await make_session(whole_pairs=True)
    await pairs.add_items(TOOL_TURNS)
    assert await pairs.get_items(limit=2) == TOOL_TURNS[-3:]
    assert await pairs.get_items(limit=2, whole_pairs=False) == TOOL_TURNS[-2:]


async def test_windows_of_an_empty_history_are_empty(make_session: SessionFactory) -> None:
    session = await make_session()
    assert await session.get_items(limit=3, whole_pairs=True) == []
    assert await session.get_items(limit=3, whole_turns=True) == []


async def test_bad_window_flags_are_refused(make_session: SessionFactory) -> None:
    session = await make_session()
    with pytest.raises(TypeError, match="whole_turns"):
        await session.get_items(limit=2, whole_turns="yes")  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="limit"):
        await session.get_items(limit=-1, whole_pairs=True)  # type: ignore[call-arg]


@pytest.mark.cached
@pytest.mark.parametrize("mode", ["pairs", "turns"])
async def test_a_cached_window_longer_than_the_cached_items_is_read_from_sql(
    cached_session: SessionFactory, mode: WindowMode
) -> None:
    flags = {"whole_turns": True} if mode == "turns" else {"whole_pairs": True}
    session = await cached_session(max_cached_items=2)
    items = generated_history(3)
    await session.add_items(items)
    for limit in range(1, len(items) + 2):
        assert await session.get_items(limit=limit, **flags) == expected(items, limit, mode)
