"""``agentmem sessions import --sdk URL``: the OpenAI Agents SDK's own storage (its SQLiteSession
file, its SQLAlchemySession tables, its RedisSession keys), written by the real SDK 0.24
sessions, brought into agentmem stores: resumable, with a report of what was left out."""

from __future__ import annotations

import json
import os
import pty
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from agents.memory import SQLiteSession as SDKSQLiteSession

from agentmem import RedisSession, SQLAlchemySession, SQLiteSession
from tests.conftest import REDIS_PREFIX, REDIS_URL

CONVERSATIONS = {
    "alice": [
        {"role": "user", "content": "Hi"},
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": "Hello, Alice", "annotations": []}],
        },
    ],
    "bob:with:colons": [
        {"role": "user", "content": "Wie geht's? ✓"},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "42"},
    ],
}


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "AGENTMEM_DATABASE_URL"}
    return subprocess.run(
        [sys.executable, "-m", "agentmem.cli", *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def imported(*args: str, cwd: Path) -> dict[str, Any]:
    result = cli("sessions", "import", "--json", *args, cwd=cwd)
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


async def test_the_sdks_sqlite_file_into_agentmem_sqlite(tmp_path: Path) -> None:
    sdk_file = tmp_path / "sdk.db"
    for session_id, items in CONVERSATIONS.items():
        sdk = SDKSQLiteSession(session_id, sdk_file)
        await sdk.add_items(items)
        sdk.close()
    with sqlite3.connect(sdk_file) as conn:  # rows another program wrote
        conn.execute(
            "INSERT INTO agent_messages (session_id, message_data) VALUES (?, ?), (?, ?)",
            ("alice", "{not json", "alice", "[1, 2]"),
        )
    target = f"sqlite:///{tmp_path / 'agentmem.db'}"

    report = imported("--sdk", f"sqlite:///{sdk_file}", "--url", target, cwd=tmp_path)
    assert (report["sessions"], report["items"]) == (2, 5)
    assert report["already_present"] == []
    assert len(report["skipped"]) == 2
    assert all(line.startswith("session 'alice' row ") for line in report["skipped"])
    assert "not valid JSON" in report["skipped"][0] and "a JSON list" in report["skipped"][1]
    for session_id, items in CONVERSATIONS.items():
        session = SQLiteSession(session_id, tmp_path / "agentmem.db")
        assert await session.get_items() == items
        await session.close()

    # Resumable: a second run skips what is there and imports what is missing.
    from agentmem import SQLiteSessionManager

    async with SQLiteSessionManager(tmp_path / "agentmem.db") as manager:
        await manager.delete_session("alice")
    again = imported("--sdk", f"sqlite:///{sdk_file}", "--url", target, cwd=tmp_path)
    assert (again["sessions"], again["already_present"]) == (1, ["bob:with:colons"])
    text = cli(
        "sessions", "import", "--sdk", f"sqlite:///{sdk_file}", "--url", target, cwd=tmp_path
    )
    assert text.returncode == 0, text.stderr
    assert "Imported 0 sessions" in text.stdout
    assert "Skipped 2 sessions already in" in text.stdout


@pytest.mark.postgres
@pytest.mark.redis
async def test_the_sdks_sqlalchemy_tables_into_agentmem_redis(
    postgres_url: str, redis_client: Any, tmp_path: Path
) -> None:
    from agents.extensions.memory import SQLAlchemySession as SDKSQLAlchemySession
    from sqlalchemy.ext.asyncio import create_async_engine

    name = f"sdk_{uuid.uuid4().hex[:8]}"
    engine = create_async_engine(postgres_url)
    try:
        for session_id, items in CONVERSATIONS.items():
            sdk = SDKSQLAlchemySession(
                session_id,
                engine=engine,
                create_tables=True,
                sessions_table=f"{name}_sessions",
                messages_table=f"{name}_messages",
            )
            await sdk.add_items(items)
    finally:
        await engine.dispose()
    key_prefix = f"{REDIS_PREFIX}:imported"
    source = postgres_url.replace("postgresql+asyncpg://", "postgresql://")
    args = ["--sdk", source, "--sdk-sessions-table", f"{name}_sessions"]
    args += ["--sdk-messages-table", f"{name}_messages", "--url", REDIS_URL]
    report = imported(*args, "--key-prefix", key_prefix, cwd=tmp_path)
    assert (report["sessions"], report["items"], report["skipped"]) == (2, 5, [])
    for session_id, items in CONVERSATIONS.items():
        session = RedisSession(
            session_id,
            client=redis_client,
            session_prefix=f"{key_prefix}:session",
            messages_prefix=f"{key_prefix}:messages",
        )
        assert await session.get_items() == items

    missing = cli(
        *("sessions", "import", "--sdk", source, "--url", REDIS_URL),
        *("--sdk-sessions-table", f"{name}_absent_sessions"),
        cwd=tmp_path,
    )
    assert missing.returncode == 1
    assert "cannot read the OpenAI Agents SDK's sessions" in missing.stderr
    assert "--sdk-sessions-table" in missing.stderr


@pytest.mark.postgres
@pytest.mark.redis
async def test_the_sdks_redis_keys_into_agentmem_postgres(
    postgres_url: str, redis_client: Any, tmp_path: Path
) -> None:
    from agents.extensions.memory import RedisSession as SDKRedisSession

    sdk_prefix = f"{REDIS_PREFIX}:sdk-{uuid.uuid4().hex[:6]}"
    ids = {session_id: f"{session_id}-{uuid.uuid4().hex[:6]}" for session_id in CONVERSATIONS}
    for session_id, items in CONVERSATIONS.items():
        sdk = SDKRedisSession(ids[session_id], redis_client=redis_client, key_prefix=sdk_prefix)
        await sdk.add_items(items)
    await redis_client.rpush(f"{sdk_prefix}:{ids['alice']}:messages", "not json")
    await redis_client.set(f"{sdk_prefix}:stray", "a key that is not a session")

    target = postgres_url.replace("postgresql+asyncpg://", "postgresql://")
    report = imported(
        "--sdk", REDIS_URL, "--sdk-key-prefix", sdk_prefix, "--url", target, cwd=tmp_path
    )
    assert (report["sessions"], report["items"]) == (2, 5)
    assert report["skipped"] == [f"session {ids['alice']!r} list index 2: not valid JSON"]
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(postgres_url)
    try:
        for session_id, items in CONVERSATIONS.items():
            session = SQLAlchemySession(engine, ids[session_id])
            assert await session.get_items() == items
            await session.clear_session()
    finally:
        await engine.dispose()


def test_the_import_draws_a_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    sdk_file = tmp_path / "sdk.db"

    async def write() -> None:
        for n in range(12):
            sdk = SDKSQLiteSession(f"s{n}", sdk_file)
            await sdk.add_items([{"role": "user", "content": str(n)}])
            sdk.close()

    import asyncio

    asyncio.run(write())
    controller, terminal = pty.openpty()
    try:
        process = subprocess.run(
            [
                *(sys.executable, "-m", "agentmem.cli", "sessions", "import"),
                *("--sdk", f"sqlite:///{sdk_file}", "--url", f"sqlite:///{tmp_path / 'am.db'}"),
            ],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=terminal,
            timeout=120,
            check=True,
        )
        os.close(terminal)
        drawn = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(controller)
    assert b"Importing [" in drawn and b"12/12" in drawn
    assert b"Imported 12 sessions" in process.stdout


def test_file_and_sdk_are_exclusive(tmp_path: Path) -> None:
    both = cli("sessions", "import", "x.jsonl", "--sdk", "sqlite:///x.db", cwd=tmp_path)
    assert both.returncode == 1 and "not both" in both.stderr
    neither = cli("sessions", "import", cwd=tmp_path)
    assert neither.returncode == 1 and "--sdk URL" in neither.stderr
