"""Quick start: an agent that remembers, on the embedded default (a SQLite file).

Run it twice: the second run continues the conversation stored in ``conversations.db``.

    python examples/quickstart.py
"""

from __future__ import annotations

import asyncio

from _model import example_model
from agents import Agent, Runner

from agentmem import SQLiteSession


async def main() -> None:
    agent = Agent(name="Assistant", instructions="Reply very concisely.", model=example_model())
    session = SQLiteSession("conversation_123", "conversations.db")  # or SQLiteSession("id")

    result = await Runner.run(agent, "What city is the Golden Gate Bridge in?", session=session)
    print(result.final_output)  # San Francisco

    result = await Runner.run(agent, "What state is it in?", session=session)
    print(result.final_output)  # California: the agent remembered the first turn

    print(f"{len(await session.get_items())} items stored")
    await session.close()


def sync_turn() -> None:
    """``Runner.run_sync`` works with the same kind of session, from plain synchronous code."""
    agent = Agent(name="Assistant", instructions="Reply very concisely.", model=example_model())
    session = SQLiteSession("conversation_123", "conversations.db")
    result = Runner.run_sync(agent, "What's the population?", session=session)
    print(result.final_output)  # about 800,000


if __name__ == "__main__":
    asyncio.run(main())
    sync_turn()
