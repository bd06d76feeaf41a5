"""Functions run in child processes by the multi-process tests (spawned, so importable)."""

from __future__ import annotations

import asyncio
from typing import Any

from agentmem import Session


def open_session(kind: str, target: str, session_id: str) -> Session:
    """A session in a child process: ``kind`` is "sqlite" (target: file path) or "postgres"
    (target: URL)."""
    if kind == "sqlite":
        from agentmem import SQLiteSession

        return SQLiteSession(session_id, target)
    if kind == "postgres":
        from agentmem import SQLAlchemySession

        return SQLAlchemySession.from_url(session_id, url=target)
    raise ValueError(kind)


def write_items(kind: str, target: str, session_id: str, writer: int, count: int) -> int:
    """Add ``count`` one-item batches ``{"w": writer, "i": i}``; return how many were added."""

    async def run() -> int:
        async with open_session(kind, target, session_id) as session:
            for i in range(count):
                await session.add_items([{"w": writer, "i": i}])
        return count

    return asyncio.run(run())


def pop_until_empty(kind: str, target: str, session_id: str) -> list[Any]:
    """Pop until the session is empty; return what this process popped."""

    async def run() -> list[Any]:
        popped = []
        async with open_session(kind, target, session_id) as session:
            while (item := await session.pop_item()) is not None:
                popped.append(item)
        return popped

    return asyncio.run(run())


def first_call_with_create_tables(url: str, session_id: str, barrier: Any) -> str:
    """Wait at ``barrier``, then make a ``create_tables=True`` session's first call; return
    ``"ok"`` or the error it raised."""

    async def run() -> str:
        from agentmem import SQLAlchemySession

        async with SQLAlchemySession.from_url(
            session_id, url=url, create_tables=True, engine_kwargs={"pool_size": 1}
        ) as session:
            barrier.wait(60)
            try:
                await session.add_items([{"from": session_id}])
            except Exception as exc:
                return f"{type(exc).__name__}: {exc}"
        return "ok"

    return asyncio.run(run())
