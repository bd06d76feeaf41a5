"""``agentmem rotate-keys``: run for real in a subprocess against SQLite, PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from agentmem import DecryptionError, EncryptedSession
from agentmem.cli._stores import DEFAULT_KEY_PREFIX, open_store
from agentmem.manager import SessionManagerABC
from agentmem.wrappers import generate_key
from tests.test_cli import (  # noqa: F401  # the stores' fixtures
    STORES,
    Store,
    agentmem,
    assert_user_error,
    empty_postgres,
    postgres_store,
    redis_store,
    sqlite_store,
)

K1, K2 = generate_key(), generate_key()
BOTH = f"k1={K1}, k2={K2}"


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest) -> Store:
    """Each kind of store in turn, empty and ready."""
    value: Store = request.getfixturevalue(request.param)
    return value


@pytest.fixture
async def manager(store: Store, tmp_path: Path) -> AsyncIterator[SessionManagerABC[Any]]:
    """The manager the command uses for ``store`` (a SQLite file is created at head first)."""
    if store.kind == "sqlite-file":
        agentmem("upgrade", *store.args, cwd=tmp_path)
    key_prefix = store.extra[1] if store.extra else DEFAULT_KEY_PREFIX
    opened = open_store(store.url, key_prefix=key_prefix)
    yield opened.manager
    await opened.close()


def session(manager: SessionManagerABC[Any], session_id: str, **keys: str) -> EncryptedSession:
    """An encrypted session of ``manager`` under the last of ``keys``."""
    return EncryptedSession(manager.get_session(session_id), keys=keys, current=list(keys)[-1])


def rotate(
    args: list[str], cwd: Path, *options: str, env: dict[str, str] | None = None, ok: bool = True
) -> subprocess.CompletedProcess[str]:
    """``agentmem rotate-keys --from k1 --to k2 [options]`` on the store of ``args``."""
    return agentmem(
        "rotate-keys", "--from", "k1", "--to", "k2", *options, *args, cwd=cwd, env=env, ok=ok
    )


async def test_rotate_keys_moves_every_session_and_can_be_run_again(
    store: Store, manager: SessionManagerABC[Any], tmp_path: Path
) -> None:
    await session(manager, "old", k1=K1).add_items([{"n": 0}, {"n": 1}])
    await session(manager, "mixed", k1=K1).add_items([{"n": 2}])
    await session(manager, "mixed", k1=K1, k2=K2).add_items([{"n": 3}])
    await session(manager, "new", k2=K2).add_items([{"n": 4}])
    await manager.get_session("plain").add_items([{"not": "encrypted"}])
    env = {"AGENTMEM_ENCRYPTION_KEYS": BOTH}

    result = rotate(store.args, tmp_path, "--json", "--batch-size", "2", env=env)
    assert json.loads(result.stdout) == {
        "from": "k1",
        "to": "k2",
        "sessions_checked": 4,
        "sessions_rotated": 2,
        "items_rotated": 3,
        "failed": [],
    }
    assert K1 not in result.stdout + result.stderr and K2 not in result.stdout + result.stderr
    assert await session(manager, "old", k2=K2).get_items() == [{"n": 0}, {"n": 1}]
    assert await session(manager, "mixed", k2=K2).get_items() == [{"n": 2}, {"n": 3}]
    assert await session(manager, "new", k2=K2).get_items() == [{"n": 4}]
    assert await manager.get_session("plain").get_items() == [{"not": "encrypted"}]

    again = rotate(store.args, tmp_path, env=env)
    assert "Rotated 0 items in 0 sessions" in again.stdout
    assert "4 sessions checked, 0 failed" in again.stdout


async def test_rotate_keys_keeps_each_session_lifecycle(
    store: Store, manager: SessionManagerABC[Any], tmp_path: Path
) -> None:
    inner = manager.get_session(
        "owned", user_id="u1", title="Trip", metadata={"topic": "travel"}, ttl=3600
    )
    await EncryptedSession(inner, keys={"k1": K1}, current="k1").add_items([{"n": 1}])
    before = await manager.session_info("owned")
    assert before is not None and before.expires_at is not None

    rotate(store.args, tmp_path, env={"AGENTMEM_ENCRYPTION_KEYS": BOTH})
    after = await manager.session_info("owned")
    assert after is not None and after.expires_at is not None
    assert (after.user_id, after.title, after.metadata) == ("u1", "Trip", {"topic": "travel"})
    assert abs(after.expires_at - before.expires_at) < timedelta(seconds=1)
    assert await session(manager, "owned", k2=K2).get_items() == [{"n": 1}]
    assert [page.session_id for page in (await manager.find_sessions(user_id="u1")).items] == [
        "owned"
    ]


@pytest.mark.sqlite
async def test_keys_from_a_file(tmp_path: Path) -> None:
    local = await _populate(tmp_path)
    keys = tmp_path / "keys.txt"
    keys.write_text(f"# agentmem keys\nk1={K1}\n\nk2={K2}\n", encoding="utf-8")
    result = rotate(local.args, tmp_path, "--keys-file", str(keys))
    assert "Rotated 1 item in 1 session from key 'k1' to 'k2'" in result.stdout


async def _populate(tmp_path: Path) -> Store:
    """A SQLite store at head with one session of one item under k1."""
    store = Store("sqlite-file", str(tmp_path / "store.db"))
    agentmem("upgrade", *store.args, cwd=tmp_path)
    opened = open_store(store.url)
    await session(opened.manager, "s", k1=K1).add_items([{"n": 1}])
    await opened.close()
    return store


BAD = [
    pytest.param({}, [], "no encryption keys: set $AGENTMEM_ENCRYPTION_KEYS", id="no-keys"),
    pytest.param({"AGENTMEM_ENCRYPTION_KEYS": f"k2={K2}"}, [], "'k1' is not in keys", id="from"),
    pytest.param({"AGENTMEM_ENCRYPTION_KEYS": f"k1={K1} {K2}"}, [], "entry 2", id="malformed"),
    pytest.param({"AGENTMEM_ENCRYPTION_KEYS": "k1=c2hvcnQ= k2=x"}, [], "5 bytes", id="short"),
    pytest.param({"MY_KEYS": BOTH}, ["--keys-env", "OTHER"], "$OTHER", id="keys-env"),
    pytest.param({}, ["--keys-file", "missing.txt"], "cannot read the keys file", id="file"),
]


@pytest.mark.sqlite
@pytest.mark.parametrize(("env", "extra", "message"), BAD)
async def test_bad_keys_are_a_user_error_that_shows_no_key(
    tmp_path: Path, env: dict[str, str], extra: list[str], message: str
) -> None:
    local = await _populate(tmp_path)
    result = rotate(local.args, tmp_path, *extra, env=env, ok=False)
    assert_user_error(result, message)
    assert K1 not in result.stderr and K2 not in result.stderr


@pytest.mark.sqlite
async def test_a_session_that_does_not_decrypt_is_reported_and_left_alone(
    tmp_path: Path,
) -> None:
    local = await _populate(tmp_path)
    opened = open_store(local.url)
    bad = session(opened.manager, "bad", k1=K1)
    await bad.add_items([{"n": 1}])
    [envelope] = await bad.inner.get_items()
    await bad.inner.add_items([{**envelope, "data": envelope["data"][::-1]}])
    await opened.close()

    result = rotate(
        local.args, tmp_path, "--json", env={"AGENTMEM_ENCRYPTION_KEYS": BOTH}, ok=False
    )
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["sessions_rotated"] == 1 and report["items_rotated"] == 1
    assert [failure["session_id"] for failure in report["failed"]] == ["bad"]
    assert "position -1" in report["failed"][0]["error"]
    assert "session 'bad' left as it was" in result.stderr

    opened = open_store(local.url)
    bad = session(opened.manager, "bad", k1=K1)
    assert [e["kid"] for e in await bad.inner.get_items()] == ["k1", "k1"]
    with pytest.raises(DecryptionError):
        await bad.get_items()
    await opened.close()


@pytest.mark.sqlite
def test_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    local = asyncio.run(_populate(tmp_path))
    controller, terminal = pty.openpty()
    try:
        process = subprocess.run(
            [
                sys.executable,
                "-m",
                "agentmem.cli",
                "rotate-keys",
                "--from",
                "k1",
                "--to",
                "k2",
                *local.args,
            ],
            cwd=tmp_path,
            env={**os.environ, "AGENTMEM_ENCRYPTION_KEYS": BOTH},
            stdout=subprocess.PIPE,
            stderr=terminal,
            timeout=120,
            check=True,
        )
        os.close(terminal)
        drawn = b""
        while chunk := _read(controller):
            drawn += chunk
    finally:
        os.close(controller)
    assert b"Rotating [" in drawn and b"1/1" in drawn
    assert b"Rotated 1 item in 1 session" in process.stdout


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:  # the terminal's other end is closed
        return b""
