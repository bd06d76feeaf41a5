"""``SQLiteSession``: the embedded default. No server, nothing to configure.

It runs the SQL provider's statements (:mod:`agentmem.sql._statements`) on the stdlib ``sqlite3``
module, holding one connection per database file per process (WAL, a 30 s busy timeout,
``BEGIN IMMEDIATE`` writes): each operation on a file is one call into a worker thread; on a
private in-memory database it runs inline. It works from any event loop, one after another.
A cancelled call on a file raises ``CancelledError`` only once its thread's call has finished,
so when the caller hears of the cancel the call is over: applied whole or not at all.
A file is brought to the current schema by agentmem's Alembic migrations on first use; an
in-memory database is a copy of a database migrated the same way.

A forked child process opens its own connections on first use (SQLite forbids using a
connection across ``fork()``) with new locks, so a call in flight in the parent at the fork
cannot block it; the parent's connections are left alone. An in-memory session used in a
child starts from an empty database there.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable
from os import PathLike
from pathlib import Path
from queue import SimpleQueue
from typing import Any, Self, TypeVar

from agentmem import _forks
from agentmem._batch import new_batch_id
from agentmem._lock import SessionLock
from agentmem.forks import ForkOrigin
from agentmem.manager import (
    DEFAULT_PAGE_SIZE,
    Conversation,
    SessionInfo,
    SessionOptions,
    SessionPage,
    page_of,
    page_request,
)
from agentmem.records import (
    TTL,
    ItemPage,
    Lifecycle,
    validate_metadata_filter,
    validate_user_id,
)
from agentmem.session import EncodedItem, validate_session_id
from agentmem.sql import _lifecycle, _manage, _sqlite_schema, _windows, migrate
from agentmem.sql import _statements as _sql
from agentmem.sql._locks import FileSessionLock, lock_directory
from agentmem.sql.base import MEMORY, Operations, SQLSessionBase, SQLSessionManagerABC
from agentmem.sql.schema import table_prefix_for, validate_table_prefix
from agentmem.windows import WindowMode

__all__ = ["SQLiteSession", "SQLiteSessionManager"]

T = TypeVar("T")

BUSY_TIMEOUT_SECONDS = _sql.BUSY_TIMEOUT_SECONDS


def _connect(target: str) -> sqlite3.Connection:
    read_only = None if target == MEMORY else _sql.sqlite_read_only_options(target)
    conn = sqlite3.connect(
        target if read_only is None else _sql.sqlite_uri(target, read_only),
        timeout=BUSY_TIMEOUT_SECONDS,
        isolation_level=None,
        check_same_thread=False,
        uri=read_only is not None,
    )
    if target != MEMORY and read_only is None:
        _sql.sqlite_settings(conn.cursor())
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


class _Templates:
    """One migrated in-memory database per table prefix, copied into each new in-memory one:
    the migrations run once per process, not once per session."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_prefix: dict[str, sqlite3.Connection] = {}
        _forks.reset_in_child(self)

    def copy_into(self, conn: sqlite3.Connection, table_prefix: str) -> None:
        with self._lock:
            template = self._by_prefix.get(table_prefix)
            if template is None:
                template = _connect(MEMORY)
                _sqlite_schema.sqlite_upgrade(template, table_prefix)
                self._by_prefix[table_prefix] = template
            template.backup(conn)

    def after_fork(self) -> None:
        self._lock = threading.Lock()
        _forks.keep(self._by_prefix)
        self._by_prefix = {}


_templates = _Templates()


class _ThreadCall(asyncio.Future[T]):
    """The outcome of one call in a database's thread. A thread cannot be stopped, so a cancel
    is refused: the awaiting task hears of its cancel once the call is over (applied whole or
    not at all), and never a call that commits after that."""

    def cancel(self, msg: Any = None) -> bool:
        return False


def _settle(call: _ThreadCall[T], result: T | None, error: BaseException | None) -> None:
    if error is None:
        call.set_result(result)  # type: ignore[arg-type]
    else:
        call.set_exception(error)


class _Thread:
    """A thread that runs the calls queued to it, in order, until ``stop()``. A daemon: a
    session left open does not keep the process from exiting (its calls are awaited, so none
    is in flight once the event loop is done)."""

    def __init__(self) -> None:
        self._queue: SimpleQueue[Callable[[], None] | None] = SimpleQueue()
        threading.Thread(target=self._serve, name="agentmem-sqlite", daemon=True).start()

    def _serve(self) -> None:
        while (job := self._queue.get()) is not None:
            job()

    def submit(self, job: Callable[[], None]) -> None:
        self._queue.put(job)

    def stop(self) -> None:
        """End the thread once the calls queued before are done."""
        self._queue.put(None)


