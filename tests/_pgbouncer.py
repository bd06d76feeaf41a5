"""A private PgBouncer in front of the test PostgreSQL, on a free loopback port, with a temporary
ini (``auth_type = trust``), in ``transaction`` or ``session`` pooling mode."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from sqlalchemy.engine import make_url


def pgbouncer_installed() -> bool:
    return shutil.which("pgbouncer") is not None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PgBouncer:
    """One pgbouncer process; ``url(database)`` is a PostgreSQL URL through it."""

    def __init__(self, postgres_url: str, pool_mode: str) -> None:
        upstream = make_url(postgres_url)
        self.user = upstream.username or "postgres"
        self.pool_mode = pool_mode
        self.port = _free_port()
        self._tmp = tempfile.TemporaryDirectory(prefix=f"agentmem-pgbouncer-{pool_mode}-")
        self.directory = Path(self._tmp.name)
        (self.directory / "userlist.txt").write_text(f'"{self.user}" ""\n')
        (self.directory / "pgbouncer.ini").write_text(
            "\n".join(
                [
                    "[databases]",
                    f"* = host={upstream.host or '127.0.0.1'} port={upstream.port or 5432}",
                    "[pgbouncer]",
                    "listen_addr = 127.0.0.1",
                    f"listen_port = {self.port}",
                    "unix_socket_dir =",
                    "auth_type = trust",
                    f"auth_file = {self.directory / 'userlist.txt'}",
                    f"pool_mode = {pool_mode}",
                    "max_client_conn = 500",
                    "default_pool_size = 20",
                    f"logfile = {self.directory / 'pgbouncer.log'}",
                    f"pidfile = {self.directory / 'pgbouncer.pid'}",
                    "",
                ]
            )
        )
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, database: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        command = ["pgbouncer", str(self.directory / "pgbouncer.ini")]
        if os.geteuid() == 0:  # pgbouncer refuses to run as root
            shutil.chown(self.directory, "postgres")
            for path in self.directory.iterdir():
                shutil.chown(path, "postgres")
            command[1:1] = ["-u", "postgres"]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None:
                log = self.directory / "pgbouncer.log"
                text = log.read_text() if log.exists() else ""
                raise RuntimeError(f"pgbouncer exited ({self.process.returncode}): {text}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._tmp.cleanup()
