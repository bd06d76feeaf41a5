"""Private Redis and PostgreSQL servers for the tests that stop, kill, pause, restart or flush one.

Each server runs on a free loopback port, in a temporary directory of its own, and is shut down
by the context manager that started it. The shared servers of the other tests are never touched.
A missing server program fails the run under ``CI`` and skips loudly elsewhere.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from glob import glob
from pathlib import Path

import pytest

from tests.conftest import IN_CI, run_in_new_loop


def free_port() -> int:
    """A loopback TCP port nobody listens on (now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, seconds: float = 30) -> None:
    """Return once something accepts connections on the loopback ``port``."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def require_program(what: str, path: str | None) -> str:
    """``path`` if the program was found; else fail under CI and skip loudly elsewhere."""
    if path is None:
        if IN_CI:
            pytest.fail(f"{what} is not installed; these tests must run in CI", pytrace=False)
        pytest.skip(f"SKIPPED LOUDLY: {what} is not installed")
    return path


class RedisServer:
    """A redis-server of one test alone, in ``directory`` on a free port.

    ``persistent`` servers write every command to their append-only file before replying, so a
    restart keeps what was acknowledged; others keep nothing on disk. ``args`` are more
    redis-server options (``--requirepass``, ``--unixsocket``, TLS...).
    """

    def __init__(self, directory: Path, *args: str, persistent: bool = True) -> None:
        self.port = free_port()
        self.directory = directory
        self.url = f"redis://127.0.0.1:{self.port}/0"
        appendonly = ("yes", "--appendfsync", "always") if persistent else ("no",)
        self.args = [
            *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
            *("--dir", str(directory), "--save", "", "--appendonly", *appendonly),
            *args,
        ]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start (or restart) the server and wait until it accepts connections."""
        self.process = subprocess.Popen(self.args, stdout=subprocess.DEVNULL)
        wait_for_port(self.port)

    def stop(self) -> None:
        """SIGTERM: a clean shutdown."""
        if self.running:
            assert self.process is not None
            self.process.terminate()
            self.process.wait(10)

    def kill(self) -> None:
        """SIGKILL: the server gets no chance to do anything more."""
        if self.running:
            assert self.process is not None
            self.process.kill()
            self.process.wait(10)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@contextmanager
def redis_servers(directory: Path) -> Iterator[Callable[..., RedisServer]]:
    """``start(*args, persistent=True)``: a new running :class:`RedisServer` (in a directory
    of its own under ``directory``); every server started is stopped on the way out."""
    require_program("redis-server", shutil.which("redis-server"))
    servers: list[RedisServer] = []

    def start(*args: str, persistent: bool = True) -> RedisServer:
        server_dir = directory / f"redis-{len(servers)}"
        server_dir.mkdir()
        server = RedisServer(server_dir, *args, persistent=persistent)
        servers.append(server)
        server.start()
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


class PostgresServer:
    """A PostgreSQL cluster of its own (initdb in ``directory``, trust authentication, fsync
    off) on a free port, which the tests stop and start at will."""

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
            *("-D", str(self.directory / "data"), "-m", mode, "-w", "stop"),
        )

    def signal_processes(self, sig: int) -> list[int]:
        """Send ``sig`` (SIGSTOP, SIGCONT) to the postmaster and every child of it; return
        their pids."""
        postmaster = int((self.directory / "data" / "postmaster.pid").read_text().split()[0])
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


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A running private cluster, migrated to agentmem's head; removed on the way out."""
    from sqlalchemy.ext.asyncio import create_async_engine

    from agentmem import migrate

    bindirs = sorted(glob("/usr/lib/postgresql/*/bin/initdb"))
    initdb = require_program(
        "PostgreSQL's initdb", shutil.which("initdb") or (bindirs[-1] if bindirs else None)
    )
    # Not under pytest's temporary directory: the postgres user must be able to reach it.
    directory = Path(tempfile.mkdtemp(prefix="agentmem-pg-"))
    server = PostgresServer(directory, Path(initdb).parent)

    async def setup() -> None:
        engine = create_async_engine(server.url)
        try:
            await migrate.upgrade(engine)
        finally:
            await engine.dispose()

    try:
        server.init()
        server.start()
        run_in_new_loop(setup)
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(directory, ignore_errors=True)
