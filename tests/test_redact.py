"""No password in agentmem's messages: the masking helper, and the library's schema errors that
name the database's URL."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agentmem import SchemaError
from agentmem._redact import mask_credentials
from agentmem.sql.sqlalchemy import SQLAlchemySession
from tests.conftest import unique_id


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("mysql://root:SECRET@db/app", "mysql://root:***@db/app"),
        (
            "postgresql+asyncpg://app:SE:CR/ET@db:5432/app",
            "postgresql+asyncpg://app:***@db:5432/app",
        ),
        ("redis://:SECRET@localhost:6379/0", "redis://:***@localhost:6379/0"),
        ("rediss://user:SECRET@cache:6380", "rediss://user:***@cache:6380"),
        ("redis://localhost/0?password=SECRET", "redis://localhost/0?password=***"),
        ("redis://localhost/0?db=1&pass=SECRET&x=1", "redis://localhost/0?db=1&pass=***&x=1"),
        ("unix:///run/redis.sock?db=0&password=SECRET", "unix:///run/redis.sock?db=0&password=***"),
        ("unix://user:SECRET@/run/redis.sock?db=0", "unix://user:***@/run/redis.sock?db=0"),
        ("host=db password=SECRET user=app", "host=db password=*** user=app"),
        (
            "cannot use Redis at redis://h/0?password=SECRET: refused",
            "cannot use Redis at redis://h/0?password=***: refused",
        ),
        ("unsupported URL 'mysql://u:SECRET@h/x': use", "unsupported URL 'mysql://u:***@h/x': use"),
        # nothing to mask
        ("postgresql://app@db:5432/app", "postgresql://app@db:5432/app"),
        ("sqlite:////srv/a:b@c.db", "sqlite:////srv/a:b@c.db"),
        (
            "no session 'x' in redis://localhost:6379/0",
            "no session 'x' in redis://localhost:6379/0",
        ),
    ],
)
def test_mask_credentials(text: str, masked: str) -> None:
    assert mask_credentials(text) == masked
    assert mask_credentials(masked) == masked


@pytest.mark.postgres
async def test_schema_error_names_the_masked_url_and_the_table_prefix(postgres_url: str) -> None:
    from sqlalchemy.engine import make_url

    url = make_url(postgres_url).set(password="SECRET")  # trust auth: the password is unused
    session = SQLAlchemySession.from_url(
        unique_id(), url=url.render_as_string(hide_password=False), table_prefix="nope_"
    )
    try:
        with pytest.raises(SchemaError) as raised:
            await session.get_items()
    finally:
        await session.close()

    message = str(raised.value)
    assert "SECRET" not in message
    masked = url.render_as_string(hide_password=True)
    assert f"agentmem upgrade --url '{masked}' --table-prefix nope_" in message


@pytest.mark.sqlite
async def test_schema_error_for_a_dropped_table_names_the_url(tmp_path: Path) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'gone.db'}")
    session = SQLAlchemySession(engine, unique_id(), create_tables=True, table_prefix="am_")
    try:
        await session.add_items([{"n": 1}])
        with sqlite3.connect(tmp_path / "gone.db") as conn:
            conn.execute("DROP TABLE am_messages")
        with pytest.raises(SchemaError) as raised:
            await session.get_items()
    finally:
        await session.close()
        await engine.dispose()

    expected = (
        f"agentmem upgrade --url sqlite+aiosqlite:///{tmp_path / 'gone.db'} --table-prefix am_"
    )
    assert expected in str(raised.value)


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("postgresql://u:pa'ss@h/db", "postgresql://u:***@h/db"),
        ('redis://default:pa"ss@h:6379', "redis://default:***@h:6379"),
    ],
)
def test_passwords_holding_quotes_are_masked(text: str, masked: str) -> None:
    assert mask_credentials(text) == masked
