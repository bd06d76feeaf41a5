"""Functions run in child processes by the lifecycle tests (spawned, so importable)."""

from __future__ import annotations

import asyncio
from typing import Any

from agentmem.manager import SessionManagerABC


def open_manager(kind: str, target: str) -> SessionManagerABC[Any]:
    """A manager of ``kind`` "sqlite" (target: file path) or "postgres" (target: URL)."""
    if kind == "sqlite":
        from agentmem import SQLiteSessionManager

        return SQLiteSessionManager(target)
    if kind == "postgres":
        from agentmem import SQLAlchemySessionManager

        return SQLAlchemySessionManager.from_url(target)
    raise ValueError(kind)


def read_session(kind: str, target: str, session_id: str) -> tuple[list[Any], Any]:
    """``(items, info)`` of one session as this process sees it."""

    async def run() -> tuple[list[Any], Any]:
        async with open_manager(kind, target) as manager:
            session = manager.get_session(session_id)
            return await session.get_items(), await session.info()

    return asyncio.run(run())


def purge(kind: str, target: str) -> int:
    """Purge the expired sessions; how many went."""

    async def run() -> int:
        async with open_manager(kind, target) as manager:
            return await manager.purge_expired(batch_size=10)

    return asyncio.run(run())
