"""The public SQL interface that the cache composes (agentmem.sql.base): what each SQL session
and manager says of its database."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from agentmem import (
    SQLAlchemySession,
    SQLAlchemySessionManager,
    SQLiteSession,
    SQLiteSessionManager,
)
from agentmem.sql.base import SQLSessionBase, SQLSessionManagerABC

pytestmark = pytest.mark.sqlite


async def test_sqlite_sessions_and_managers_say_whether_their_database_is_process_private(
    tmp_path: Path,
) -> None:
    path = tmp_path / "interface.db"
    async with SQLiteSession("s") as memory, SQLiteSession("s", path) as on_file:
        assert isinstance(memory, SQLSessionBase)
        assert (memory.process_private, on_file.process_private) == (True, False)
        # The thread's call is waited for: a call that raised is over.
        assert memory.over_when_raised and on_file.over_when_raised
    async with SQLiteSessionManager() as memory_manager, SQLiteSessionManager(path) as manager:
        assert isinstance(manager, SQLSessionManagerABC)
        assert (memory_manager.process_private, manager.process_private) == (True, False)


async def test_sqlalchemy_sessions_and_managers_say_whether_their_database_is_process_private(
    tmp_path: Path,
) -> None:
    memory = create_async_engine("sqlite+aiosqlite://")
    on_file = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'interface.db'}")
    try:
        assert SQLAlchemySession(memory, "s").process_private
        assert not SQLAlchemySession(on_file, "s").process_private
        # A statement's reply may be lost while it still commits: not over when raised.
        assert not SQLAlchemySession(on_file, "s").over_when_raised
        assert SQLAlchemySessionManager(memory).process_private
        assert not SQLAlchemySessionManager(on_file).process_private
        assert isinstance(SQLAlchemySessionManager(on_file), SQLSessionManagerABC)
    finally:
        await memory.dispose()
        await on_file.dispose()


async def test_a_cached_manager_refuses_an_in_memory_sqlalchemy_store_when_built() -> None:
    from agentmem import CachedSessionManager

    engine = create_async_engine("sqlite+aiosqlite://")
    store = SQLAlchemySessionManager(engine)
    try:
        with pytest.raises(ValueError, match="in-memory"):
            CachedSessionManager(store)
    finally:
        await store.close()
        await engine.dispose()
