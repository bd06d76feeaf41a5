"""Fixtures of the reliability suite: each backend's store, and private Redis and PostgreSQL
servers of its own that the fault tests may kill, restart and flush (the shared servers of the
other tests are never restarted or flushed; only this suite's own connections are killed)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from glob import glob
from pathlib import Path

import pytest

from tests.conftest import IN_CI, REDIS_PREFIX, REDIS_URL, run_in_new_loop, server_unavailable
from tests.reliability._stores import Store


@pytest.fixture
def redis_store() -> Iterator[Store]:
    """A store under this run's key prefix on the shared Redis; its keys are deleted afterwards."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        client.close()
        server_unavailable(f"Redis at {REDIS_URL}", exc)
    prefix = f"{REDIS_PREFIX}:rel"
    yield Store("redis", redis_url=REDIS_URL, prefix=prefix)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    for start in range(0, len(keys), 1000):
        client.unlink(*keys[start : start + 1000])
    client.close()


SHARED_STORES = [
    pytest.param("sqlite-file", marks=pytest.mark.sqlite, id="sqlite-file"),
    pytest.param("postgres", marks=pytest.mark.postgres, id="postgres"),
    pytest.param("redis", marks=pytest.mark.redis, id="redis"),
    pytest.param("cached", marks=pytest.mark.cached, id="cached"),
]
"""The stores several session objects and processes share."""

ALL_STORES = [
    pytest.param("sqlite-memory", marks=pytest.mark.sqlite, id="sqlite-memory"),
    *SHARED_STORES,
]


def _store(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if kind == "sqlite-memory":
        return Store(kind)
    if kind == "sqlite-file":
        return Store(kind, str(tmp_path / "reliability.db"))
    if kind == "postgres":
        return Store(kind, request.getfixturevalue("postgres_url"))
    redis: Store = request.getfixturevalue("redis_store")
    if kind == "redis":
        return redis
    return Store(kind, request.getfixturevalue("postgres_url"), redis.redis_url, redis.prefix)


@pytest.fixture(params=SHARED_STORES)
def shared_store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """Each store that processes share, in turn."""
    return _store(request.param, request, tmp_path)


@pytest.fixture(params=SHARED_STORES[:2])
def sql_store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """The SQL stores processes share: a SQLite file, then PostgreSQL."""
    return _store(request.param, request, tmp_path)


@pytest.fixture(params=ALL_STORES)
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """Each store, in turn, including the private in-memory SQLite."""
    return _store(request.param, request, tmp_path)


# --- private servers --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for_port(port: int, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _missing(what: str) -> None:
    if IN_CI:
        pytest.fail(f"{what} is not installed; the fault tests must run in CI", pytrace=False)
    pytest.skip(f"SKIPPED LOUDLY: {what} is not installed")


class PrivateRedis:
    """A redis-server of this test alone, on a free port, writing every command to its
    append-only file before replying (so a restart keeps what was acknowledged)."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--dir", str(self.directory), "--save", ""),
                *("--appendonly", "yes", "--appendfsync", "always"),
            ],
            stdout=subprocess.DEVNULL,
        )
        _wait_for_port(self.port)

    def kill(self) -> None:
        """SIGKILL: the server gets no chance to do anything more."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        _missing("redis-server")
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.kill()


class PrivatePostgres:
    """A PostgreSQL cluster of this test module alone (initdb in a temporary directory, trust
    authentication, fsync off), which the tests stop and start at will."""

    def __init__(self, directory: Path, bindir: Path) -> None:
        self.directory = directory
        self.bindir = bindir
        self.port = free_port()
        self.url = f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"
        # initdb refuses to run as root: run the server as the postgres user then.
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *args: str) -> None:
        subprocess.run([*self.as_user, *args], check=True, capture_output=True, timeout=60)

    def init(self) -> None:
        if self.as_user:
            shutil.chown(self.directory, "postgres")
        self._run(
            str(self.bindir / "initdb"),
            *("-D", str(self.directory / "data"), "-A", "trust", "-U", "postgres", "--no-sync"),
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            str(self.bindir / "pg_ctl"),
            *("-D", str(self.directory / "data"), "-o", options),
            *("-l", str(self.directory / "log"), "-w", "start"),
        )

    def stop(self, mode: str = "fast") -> None:
        if not (self.directory / "data" / "postmaster.pid").exists():
            return  # not running
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.directory / "data"),
            "-m",
            mode,
            "-w",
            "stop",
        )


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[PrivatePostgres]:
    """A running private cluster, migrated to agentmem's head; removed after the module."""
    from sqlalchemy.ext.asyncio import create_async_engine

    from agentmem import migrate

    bindirs = sorted(glob("/usr/lib/postgresql/*/bin/initdb"))
    initdb = shutil.which("initdb") or (bindirs[-1] if bindirs else None)
    if initdb is None:
        _missing("PostgreSQL's initdb")
    # Not under pytest's temporary directory: the postgres user must be able to reach it.
    directory = Path(tempfile.mkdtemp(prefix="agentmem-pg-"))
    server = PrivatePostgres(directory, Path(str(initdb)).parent)
    server.init()
    server.start()

    async def setup() -> None:
        engine = create_async_engine(server.url)
        try:
            await migrate.upgrade(engine)
        finally:
            await engine.dispose()

    try:
        run_in_new_loop(setup)
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(directory, ignore_errors=True)


def stop_postgres_processes(server: PrivatePostgres, sig: int) -> list[int]:
    """Send ``sig`` (SIGSTOP, SIGCONT) to the private server's postmaster and every child of
    it; return their pids."""
    postmaster = int((server.directory / "data" / "postmaster.pid").read_text().split()[0])
    pids = [postmaster]
    for stat in glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        if int(fields[1]) == postmaster:  # the parent pid
            pids.append(int(Path(stat).parent.name))
    for pid in pids:
        os.kill(pid, sig)
    return pids
