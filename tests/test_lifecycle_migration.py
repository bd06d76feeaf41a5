"""Revision 0002 (the session lifecycle) on a database holding data: nothing is lost, the new
columns are filled, and the downgrade gives the data back, on SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

from agentmem import SQLAlchemySessionManager, migrate
from tests.test_migrations import empty_engine  # noqa: F401  (fixture, found by name)

ITEMS = {"a": 3, "b": 1, "empty": 0}


async def _fill_at_0001(engine: AsyncEngine) -> None:
    await migrate.upgrade(engine, "0001")
    async with engine.begin() as conn:
        for session_id, count in ITEMS.items():
            await conn.execute(
                text("INSERT INTO sessions (session_id) VALUES (:id)"), {"id": session_id}
            )
            for n in range(count):
                await conn.execute(
                    text("INSERT INTO messages (session_id, message_data) VALUES (:id, :data)"),
                    {"id": session_id, "data": f'{{"n": {n}}}'},
                )


async def _columns(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        columns = await conn.run_sync(lambda c: inspect(c).get_columns("sessions"))
    return {column["name"] for column in columns}


async def _messages(engine: AsyncEngine) -> list[tuple[str, str]]:
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT session_id, message_data FROM messages ORDER BY id"))
        return [(row[0], row[1]) for row in rows]


async def test_upgrade_with_data_fills_the_new_columns_and_downgrade_keeps_the_data(
    empty_engine: AsyncEngine,  # noqa: F811
) -> None:
    await _fill_at_0001(empty_engine)
    before = await _messages(empty_engine)
    assert len(before) == 4

    await migrate.upgrade(empty_engine)
    assert await migrate.current(empty_engine) == migrate.head()
    assert {"user_id", "title", "item_count"} <= await _columns(empty_engine)
    assert await _messages(empty_engine) == before
    async with SQLAlchemySessionManager(empty_engine) as manager:
        for session_id, count in ITEMS.items():
            info = await manager.session_info(session_id)
            assert info is not None
            assert (info.item_count, info.user_id, info.title, info.metadata) == (
                count,
                None,
                None,
                {},
            )
            assert info.expires_at is None
        session = manager.get_session("a")
        assert await session.get_items() == [{"n": 0}, {"n": 1}, {"n": 2}]
        await session.update_info(user_id="owner", metadata={"k": "v"})
        page = await manager.find_sessions(user_id="owner", metadata={"k": "v"})
        assert [i.session_id for i in page.items] == ["a"]

    await migrate.downgrade(empty_engine, "0001")
    assert await migrate.current(empty_engine) == "0001"
    assert not {"user_id", "title", "item_count"} & await _columns(empty_engine)
    assert await _messages(empty_engine) == before
    async with empty_engine.connect() as conn:
        metadata = await conn.scalar(
            text("SELECT metadata_json FROM sessions WHERE session_id = 'a'")
        )
    assert metadata is not None and '"k"' in metadata  # the JSON survives as text

    await migrate.upgrade(empty_engine)  # and up again
    assert await _messages(empty_engine) == before
