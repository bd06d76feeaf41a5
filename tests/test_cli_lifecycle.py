"""The lifecycle commands: ``sessions list --user`` with ``--cursor`` paging, ``sessions info``
and ``purge``, on every kind of store (the sessions are written with the managers' API)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from agentmem.manager import SessionManagerABC
from tests.test_cli import (  # noqa: F401  (fixtures, found by name)
    STORES,
    Store,
    agentmem,
    assert_user_error,
    empty_postgres,
    postgres_store,
    redis_store,
    sqlite_store,
)

USER = "user-7"


@pytest.fixture(params=STORES)
def cli_store(request: pytest.FixtureRequest) -> Store:
    """Each kind of store in turn, empty and ready."""
    value: Store = request.getfixturevalue(request.param)
    return value


def manager_of(store: Store) -> SessionManagerABC[Any]:
    """A manager on the store the command line names (the registry's)."""
    return store.manager()


async def test_sessions_list_of_a_user_pages_with_the_cursor(
    cli_store: Store, tmp_path: Path
) -> None:
    store = cli_store
    async with manager_of(store) as manager:
        for n in range(5):
            session = manager.get_session(f"s{n}", user_id=USER, title=f"T{n}")
            await session.add_items([{"n": n}])
        await manager.get_session("other", user_id="someone-else").add_items([{"n": 9}])

    first = json.loads(
        agentmem(
            "sessions", "list", *store.args, "--user", USER, "--limit", "3", "--json", cwd=tmp_path
        ).stdout
    )
    assert [s["session_id"] for s in first["sessions"]] == ["s4", "s3", "s2"]
    assert first["sessions"][0]["user_id"] == USER
    assert first["sessions"][0]["title"] == "T4"
    second = json.loads(
        agentmem(
            "sessions", "list", *store.args, "--user", USER, "--limit", "3", "--json",
            "--cursor", first["next_cursor"], cwd=tmp_path,
        ).stdout
    )  # fmt: skip
    assert [s["session_id"] for s in second["sessions"]] == ["s1", "s0"]
    assert second["next_cursor"] is None

    text = agentmem("sessions", "list", *store.args, "--user", USER, cwd=tmp_path).stdout
    assert "s4" in text and "T4" in text and "other" not in text


async def test_sessions_info_shows_owner_title_metadata_and_expiry(
    cli_store: Store, tmp_path: Path
) -> None:
    store = cli_store
    async with manager_of(store) as manager:
        session = manager.get_session(
            "s", user_id=USER, title="Refund", metadata={"topic": "billing"}, ttl=3600
        )
        await session.add_items([{"n": 1}])
    info = json.loads(agentmem("sessions", "info", "s", *store.args, "--json", cwd=tmp_path).stdout)
    assert (info["user_id"], info["title"], info["metadata"], info["items"]) == (
        USER,
        "Refund",
        {"topic": "billing"},
        1,
    )
    assert info["expires_at"] is not None
    text = agentmem("sessions", "info", "s", *store.args, cwd=tmp_path).stdout
    assert "Refund" in text and USER in text and "billing" in text
    assert_user_error(
        agentmem("sessions", "info", "nope", *store.args, cwd=tmp_path, ok=False), "nope"
    )


async def test_purge_deletes_the_expired_sessions_with_a_progress_bar(
    cli_store: Store, tmp_path: Path
) -> None:
    store = cli_store
    async with manager_of(store) as manager:
        for n in range(3):
            await manager.get_session(f"gone{n}", user_id=USER, ttl=0.005).add_items([{"n": n}])
        await manager.get_session("kept", user_id=USER, ttl=3600).add_items([{"n": 1}])
        deadline = time.monotonic() + 60
        for n in range(3):  # wait until the three have expired
            while await manager.session_info(f"gone{n}") is not None:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)

    result = agentmem("purge", *store.args, "--batch-size", "2", "--progress", cwd=tmp_path)
    assert "Purged 3 expired sessions" in result.stdout
    assert "purging [" in result.stderr and "3 deleted" in result.stderr
    again = json.loads(agentmem("purge", *store.args, "--json", cwd=tmp_path).stdout)
    assert again["purged"] == 0
    async with manager_of(store) as manager:
        assert await manager.list_sessions() == ["kept"]
