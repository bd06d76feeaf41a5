"""Reading the OpenAI Agents SDK's own session storage, for ``agentmem sessions import --sdk``.

The SDK's ``SQLiteSession`` and ``SQLAlchemySession`` keep a sessions table (``agent_sessions``:
``session_id``, ``created_at``, ``updated_at``) and a messages table (``agent_messages``: ``id``,
``session_id``, ``message_data`` as JSON text); its ``RedisSession`` keeps, under a key prefix
(``agents:session``), a hash ``PREFIX:ID`` (``session_id``, ``created_at``, ``updated_at`` in Unix
seconds) and a list ``PREFIX:ID:messages`` of JSON texts. Each conversation is read whole, at one
point in time, and turned into an agentmem :class:`Conversation`; what cannot be imported (an item
that is not a JSON object, an id agentmem refuses) is reported, never guessed at.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
from sqlalchemy import column, select, table, union
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from agentmem._deps import require_driver
from agentmem._redact import mask_credentials
from agentmem.cli._stores import CLIError
from agentmem.manager import Conversation
from agentmem.session import validate_session_id
from agentmem.sql import migrate

__all__ = [
    "DEFAULT_SDK_KEY_PREFIX",
    "DEFAULT_SDK_MESSAGES_TABLE",
    "DEFAULT_SDK_SESSIONS_TABLE",
    "SDKRead",
    "SDKSource",
    "open_sdk_source",
]

DEFAULT_SDK_SESSIONS_TABLE = "agent_sessions"
DEFAULT_SDK_MESSAGES_TABLE = "agent_messages"
DEFAULT_SDK_KEY_PREFIX = "agents:session"
_SCAN_COUNT = 1000


@dataclass
class SDKRead:
    """One SDK conversation as agentmem will store it, and what of it was left out."""

    conversation: Conversation | None
    skipped: list[str] = field(default_factory=list)


class SDKSource(Protocol):
    """The SDK's storage at one URL."""

    display_url: str

    async def session_ids(self) -> list[str]:
        """Every stored session id, sorted (as stored: not yet checked)."""
        ...

    async def read(self, session_id: str) -> SDKRead:
        """One whole conversation (``conversation`` is ``None`` when it cannot be imported)."""
        ...

    async def close(self) -> None: ...


def _convert(
    session_id: str,
    rows: list[tuple[Any, Any]],
    created: datetime | None,
    updated: datetime | None,
) -> SDKRead:
    """``(row label, JSON text)`` rows to a conversation, skipping what is not a JSON object."""
    try:
        validate_session_id(session_id)
    except (TypeError, ValueError) as exc:
        return SDKRead(None, [f"session {session_id!r}: not importable ({exc})"])
    items: list[Any] = []
    skipped: list[str] = []
    for label, text in rows:
        try:
            item = orjson.loads(text)
        except orjson.JSONDecodeError:
            skipped.append(f"session {session_id!r} {label}: not valid JSON")
            continue
        if not isinstance(item, dict):
            skipped.append(f"session {session_id!r} {label}: a JSON {type(item).__name__}")
            continue
        items.append(item)
    conversation = Conversation(session_id, items, created, updated)
    try:
        conversation.validated()
    except (TypeError, ValueError) as exc:
        return SDKRead(None, [*skipped, f"session {session_id!r}: not importable ({exc})"])
    return SDKRead(conversation, skipped)