class _Database:
    """One sqlite3 connection, opened and migrated on first use. A file's is used by the
    database's own thread (its calls queue there, in order); an in-memory one's inline."""

    def __init__(self, target: str, table_prefix: str) -> None:
        self.target = target
        self.table_prefix = table_prefix
        self.lock = threading.Lock()
        self.refs = 0
        self._conn: sqlite3.Connection | None = None
        self._thread: _Thread | None = None
        self._thread_lock = threading.Lock()
        _forks.reset_in_child(self)

    def in_thread(self, fn: Callable[..., T], *args: Any) -> _ThreadCall[T]:
        """``fn(*args)`` in this database's thread; its outcome, set in the event loop."""
        loop = asyncio.get_running_loop()
        call: _ThreadCall[T] = _ThreadCall(loop=loop)

        def work() -> None:
            try:
                outcome: tuple[Any, BaseException | None] = (fn(*args), None)
            except BaseException as exc:
                outcome = (None, exc)
            # A closed loop has no caller left to tell; the thread serves the next call.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, call, *outcome)

        thread = self._thread
        if thread is None:
            with self._thread_lock:  # event loops in several threads may share the database
                if self._thread is None:
                    self._thread = _Thread()
                thread = self._thread
        thread.submit(work)
        return call

    def stop_thread(self) -> None:
        """Let the thread end once its queued calls are done (a later call starts another)."""
        with self._thread_lock:
            if self._thread is not None:
                self._thread.stop()
                self._thread = None

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        with self.lock:
            try:
                if self._conn is None:
                    self._conn = self._open()
                return fn(self._conn, *args)
            except sqlite3.OperationalError as exc:
                error = _sql.sqlite_read_only_error(exc, self.target)
                if error is None:
                    raise
                raise error from exc

    def _open(self) -> sqlite3.Connection:
        conn = _connect(self.target)
        try:
            if self.target == MEMORY:
                _templates.copy_into(conn, self.table_prefix)
            else:
                _sqlite_schema.bring_to_head(conn, self.table_prefix)
        except BaseException:
            conn.close()
            raise
        return conn

    def close(self) -> None:
        with self.lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def after_fork(self) -> None:
        self.lock = threading.Lock()
        if self._conn is not None:
            _forks.keep(self._conn)
            self._conn = None
        self._thread_lock = threading.Lock()
        if self._thread is not None:  # its thread is the parent's
            _forks.keep(self._thread)
            self._thread = None


