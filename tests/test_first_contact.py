"""A new user's first minutes: in-memory engines, a plain install, missing drivers, public
submodules, read-only SQLite files and a quiet first migration.

A missing optional package is simulated in a subprocess by making it unimportable
(``sys.modules[name] = None``): the package is absent, no database is faked. Read-only files are
read by an unprivileged process: as root (where file modes are not enforced) the subprocess
drops to the ``nobody`` user after its imports.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentmem.sql import _statements as _sql
from tests.conftest import unique_id

OPTIONAL = ("redis", "asyncpg", "agents", "psycopg")
NOBODY = 65534


def run_python(
    code: str, *, missing: tuple[str, ...] = OPTIONAL, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a new interpreter in which the ``missing`` packages cannot be imported."""
    prelude = "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in missing)
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_cli(*argv: str, missing: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    return run_python(
        f"from agentmem.cli import run\nsys.exit(run({list(argv)!r}))\n", missing=missing
    )


# --- 0: in-memory SQLite engines ----------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("target", "mode"), [(":memory:", "memory"), ("", "delete")])
def test_wal_switch_leaves_memory_and_temporary_databases_in_their_mode(
    target: str, mode: str
) -> None:
    conn = sqlite3.connect(target)
    try:
        assert _sql.sqlite_use_wal(conn.cursor(), timeout=30) == mode
    finally:
        conn.close()


def test_wal_switch_gives_up_at_its_deadline(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (a)")
    holder.execute("BEGIN EXCLUSIVE")
    other = sqlite3.connect(path, timeout=0)
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            _sql.sqlite_use_wal(other.cursor(), timeout=0)
    finally:
        other.close()
        holder.close()


@pytest.mark.parametrize(
    "url",
    [
        "sqlite+aiosqlite:///:memory:",
        "sqlite+aiosqlite://",
        "sqlite:///:memory:",
        "sqlite+aiosqlite:///file:first-contact?mode=memory&cache=shared&uri=true",
    ],
)
def test_from_url_on_an_in_memory_database_answers(url: str) -> None:
    # In a subprocess: the old code spun forever in a worker thread that no timeout could stop.
    result = run_python(
        f"""
        import asyncio
        from agentmem import SQLAlchemySession

        async def main():
            session = SQLAlchemySession.from_url("x", url={url!r}, create_tables=True)
            await session.add_items([{{"role": "user", "content": "hi"}}])
            print(await session.get_items())
            await session.close()

        asyncio.run(main())
        """,
        missing=(),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[{'role': 'user', 'content': 'hi'}]"


# --- 2, 3, 7: a plain install, missing drivers, public submodules ------------------------------


def test_a_plain_install_supports_help_and_star_import() -> None:
    result = run_python(
        """
        import io, contextlib
        import agentmem

        text = io.StringIO()
        with contextlib.redirect_stdout(text):
            help(agentmem)
        assert "RedisSession" in text.getvalue() and "CachedSession" in text.getvalue()
        names = {}
        exec("from agentmem import *", names)
        assert set(agentmem.__all__) <= set(names), set(agentmem.__all__) - set(names)
        import agentmem.redis.session, agentmem.cache.session
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_a_plain_install_raises_missing_dependency_when_redis_is_used(tmp_path: Path) -> None:
    result = run_python(
        f"""
        import agentmem
        from agentmem import MissingDependencyError

        builds = {{
            "RedisSession": lambda: agentmem.RedisSession("s"),
            "RedisSessionManager": lambda: agentmem.RedisSessionManager(),
            "CachedSession": lambda: agentmem.CachedSession(
                agentmem.SQLiteSession("s", {str(tmp_path / "c.db")!r})
            ),
        }}
        for name, build in builds.items():
            try:
                build()
            except MissingDependencyError as exc:
                print(name, exc)
        """
    )
    assert result.returncode == 0, result.stderr
    line = 'redis is not installed: pip install "agentmem-sessions[redis]"'
    assert result.stdout.splitlines() == [
        f"RedisSession {line}",
        f"RedisSessionManager {line}",
        f"CachedSession {line}",
    ]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "postgresql://app@127.0.0.1/app",
            'asyncpg is not installed: pip install "agentmem-sessions[postgres]"',
        ),
        (
            "postgres://app@127.0.0.1/app",
            'asyncpg is not installed: pip install "agentmem-sessions[postgres]"',
        ),
        (
            "postgresql+asyncpg://app@127.0.0.1/app",
            'asyncpg is not installed: pip install "agentmem-sessions[postgres]"',
        ),
        (
            "postgresql+psycopg://app@127.0.0.1/app",
            'psycopg is not installed: pip install "agentmem-sessions[psycopg]"',
        ),
    ],
)
def test_from_url_without_its_driver_names_the_install_line(url: str, message: str) -> None:
    result = run_python(
        f"""
        from agentmem import MissingDependencyError, SQLAlchemySession, SQLAlchemySessionManager

        for build in (
            lambda: SQLAlchemySession.from_url("u", url={url!r}),
            lambda: SQLAlchemySessionManager.from_url({url!r}),
        ):
            try:
                build()
            except MissingDependencyError as exc:
                print(exc)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [message, message]


def test_an_installed_but_unsupported_driver_is_a_value_error() -> None:
    from agentmem import SQLAlchemySession

    with pytest.raises(ValueError, match="supports postgresql\\+asyncpg"):
        SQLAlchemySession.from_url("u", url="sqlite+pysqlite:///x.db")


@pytest.mark.parametrize(
    ("url", "missing", "message"),
    [
        (
            "redis://127.0.0.1:6379/0",
            ("redis",),
            'redis is not installed: pip install "agentmem-sessions[redis]"',
        ),
        (
            "postgresql://postgres@127.0.0.1:5432/postgres",
            ("asyncpg",),
            'asyncpg is not installed: pip install "agentmem-sessions[postgres]"',
        ),
    ],
)
def test_cli_without_the_driver_prints_one_line(
    url: str, missing: tuple[str, ...], message: str
) -> None:
    result = run_cli("sessions", "list", "--url", url, missing=missing)
    assert result.returncode == 1
    assert result.stderr == f"agentmem: error: {message}\n"
    assert result.stdout == ""


def test_public_submodules_are_attributes() -> None:
    result = run_python(
        """
        import agentmem
        assert callable(agentmem.migrate.upgrade)
        assert agentmem.models.tables_for_prefix
        assert callable(agentmem.cli.main)
        assert [agentmem.sql.__name__, agentmem.redis.__name__, agentmem.cache.__name__] == [
            "agentmem.sql", "agentmem.redis", "agentmem.cache"
        ]
        assert agentmem.migrate.SchemaError is agentmem.SchemaError
        assert {"migrate", "models", "cli", "session", "sql", "redis", "cache"} <= set(
            dir(agentmem)
        )
        print("ok")
        """,
        missing=(),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# --- 12: read-only SQLite -----------------------------------------------------------------------


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory the unprivileged user can reach (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="agentmem-ro-"))
    path.chmod(0o755)
    yield path
    for directory in [path, *path.rglob("*")]:
        if directory.is_dir():
            directory.chmod(0o755)
    shutil.rmtree(path)


def run_unprivileged(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` as a user that file permissions apply to: ``nobody`` when we are root (the
    imports happen first: the interpreter's files may not be readable by ``nobody``)."""
    drop = "os.setgid(NOBODY)\nos.setuid(NOBODY)\n" if os.geteuid() == 0 else ""
    prelude = f"""
import asyncio, contextlib, io, os, sys, tempfile
import aiosqlite, sqlalchemy.dialects.sqlite.aiosqlite
import agentmem.cli, agentmem.sql.sqlite, agentmem.sql.sqlalchemy
from agentmem import SQLiteSession
from agentmem.cli import run
NOBODY = {NOBODY}

def cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run(list(argv))
    return code, out.getvalue(), err.getvalue()

async def warm_up(path):
    async with SQLiteSession("w", path) as session:
        await session.add_items([{{"n": 1}}])
        await session.get_items()

with tempfile.TemporaryDirectory() as warm:  # load what the code below imports on first use
    asyncio.run(warm_up(f"{{warm}}/w.db"))
    cli("sessions", "list", "--url", f"sqlite:///{{warm}}/w.db")
    cli("sessions", "export", "--url", f"sqlite:///{{warm}}/w.db", "-o", f"{{warm}}/w.jsonl")
{drop}"""
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _make_database(path: Path, session_id: str) -> None:
    import asyncio

    from agentmem import SQLiteSession

    async def write() -> None:
        async with SQLiteSession(session_id, path) as session:
            await session.add_items([{"role": "user", "content": "kept"}])

    asyncio.run(write())


@pytest.mark.parametrize("read_only", ["file", "directory"])
def test_a_read_only_database_can_be_read_not_written(shared_dir: Path, read_only: str) -> None:
    directory = shared_dir / "data"
    directory.mkdir()
    path = directory / "conversations.db"
    session_id = unique_id()
    _make_database(path, session_id)
    path.chmod(0o444)
    directory.chmod(0o555 if read_only == "directory" else 0o777)
    url = f"sqlite:///{path}"
    exported = shared_dir / "out" / "export.jsonl"
    exported.parent.mkdir()
    exported.parent.chmod(0o777)
    result = run_unprivileged(
        f"""
        async def main():
            async with SQLiteSession({session_id!r}, {str(path)!r}) as session:
                print("items", await session.get_items())
                try:
                    await session.add_items([{{"n": 1}}])
                except PermissionError as exc:
                    print("write", exc)
        asyncio.run(main())
        code, out, err = cli("sessions", "list", "--url", {url!r})
        print("list", code, {session_id!r} in out, err)
        code, out, err = cli("sessions", "show", {session_id!r}, "--url", {url!r})
        print("show", code, "kept" in out, err)
        code, out, err = cli("sessions", "export", "--url", {url!r}, "-o", {str(exported)!r})
        print("export", code, err)
        code, out, err = cli("sessions", "delete", {session_id!r}, "--url", {url!r})
        print("delete", code, err.strip())
        """
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "items [{'role': 'user', 'content': 'kept'}]"
    assert lines[1].startswith(f"write the SQLite database {path} is read-only")
    assert lines[2:5] == ["list 0 True ", "show 0 True ", "export 0 "]
    assert session_id in exported.read_text() and "kept" in exported.read_text()
    assert (
        lines[5] == f"delete 1 agentmem: error: cannot write {url}: read-only (permission denied)"
    )


def test_a_new_database_in_a_read_only_directory_is_a_permission_error(shared_dir: Path) -> None:
    directory = shared_dir / "locked"
    directory.mkdir()
    directory.chmod(0o555)
    path = directory / "new.db"
    url = f"sqlite:///{path}"
    result = run_unprivileged(
        f"""
        try:
            SQLiteSession("s", {str(path)!r})
        except PermissionError as exc:
            print(exc)
        code, out, err = cli("sessions", "import", "--url", {url!r}, "/dev/null")
        print(code, err.strip())
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"cannot create the SQLite database {path}: directory {directory} is read-only "
        "(permission denied)",
        f"1 agentmem: error: cannot write {url}: read-only (permission denied)",
    ]
    assert not path.exists()


# --- 13: a quiet first migration ----------------------------------------------------------------


@pytest.mark.parametrize("backend", ["SQLiteSession", "SQLAlchemySession"])
def test_first_use_of_a_file_logs_nothing_at_info(tmp_path: Path, backend: str) -> None:
    path = tmp_path / "new.db"
    build = (
        f"SQLiteSession('s', {str(path)!r})"
        if backend == "SQLiteSession"
        else f"SQLAlchemySession.from_url('s', url='sqlite:///{path}', create_tables=True)"
    )
    result = run_python(
        f"""
        import asyncio, logging
        logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
        from agentmem import SQLAlchemySession, SQLiteSession

        async def main():
            async with {build} as session:
                await session.add_items([{{"n": 1}}])
        asyncio.run(main())
        logging.getLogger("agentmem").setLevel(logging.DEBUG)
        asyncio.run(main())  # an existing file: agentmem's own logger, on DEBUG, shows the check
        """,
        missing=(),
    )
    assert result.returncode == 0, result.stderr
    assert "INFO" not in result.stderr
    assert "alembic" not in result.stderr.replace("agentmem.migrate DEBUG alembic", "")
