"""Functions the ``exclusive()`` tests run in spawned child processes (importable by name)."""

from __future__ import annotations

import asyncio
from multiprocessing.synchronize import Event
from typing import Any

from tests.reliability._stores import Store

WAIT = 120.0
"""Seconds a child waits for a signal of the test before it gives up (never reached)."""


async def _wait(event: Event) -> None:
    if not await asyncio.to_thread(event.wait, WAIT):
        raise TimeoutError("the test never sent its signal")


def hold_the_lock(store: Store, session_id: str, held: Event, release: Event) -> str:
    """Hold the session's lock from ``held`` until ``release``, adding one item meanwhile."""

    async def run() -> str:
        session: Any = store.open(session_id)
        async with session, session.exclusive(timeout=WAIT):
            held.set()
            await _wait(release)
            await session.add_items([{"by": "child"}])
        return "ok"

    return asyncio.run(run())


def run_a_turn(
    store: Store,
    session_id: str,
    question: str,
    answer: str,
    locked: bool,
    reading: Event,
    go: Event | None,
) -> list[tuple[str, str]]:
    """One ``Runner.run`` on the session (inside ``exclusive()`` when ``locked``), with a
    scripted model that sets ``reading`` when called and answers once ``go`` is set; returns
    the model's input as (role, text) pairs."""
    from agents import Agent, Runner
    from agents.testing import ScriptedModel, assistant_message

    class WaitingModel(ScriptedModel):
        async def get_response(self, *args: Any, **kwargs: Any) -> Any:
            reading.set()
            if go is not None:
                await _wait(go)
            return await super().get_response(*args, **kwargs)

    async def run() -> list[tuple[str, str]]:
        model = WaitingModel([[assistant_message(answer)]])
        agent = Agent(name="Assistant", instructions="Reply concisely.", model=model)
        async with store.open(session_id) as session:  # type: ignore[attr-defined]
            if locked:
                async with session.exclusive(timeout=WAIT):
                    await Runner.run(agent, question, session=session)
            else:
                await Runner.run(agent, question, session=session)
        return texts(model.calls[0].input)

    return asyncio.run(run())


def texts(items: Any) -> list[tuple[str, str]]:
    """(role, text) of each message."""
    out = []
    for item in items:
        content = item.get("content")
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content)
        out.append((str(item.get("role")), str(content)))
    return out
