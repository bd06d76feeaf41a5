"""Corrections: take back the last question and answer with ``pop_item``.

python examples/corrections.py
"""

from __future__ import annotations

import asyncio

from _model import example_model
from agents import Agent, Runner

from agentmem import SQLiteSession


async def main() -> None:
    agent = Agent(name="Assistant", instructions="Reply very concisely.", model=example_model())
    async with SQLiteSession("correction_example") as session:  # in memory
        result = await Runner.run(agent, "What's 2 + 2?", session=session)
        print(f"Agent: {result.final_output}")

        # The user wants to correct the question: remove the answer, then the question.
        assistant_item = await session.pop_item()
        user_item = await session.pop_item()
        print(f"Removed: {user_item['content']!r} and its answer ({assistant_item['type']})")

        result = await Runner.run(agent, "What's 2 + 3?", session=session)
        print(f"Agent: {result.final_output}")

        history = [item.get("content") for item in await session.get_items()]
        print(f"The session holds {len(history)} items; the first is {history[0]!r}")


if __name__ == "__main__":
    asyncio.run(main())
