"""Alembic migrations: upgrade, downgrade, models in sync with head, prefixes, and the errors
that name the fix, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from agentmem import SchemaError, SQLAlchemySession, SQLiteSession, migrate
from agentmem.models import tables_for_prefix
from tests.conftest import unique_id

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(
    params=[
        pytest.param("sqlite", marks=pytest.mark.sqlite),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
async def empty_engine(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[AsyncEngine]:
    """An engine on an empty database: a new SQLite file, or a new PostgreSQL schema."""
    if request.param == "sqlite":
        engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}")
        yield engine
        await engine.dispose()
        return
    url: str = request.getfixturevalue("postgres_database")
    schema = f"mig_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(url)
    async with admin.begin() as conn:
        await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine = create_async_engine(url, connect_args={"server_settings": {"search_path": schema}})
    yield engine
    await engine.dispose()
    async with admin.begin() as conn:
        await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    await admin.dispose()


async def _table_names(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        names: list[str] = await conn.run_sync(lambda c: inspect(c).get_table_names())
    return set(names)


def test_there_is_a_single_head() -> None:
    script = ScriptDirectory.from_config(migrate.make_config())
    assert len(script.get_heads()) == 1
    assert migrate.head() == script.get_current_head()


async def test_upgrade_from_empty_creates_the_tables(empty_engine: AsyncEngine) -> None:
    assert await migrate.current(empty_engine) is None
    await migrate.upgrade(empty_engine)
    assert await migrate.current(empty_engine) == migrate.head()
    assert await _table_names(empty_engine) == {
        "sessions",
        "messages",
        "agentmem_alembic_version",
    }
    await migrate.check(empty_engine)
    await migrate.upgrade(empty_engine)  # a second upgrade is a no-op
    assert await migrate.current(empty_engine) == migrate.head()


async def test_downgrade_to_base_and_up_again(empty_engine: AsyncEngine) -> None:
    await migrate.upgrade(empty_engine)
    session = SQLAlchemySession(empty_engine, unique_id())
    await session.add_items([{"n": 1}])
    await migrate.downgrade(empty_engine)
    assert await migrate.current(empty_engine) is None
    assert await _table_names(empty_engine) == {"agentmem_alembic_version"}
    await migrate.upgrade(empty_engine)
    fresh = SQLAlchemySession(empty_engine, unique_id())
    await fresh.add_items([{"n": 2}])
    assert await fresh.get_items() == [{"n": 2}]


async def test_models_and_head_agree(empty_engine: AsyncEngine) -> None:
    """Autogenerate against a database at head finds no difference from the models."""
    await migrate.upgrade(empty_engine)

    def diff(sync_conn: Any) -> list[Any]:
        context = MigrationContext.configure(
            sync_conn,
            opts={"compare_type": True, "version_table": "agentmem_alembic_version"},
        )
        result: list[Any] = compare_metadata(context, tables_for_prefix("").metadata)
        return result

    async with empty_engine.connect() as conn:
        assert await conn.run_sync(diff) == []


async def test_missing_schema_names_the_fix(empty_engine: AsyncEngine) -> None:
    session = SQLAlchemySession(empty_engine, unique_id())
    with pytest.raises(SchemaError, match="agentmem upgrade"):
        await session.add_items([{"n": 1}])
    assert await _table_names(empty_engine) == set()
    with pytest.raises(SchemaError, match="alembic upgrade head"):
        await migrate.check(empty_engine)


async def test_schema_behind_head_names_the_fix(empty_engine: AsyncEngine) -> None:
    await migrate.upgrade(empty_engine)
    async with empty_engine.begin() as conn:
        await conn.execute(text("UPDATE agentmem_alembic_version SET version_num = '0000'"))
    session = SQLAlchemySession(empty_engine, unique_id())
    with pytest.raises(SchemaError, match=r"revision 0000.*agentmem upgrade"):
        await session.get_items()


async def test_create_tables_runs_the_migrations(empty_engine: AsyncEngine) -> None:
    session = SQLAlchemySession(empty_engine, unique_id(), create_tables=True)
    await session.add_items([{"n": 1}])
    assert await session.get_items() == [{"n": 1}]
    assert await migrate.current(empty_engine) == migrate.head()


async def test_prefix_coexists_with_an_application_sessions_table(
    empty_engine: AsyncEngine,
) -> None:
    async with empty_engine.begin() as conn:
        await conn.execute(text("CREATE TABLE sessions (token VARCHAR(40) PRIMARY KEY)"))
        await conn.execute(text("INSERT INTO sessions VALUES ('app-cookie')"))
    await migrate.upgrade(empty_engine, table_prefix="am_")
    assert await migrate.current(empty_engine, table_prefix="am_") == migrate.head()
    assert await migrate.current(empty_engine) is None
    session = SQLAlchemySession(empty_engine, unique_id(), table_prefix="am_")
    await session.add_items([{"n": 1}])
    assert await session.get_items() == [{"n": 1}]
    async with empty_engine.connect() as conn:
        rows = (await conn.execute(text("SELECT token FROM sessions"))).all()
    assert rows == [("app-cookie",)]
    assert {"am_sessions", "am_messages", "am_agentmem_alembic_version"} <= await _table_names(
        empty_engine
    )
    await migrate.downgrade(empty_engine, table_prefix="am_")
    assert await _table_names(empty_engine) == {"sessions", "am_agentmem_alembic_version"}


@pytest.mark.parametrize("prefix", ["Bad", "1x", "a-b", "x" * 31, "a b"])
def test_bad_prefixes_are_rejected(prefix: str) -> None:
    with pytest.raises(ValueError, match="table_prefix"):
        SQLiteSession(unique_id(), table_prefix=prefix)


@pytest.mark.sqlite
async def test_sqlite_file_is_migrated_on_first_use_and_alembic_agrees(tmp_path: Path) -> None:
    path = tmp_path / "first.db"
    session = SQLiteSession(unique_id(), path)
    await session.add_items([{"n": 1}])
    await session.close()
    engine = create_async_engine(f"sqlite+aiosqlite:///{path}")
    try:
        assert await migrate.current(engine) == migrate.head()
    finally:
        await engine.dispose()
    # The repo's own `alembic upgrade head` finds nothing left to do.
    result = _alembic(["upgrade", "head"], env={"AGENTMEM_DATABASE_URL": f"sqlite:///{path}"})
    assert result.returncode == 0, result.stderr
    assert "Running upgrade" not in result.stderr


def _alembic(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.sqlite
def test_alembic_cli_takes_the_url_from_env_or_x_argument(tmp_path: Path) -> None:
    by_env = tmp_path / "env.db"
    result = _alembic(["upgrade", "head"], env={"AGENTMEM_DATABASE_URL": f"sqlite:///{by_env}"})
    assert result.returncode == 0, result.stderr
    assert "Running upgrade  -> 0001" in result.stderr
    by_x = tmp_path / "x.db"
    result = _alembic(["-x", f"url=sqlite:///{by_x}", "upgrade", "head"], env={})
    assert result.returncode == 0, result.stderr
    result = _alembic(["-x", f"url=sqlite:///{by_x}", "current"], env={})
    assert migrate.head() in result.stdout
    result = _alembic(["upgrade", "head"], env={"AGENTMEM_DATABASE_URL": ""})
    assert result.returncode != 0
    assert "AGENTMEM_DATABASE_URL" in result.stderr + result.stdout


@pytest.mark.postgres
def test_alembic_cli_upgrades_postgres(postgres_database: str) -> None:
    plain = postgres_database.replace("postgresql+asyncpg://", "postgresql://")
    args = ["-x", f"url={plain}", "-x", "table_prefix=cli_"]
    result = _alembic([*args, "upgrade", "head"], env={})
    assert result.returncode == 0, result.stderr
    result = _alembic([*args, "current"], env={})
    assert migrate.head() in result.stdout
    result = _alembic([*args, "downgrade", "base"], env={})
    assert result.returncode == 0, result.stderr
