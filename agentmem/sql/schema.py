"""The SQL schema: a ``sessions`` row per conversation and a ``messages`` row per item.

Tables are built once per table-name prefix and cached, so SQLAlchemy's compiled-statement cache
keeps working across session objects. The default tables (no prefix) are mapped declaratively by
:class:`SessionRecord` and :class:`MessageRecord`; Alembic's revisions in ``migrations/`` create
exactly these tables (a test compares them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from functools import cache

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped

__all__ = [
    "NAMING_CONVENTION",
    "Base",
    "MessageRecord",
    "SessionRecord",
    "Tables",
    "metadata",
    "table_prefix_for",
    "tables_for_prefix",
    "validate_table_prefix",
]

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

_PREFIX_RE = re.compile(r"[a-z_][a-z0-9_]{0,29}")


def validate_table_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is usable in table names (lower-case letters, digits, ``_``)."""
    if not isinstance(prefix, str):
        raise TypeError(f"table_prefix must be a str, got {type(prefix).__name__}")
    if prefix and not _PREFIX_RE.fullmatch(prefix):
        raise ValueError(
            f"table_prefix {prefix!r} must be 1-30 lower-case letters, digits or '_', "
            "not starting with a digit"
        )
    return prefix


def table_prefix_for(
    table_prefix: str, sessions_table: str | None, messages_table: str | None
) -> str:
    """The table prefix that ``sessions_table``/``messages_table`` (the OpenAI Agents SDK's
    table-name arguments) stand for: ``"agent_sessions"``/``"agent_messages"`` is ``"agent_"``.

    Raises:
        ValueError: a name that is not a prefix followed by ``sessions``/``messages``, or names
            (and ``table_prefix``) that disagree.
    """
    validate_table_prefix(table_prefix)
    if sessions_table is None and messages_table is None:
        return table_prefix
    prefixes = set()
    for name, suffix in ((sessions_table, "sessions"), (messages_table, "messages")):
        if name is None:
            continue
        if not isinstance(name, str) or not name.endswith(suffix):
            raise ValueError(
                f"table name {name!r} must end with {suffix!r}: agentmem's tables are a prefix "
                "followed by 'sessions' and 'messages' (as 'agent_sessions', 'agent_messages')"
            )
        prefixes.add(name[: -len(suffix)])
    if table_prefix:
        prefixes.add(table_prefix)
    if len(prefixes) != 1:
        raise ValueError(
            f"sessions_table={sessions_table!r}, messages_table={messages_table!r} and "
            f"table_prefix={table_prefix!r} name different table prefixes"
        )
    return validate_table_prefix(prefixes.pop())


@dataclass(frozen=True)
class Tables:
    """The tables of one table-name prefix."""

    prefix: str
    metadata: MetaData
    sessions: Table
    messages: Table

    @property
    def version_table(self) -> str:
        """The Alembic version table that tracks this prefix's schema."""
        return f"{self.prefix}agentmem_alembic_version"


def _define_tables(prefix: str) -> Tables:
    md = MetaData(naming_convention=NAMING_CONVENTION)
    sessions = Table(
        f"{prefix}sessions",
        md,
        Column("session_id", String(255), primary_key=True),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("expires_at", DateTime(timezone=True), nullable=True),
        # JSONB on PostgreSQL (containment filters, GIN index); JSON text on SQLite.
        Column("metadata_json", Text().with_variant(JSONB(), "postgresql"), nullable=True),
        Column("user_id", String(255), nullable=True),
        Column("title", Text, nullable=True),
        Column("item_count", Integer, nullable=False, server_default=text("0")),
        # A forked session's parent and how many of the parent's items it copied.
        Column("forked_from", String(255), nullable=True),
        Column("fork_point", BigInteger, nullable=True),
    )
    # Partial: a write to a session without an owner (or without expiry, or metadata) leaves
    # the index of that field alone.
    owned = sessions.c.user_id.is_not(None)
    expiring = sessions.c.expires_at.is_not(None)
    described = sessions.c.metadata_json.is_not(None)
    Index(
        f"ix_{prefix}sessions_user_id_updated_at",
        sessions.c.user_id,
        sessions.c.updated_at.desc(),
        sessions.c.session_id,
        postgresql_where=owned,
        sqlite_where=owned,
    )
    Index(f"ix_{prefix}sessions_updated_at", sessions.c.updated_at.desc(), sessions.c.session_id)
    Index(
        f"ix_{prefix}sessions_expires_at",
        sessions.c.expires_at,
        postgresql_where=expiring,
        sqlite_where=expiring,
    )
    Index(
        f"ix_{prefix}sessions_metadata_json",
        sessions.c.metadata_json,
        postgresql_using="gin",
        postgresql_ops={"metadata_json": "jsonb_path_ops"},
        postgresql_where=described,
        sqlite_where=described,
    )
    messages = Table(
        f"{prefix}messages",
        md,
        Column(
            "id",
            BigInteger().with_variant(Integer, "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        Column(
            "session_id",
            String(255),
            ForeignKey(sessions.c.session_id, ondelete="CASCADE"),
            nullable=False,
        ),
        Column("message_data", Text, nullable=False),
        Column("role", String(64), nullable=True),
        Column("item_type", String(64), nullable=True),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Index(f"ix_{prefix}messages_session_id_id", "session_id", "id"),
        # The id of the add_items call that stored a batch, on its first item only: a retried
        # call whose first attempt committed is recognised and stored once.
        Column("batch_id", String(32), nullable=True),
        Index(
            f"ix_{prefix}messages_session_id_batch_id",
            "session_id",
            "batch_id",
            unique=True,
            postgresql_where=text("batch_id IS NOT NULL"),
            sqlite_where=text("batch_id IS NOT NULL"),
        ),
    )
    return Tables(prefix, md, sessions, messages)


@cache
def tables_for_prefix(prefix: str = "") -> Tables:
    """The (cached) tables for a table-name prefix; ``""`` gives ``sessions`` and ``messages``."""
    if prefix == "":
        return DEFAULT_TABLES
    return _define_tables(validate_table_prefix(prefix))


DEFAULT_TABLES = _define_tables("")
metadata = DEFAULT_TABLES.metadata
"""The MetaData of the default tables: point an application's Alembic ``target_metadata`` here."""


class Base(DeclarativeBase):
    """Declarative base of agentmem's models."""

    metadata = DEFAULT_TABLES.metadata


class SessionRecord(Base):
    """One conversation: the ``sessions`` table (its items counted in ``item_count``; expired
    once ``expires_at`` has passed; ``metadata_json`` NULL reads as ``{}``)."""

    __table__ = DEFAULT_TABLES.sessions

    session_id: Mapped[str]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    expires_at: Mapped[datetime | None]
    metadata_json: Mapped[str | None]
    user_id: Mapped[str | None]
    title: Mapped[str | None]
    item_count: Mapped[int]
    forked_from: Mapped[str | None]
    fork_point: Mapped[int | None]


class MessageRecord(Base):
    """One stored item: the ``messages`` table, ordered by ``id``."""

    __table__ = DEFAULT_TABLES.messages

    id: Mapped[int]
    session_id: Mapped[str]
    message_data: Mapped[str]
    role: Mapped[str | None]
    item_type: Mapped[str | None]
    created_at: Mapped[datetime]
    batch_id: Mapped[str | None]