class _Files:
    """The databases open in this process: one per (resolved file, table prefix), shared by
    every session on that file and closed with the last of them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[tuple[str, str], _Database] = {}
        _forks.reset_in_child(self)

    def acquire(self, path: str, table_prefix: str) -> _Database:
        if path == MEMORY:
            database = _Database(MEMORY, table_prefix)
            database.refs = 1
            return database
        with self._lock:
            key = (path, table_prefix)
            if key not in self._open:
                self._open[key] = _Database(path, table_prefix)
            self._open[key].refs += 1
            return self._open[key]

    def share(self, database: _Database) -> None:
        """Count one more user of an open database."""
        with self._lock:
            database.refs += 1

    def release(self, database: _Database) -> bool:
        """Drop one reference; true when it was the last (the caller closes the database)."""
        with self._lock:
            database.refs -= 1
            if database.refs > 0:
                return False
            self._open.pop((database.target, database.table_prefix), None)
            return True

    def after_fork(self) -> None:
        self._lock = threading.Lock()


_files = _Files()


async def _run_on(database: _Database, fn: Callable[..., T], *args: Any) -> T:
    """``database.run(fn, *args)``: inline on a private in-memory database, else in the
    database's thread, whose call is over (applied or not) before a cancel of the caller is
    raised."""
    if database.target == MEMORY:
        # A private in-memory database never waits on I/O or on another connection's lock:
        # running inline costs less than the hop to a worker thread. Yielding first keeps
        # the call a point where other tasks run and a cancellation lands (before any work).
        await asyncio.sleep(0)
        return database.run(fn, *args)
    return await database.in_thread(database.run, fn, *args)


async def _release(database: _Database) -> None:
    """Drop one user of ``database``; the last one closes it (a file in its thread)."""
    if not _files.release(database):
        return
    if database.target == MEMORY:
        database.close()
        return
    try:
        await database.in_thread(database.close)
    finally:
        database.stop_thread()


class _ThreadOperations(Operations):
    def __init__(self, database: _Database, session_id: str, lifecycle: Lifecycle) -> None:
        self.database = database
        self.session_id = session_id
        self.lifecycle = lifecycle
        self.sql = _sql.sqlite_statements(database.table_prefix)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await _run_on(self.database, fn, self.sql, self.session_id, *args)

    async def _run_lifecycle(self, fn: Callable[..., T], *args: Any) -> T:
        prefix = self.database.table_prefix
        return await _run_on(self.database, fn, prefix, self.session_id, *args)

    async def get(self, limit: int | None) -> list[str]:
        touch = self.lifecycle.ttl if self.lifecycle.touch_on_read else None
        return await self._run(_sql.sqlite_get, limit, touch)

    async def add(self, items: list[EncodedItem]) -> None:
        await self._run(_sql.sqlite_add, items, new_batch_id(), self.lifecycle)

    async def pop(self) -> str | None:
        return await self._run(_sql.sqlite_pop, self.lifecycle.ttl)

    async def clear(self) -> None:
        await self._run(_sql.sqlite_clear)

    async def _run_window(self, fn: Callable[..., T], *args: Any) -> T:
        sql = _windows.sqlite_window_statements(self.database.table_prefix)
        return await _run_on(self.database, fn, sql, self.session_id, *args)

    async def get_window(self, limit: int, window: WindowMode) -> list[str]:
        return await self._run_window(_windows.sqlite_get_window, limit, window)

    async def fork(self, new_id: str, count: int | None) -> int:
        return await self._run_window(_windows.sqlite_fork, new_id, count)

    async def origin(self) -> ForkOrigin | None:
        return await self._run_window(_windows.sqlite_fork_origin)

    async def info(self) -> SessionInfo | None:
        return await self._run_lifecycle(_lifecycle.sqlite_info)

    async def update_info(self, changes: dict[str, Any]) -> SessionInfo:
        return await self._run_lifecycle(_lifecycle.sqlite_update_info, self.lifecycle, changes)

    async def page(self, limit: int, before: int | None) -> ItemPage:
        return await self._run_lifecycle(_lifecycle.sqlite_page, limit, before)

    async def replace(
        self, items: list[EncodedItem], newest: int | None, expected: list[Any] | None
    ) -> bool:
        return await self._run(_sql.sqlite_replace, items, newest, expected)


def _resolve(db_path: object) -> str:
    """``":memory:"``, or the absolute path of a database file whose directory exists."""
    if not isinstance(db_path, str | PathLike):
        raise TypeError(f"db_path must be a str or a path, got {type(db_path).__name__}")
    target = str(db_path)
    if target == MEMORY:
        return target
    path = Path(target).expanduser().resolve()
    if not path.parent.is_dir():
        raise FileNotFoundError(f"directory {path.parent} does not exist (for {db_path})")
    if not path.exists() and not os.access(path.parent, os.W_OK):
        raise PermissionError(
            f"cannot create the SQLite database {path}: directory {path.parent} is "
            "read-only (permission denied)"
        )
    return str(path)


class SQLiteSession(SQLSessionBase):
    """Conversation history in SQLite: in memory (the default) or in a file.

    Example:
        >>> session = SQLiteSession("conversation_123")                  # in memory
        >>> session = SQLiteSession("user_123", "conversations.db")     # in a file
        >>> await Runner.run(agent, "Hello", session=session)

    An in-memory database is private to its session object. A file holds any number of
    sessions, is shared by every process that opens it, and is created and brought to the
    current schema (agentmem's Alembic migrations) on first use.

    Args:
        session_id: The conversation's id (1-255 characters).
        db_path: ``":memory:"`` (default) or the path of the database file.
        sessions_table: The OpenAI Agents SDK's table-name argument: a table prefix followed
            by ``sessions`` (``"agent_sessions"`` is the prefix ``"agent_"``).
        messages_table: The same prefix followed by ``messages``.
        table_prefix: Prefix for agentmem's table names (``"am_"`` gives ``am_sessions``...).
        session_settings: The OpenAI Agents SDK ``SessionSettings`` (or a dict): its ``limit`` is
            the default of ``get_items()``.
        whole_pairs: Make whole-pair windows the default of ``get_items`` calls with a limit
            (the Runner's ``session_settings.limit`` too); see :mod:`agentmem.windows`.
        whole_turns: Make whole-turn windows that default.
        ttl: Expiry (seconds or ``timedelta``) that every write slides; ``None``: none.
        max_items: The longest history kept; a write beyond it drops the oldest items.
        touch_on_read: Whether reads slide the expiry too.
        user_id: The owner stored with the first write (or filled in if absent).
        title: The title, likewise.
        metadata: The metadata (a JSON object), likewise.

    A file this process cannot write (or in a directory it cannot write) is opened read-only:
    reads work, and writes raise :class:`PermissionError`.

    Raises:
        FileNotFoundError: the directory of ``db_path`` does not exist.
        PermissionError: ``db_path`` does not exist and its directory cannot be written.
    """

    def __init__(
        self,
        session_id: str,
        db_path: str | PathLike[str] = MEMORY,
        sessions_table: str | None = None,
        messages_table: str | None = None,
        *,
        table_prefix: str = "",
        session_settings: Any = None,
        whole_pairs: bool = False,
        whole_turns: bool = False,
        ttl: TTL | None = None,
        max_items: int | None = None,
        touch_on_read: bool = False,
        user_id: str | None = None,
        title: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            session_id, session_settings, whole_pairs=whole_pairs, whole_turns=whole_turns
        )
        table_prefix = table_prefix_for(table_prefix, sessions_table, messages_table)
        self.lifecycle = Lifecycle.checked(
            ttl=ttl,
            max_items=max_items,
            touch_on_read=touch_on_read,
            user_id=user_id,
            title=title,
            metadata=metadata,
        )
        target = _resolve(db_path)
        self.db_path = target
        self._database = _files.acquire(target, table_prefix)
        self._ops = _ThreadOperations(self._database, self.session_id, self.lifecycle)

    @classmethod
    def _on_database(
        cls,
        database: _Database,
        session_id: str,
        session_settings: Any,
        lifecycle: Lifecycle,
        *,
        whole_pairs: bool = False,
        whole_turns: bool = False,
    ) -> Self:
        """A session on an open database (a manager's), counted as one more of its users."""
        self = cls.__new__(cls)
        SQLSessionBase.__init__(
            self, session_id, session_settings, whole_pairs=whole_pairs, whole_turns=whole_turns
        )
        self.lifecycle = lifecycle
        self.db_path = database.target
        _files.share(database)
        self._database = database
        self._ops = _ThreadOperations(database, self.session_id, lifecycle)
        return self

    @property
    def table_prefix(self) -> str:
        """The prefix of this session's table names."""
        return self._database.table_prefix

    def with_id(self, session_id: str) -> Self:
        """A session for ``session_id`` on this session's database (an in-memory one too),
        with its settings."""
        self._check_open()
        session = type(self)._on_database(
            self._database, session_id, self.session_settings, self.lifecycle
        )
        session.window_mode = self.window_mode
        return session

    @property
    def store_identity(self) -> tuple[str, str, str]:
        """``("sqlite", resolved file path or ":memory:", table prefix)``."""
        return "sqlite", self.db_path, self._database.table_prefix

    def _session_lock(self) -> SessionLock:
        """A file: tickets in the session's lock directory in ``<db_path>-locks/``; in memory (a
        database private to this object): a process-local lock."""
        prefix = self._database.table_prefix
        if self.db_path == MEMORY:
            return SessionLock(("sqlite-memory", id(self._database), self.session_id))
        return FileSessionLock(
            ("sqlite", self.db_path, prefix, self.session_id),
            lock_directory(self.db_path, prefix, self.session_id),
        )

    @property
    def over_when_raised(self) -> bool:
        """True: a call raises (even a cancel) only once its thread's call is over."""
        return True

    async def _close(self) -> None:
        await _release(self._database)


# --- the manager -------------------------------------------------------------------------------


class SQLiteSessionManager(SQLSessionManagerABC[SQLiteSession]):
    """Hands out ``SQLiteSession`` objects on one database, and manages it as a whole.

    Example:
        >>> async with SQLiteSessionManager("conversations.db") as manager:
        ...     session = manager.get_session("user_123")
        ...     print(await manager.list_sessions())

    Its sessions share the manager's connection to the database. On ``":memory:"`` the manager
    holds one private in-memory database that all of its sessions share (a bare in-memory
    ``SQLiteSession`` has its own). ``close()`` closes the sessions it handed out, and the
    database once nothing else in the process uses it.

    Args:
        db_path: ``":memory:"`` (default) or the path of the database file (created and brought
            to the current schema on first use).
        table_prefix: Prefix for agentmem's table names.
        default_ttl: The expiry of the sessions it hands out (seconds or ``timedelta``).
        default_max_items: The longest history of the sessions it hands out.
        touch_on_read: Whether reads of its sessions slide their expiry too.

    Raises:
        FileNotFoundError: the directory of ``db_path`` does not exist.
    """

    def __init__(
        self,
        db_path: str | PathLike[str] = MEMORY,
        *,
        table_prefix: str = "",
        default_ttl: TTL | None = None,
        default_max_items: int | None = None,
        touch_on_read: bool = False,
    ) -> None:
        self.table_prefix = validate_table_prefix(table_prefix)
        self._set_lifecycle_defaults(default_ttl, default_max_items, touch_on_read)
        self.db_path = _resolve(db_path)
        self._database = _files.acquire(self.db_path, table_prefix)
        self._closed = False

    @property
    def process_private(self) -> bool:
        """Whether the database is in memory (private to this process)."""
        return self.db_path == MEMORY

    def _make_session(self, session_id: str, options: SessionOptions) -> SQLiteSession:
        """A session on the manager's database."""
        return SQLiteSession._on_database(
            self._database,
            session_id,
            options.session_settings,
            options.lifecycle,
            whole_pairs=options.whole_pairs,
            whole_turns=options.whole_turns,
        )

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        self._check_open()
        return await _run_on(self._database, fn, self.table_prefix, *args)

    async def schema_revision(self) -> str | None:
        """The agentmem schema revision of the file (``None``: no file, or no agentmem schema in
        it), read without creating or migrating it (in memory: the current one)."""
        self._check_open()
        if self.db_path == MEMORY:
            return migrate.head()
        return await asyncio.get_running_loop().run_in_executor(
            None, _sqlite_schema.file_revision, self.db_path, self.table_prefix
        )

    async def upgrade_schema(self) -> None:
        """Create the file if needed and bring it to agentmem's current schema (what the first
        use of any of its sessions does)."""
        await self._run(lambda _conn, _prefix: None)

    async def list_sessions(self) -> list[str]:
        """The ids of every stored session, sorted."""
        return await self._run(_manage.sqlite_ids)

    async def session_info(self, session_id: str) -> SessionInfo | None:
        """Item count and timestamps of one session; ``None`` if it is not stored."""
        return await self._run(_manage.sqlite_info, validate_session_id(session_id))

    async def find_sessions(
        self,
        *,
        user_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        cursor: str | None = None,
    ) -> SessionPage:
        """One page of the live sessions, most recently updated first (a keyset range on
        ``updated_at``; see :meth:`SessionManagerABC.find_sessions`)."""
        owner = validate_user_id(user_id)
        wanted = validate_metadata_filter(metadata)
        size, after = page_request(limit, cursor)
        infos = await self._run(_lifecycle.sqlite_find, owner, wanted, size + 1, after)
        return page_of(infos, size)

    async def count_sessions(self, user_id: str | None = None) -> int:
        """How many live sessions the database holds (only ``user_id``'s, if given)."""
        return await self._run(_lifecycle.sqlite_count, validate_user_id(user_id))

    async def _purge_batch(self, batch_size: int) -> int:
        return await self._run(_lifecycle.sqlite_purge_batch, batch_size)

    async def existing_sessions(self, session_ids: Iterable[str]) -> set[str]:
        """Those of ``session_ids`` that are stored."""
        ids = [validate_session_id(i) for i in session_ids]
        return await self._run(_manage.sqlite_existing, ids) if ids else set()

    async def delete_session(self, session_id: str) -> bool:
        """Delete one session and its history; whether it existed."""
        return await self._run(_manage.sqlite_delete, validate_session_id(session_id))

    async def read_conversation(self, session_id: str) -> Conversation | None:
        """One whole conversation, read in one transaction; ``None`` if it is not stored."""
        return await self._run(_manage.sqlite_read, validate_session_id(session_id))

    async def write_conversation(self, conversation: Conversation) -> None:
        """Store ``conversation`` whole with its timestamps and lifecycle (see
        :class:`Conversation`), replacing any session of the same id, in one transaction."""
        checked, encoded, created, updated = conversation.prepared()
        await self._run(
            _manage.sqlite_write,
            checked,
            encoded,
            created,
            updated,
            self.default_ttl,
        )

    async def _release(self) -> None:
        await _release(self._database)
