"""Redis with ``RedisSessionManager``: many sessions over one connection pool, with expiry.

python examples/redis_manager.py [REDIS_URL]     # default redis://localhost:6379/0
"""

from __future__ import annotations

import asyncio
import sys

from _model import example_model
from agents import Agent, Runner

from agentmem import RedisSessionManager


async def main(redis_url: str) -> None:
    agent = Agent(name="Assistant", instructions="Reply very concisely.", model=example_model())
    async with RedisSessionManager(redis_url, default_ttl=3600, max_connections=10) as manager:
        session = manager.get_session("user_123")  # expires an hour after its last write
        for question in ["What city is the Golden Gate Bridge in?", "What state is it in?"]:
            result = await Runner.run(agent, question, session=session)
            print(f"{question} -> {result.final_output}")

        print(f"user_123 stored: {'user_123' in await manager.list_sessions()}")
        print(f"{len(await session.get_items())} items, expiring in {session.ttl}")
        await manager.delete_session("user_123")
        print(f"user_123 after delete: {await session.get_items()}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "redis://localhost:6379/0"))