def _utc(value: Any) -> datetime | None:
    """A stored SDK time (a ``datetime`` or SQLite's text, in UTC when naive)."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class _SQLSource:
    """The SDK's tables in a SQLite file or a SQLAlchemy database."""

    def __init__(self, url: str, sessions_table: str, messages_table: str) -> None:
        self.display_url = mask_credentials(url)
        self._engine: AsyncEngine = create_async_engine(migrate.async_url(url))
        self._sessions = table(
            sessions_table, column("session_id"), column("created_at"), column("updated_at")
        )
        self._messages = table(
            messages_table, column("id"), column("session_id"), column("message_data")
        )

    async def session_ids(self) -> list[str]:
        s, m = self._sessions, self._messages
        query = union(select(s.c.session_id), select(m.c.session_id).distinct())
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return sorted(str(row[0]) for row in rows)

    async def read(self, session_id: str) -> SDKRead:
        s, m = self._sessions, self._messages
        async with self._engine.begin() as conn:  # one transaction: one point in time
            times = (
                await conn.execute(
                    select(s.c.created_at, s.c.updated_at).where(s.c.session_id == session_id)
                )
            ).first()
            rows = (
                await conn.execute(
                    select(m.c.id, m.c.message_data)
                    .where(m.c.session_id == session_id)
                    .order_by(m.c.id)
                )
            ).all()
        created = updated = None
        if times is not None:
            created, updated = _utc(times[0]), _utc(times[1])
        return _convert(session_id, [(f"row {row[0]}", row[1]) for row in rows], created, updated)

    async def close(self) -> None:
        await self._engine.dispose()


class _RedisSource:
    """The SDK's keys under one prefix in Redis."""

    def __init__(self, url: str, key_prefix: str) -> None:
        from redis.asyncio import Redis

        self.display_url = mask_credentials(url)
        self._client = Redis.from_url(url)
        self._prefix = key_prefix

    async def session_ids(self) -> list[str]:
        pattern = "".join("\\" + c if c in "\\*?[]" else c for c in self._prefix) + ":*"
        ids: set[str] = set()
        async for key in self._client.scan_iter(match=pattern, count=_SCAN_COUNT, _type="hash"):
            stored = await self._client.hget(key, "session_id")
            if stored is None:
                continue
            session_id = stored.decode() if isinstance(stored, bytes) else str(stored)
            name = key.decode() if isinstance(key, bytes) else str(key)
            if name == f"{self._prefix}:{session_id}":  # the SDK's session hash, not a stray key
                ids.add(session_id)
        return sorted(ids)

    async def read(self, session_id: str) -> SDKRead:
        key = f"{self._prefix}:{session_id}"
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.hmget(key, ["created_at", "updated_at"])
            pipe.lrange(f"{key}:messages", 0, -1)
            (created, updated), texts = await pipe.execute()
        rows = [(f"list index {index}", text) for index, text in enumerate(texts)]
        return _convert(session_id, rows, _from_unix(created), _from_unix(updated))

    async def close(self) -> None:
        await self._client.aclose()


def _from_unix(value: bytes | str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromtimestamp(float(value), UTC)
    except (ValueError, OverflowError):
        return None


def open_sdk_source(
    url: str,
    *,
    sessions_table: str = DEFAULT_SDK_SESSIONS_TABLE,
    messages_table: str = DEFAULT_SDK_MESSAGES_TABLE,
    key_prefix: str = DEFAULT_SDK_KEY_PREFIX,
) -> SDKSource:
    """The SDK's storage at ``url``: ``sqlite:///file.db`` (its ``SQLiteSession`` file or a
    ``SQLAlchemySession`` database on SQLite), ``postgresql://...`` (its ``SQLAlchemySession``),
    ``redis://...`` (its ``RedisSession``); nothing is connected yet.

    Raises:
        CLIError: the URL names no storage the SDK's sessions use.
        MissingDependencyError: the URL's driver is not installed.
    """
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    backend = scheme.partition("+")[0]
    require_driver(url)
    if backend in ("redis", "rediss", "unix"):
        return _RedisSource(url, key_prefix)
    if backend in ("sqlite", "postgresql", "postgres", "mysql", "mariadb"):
        return _SQLSource(url, sessions_table, messages_table)
    raise CLIError(
        f"--sdk {mask_credentials(url)!r}: expected sqlite:///FILE.db, postgresql://... or "
        "redis://..."
    )
