"""Functions run in child processes by the multi-process tests (spawned, so importable); each
opens its sessions by the registry's picklable :class:`~tests._backends.Backend`."""

from __future__ import annotations

import asyncio
from typing import Any

from tests._backends import Backend


def write_items(backend: Backend, session_id: str, writer: int, count: int) -> int:
    """Add ``count`` one-item batches ``{"w": writer, "i": i}``; return how many were added."""

    async def run() -> int:
        async with backend.open(session_id) as session:  # type: ignore[attr-defined]
            for i in range(count):
                await session.add_items([{"w": writer, "i": i}])
        return count

    return asyncio.run(run())


def pop_until_empty(backend: Backend, session_id: str) -> list[Any]:
    """Pop until the session is empty; return what this process popped."""

    async def run() -> list[Any]:
        popped = []
        async with backend.open(session_id) as session:  # type: ignore[attr-defined]
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
