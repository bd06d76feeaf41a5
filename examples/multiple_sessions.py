"""Multiple sessions: one conversation per user in one database file, each isolated.

python examples/multiple_sessions.py
"""

from __future__ import annotations

import asyncio

from _model import example_model
from agents import Agent, Runner

from agentmem import SQLiteSession


async def main() -> None:
    agent = Agent(name="Assistant", instructions="Reply very concisely.", model=example_model())
    user1_session = SQLiteSession("user_123", "conversations.db")
    user2_session = SQLiteSession("user_456", "conversations.db")

    question = "What city is the Golden Gate Bridge in?"
    result = await Runner.run(agent, question, session=user1_session)
    print(f"user_123: {question} -> {result.final_output}")

    # Each user sees only their own history: "it" means something only to user_123.
    for name, session in [("user_123", user1_session), ("user_456", user2_session)]:
        result = await Runner.run(agent, "What state is it in?", session=session)
        print(f"{name}: What state is it in? -> {result.final_output}")

    for session in (user1_session, user2_session):
        await session.clear_session()
        await session.close()


if __name__ == "__main__":
    asyncio.run(main())
