"""session lifecycle: owner, title, metadata, item count, expiry indexes

Revision ID: 0002_lifecycle
Revises: 0001
Create Date: 2026-12-02 02:20:00

Adds ``user_id``, ``title`` and ``item_count`` to ``sessions`` (``item_count`` filled from the
stored messages), makes ``metadata_json`` JSONB on PostgreSQL (a GIN index serves containment
filters; SQLite gets a plain index of the same name), and indexes the listings (owner then
recency, recency alone) and the purge (expiry). Columns are only added on SQLite: rebuilding
``sessions`` there would cascade to ``messages``.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002_lifecycle"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _prefix() -> str:
    """agentmem's table-name prefix for this run (set by env.py)."""
    return str(op.get_context().config.attributes.get("table_prefix", ""))


def _is_postgres() -> bool:
    return op.get_context().dialect.name == "postgresql"


def upgrade() -> None:
    p = _prefix()
    sessions, messages = f"{p}sessions", f"{p}messages"
    op.add_column(sessions, sa.Column("user_id", sa.String(255), nullable=True))
    op.add_column(sessions, sa.Column("title", sa.Text(), nullable=True))
    op.add_column(
        sessions,
        sa.Column("item_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
    )
    quote = op.get_context().dialect.identifier_preparer.quote
    op.execute(
        f"UPDATE {quote(sessions)} SET item_count = (SELECT count(*) FROM {quote(messages)} "
        f"AS m WHERE m.session_id = {quote(sessions)}.session_id)"
    )
    if _is_postgres():
        op.alter_column(
            sessions,
            "metadata_json",
            type_=postgresql.JSONB(),
            existing_type=sa.Text(),
            existing_nullable=True,
            postgresql_using="metadata_json::jsonb",
        )
    # GIN on PostgreSQL; on SQLite a plain index (the models declare one index for both).
    # Partial: a write to a session without an owner (or without expiry, or metadata) leaves
    # the index of that field alone.
    owned = sa.text("user_id IS NOT NULL")
    expiring = sa.text("expires_at IS NOT NULL")
    described = sa.text("metadata_json IS NOT NULL")
    op.create_index(
        f"ix_{p}sessions_metadata_json",
        sessions,
        ["metadata_json"],
        postgresql_using="gin",
        postgresql_ops={"metadata_json": "jsonb_path_ops"},
        postgresql_where=described,
        sqlite_where=described,
    )
    op.create_index(
        f"ix_{p}sessions_user_id_updated_at",
        sessions,
        ["user_id", sa.text("updated_at DESC"), "session_id"],
        postgresql_where=owned,
        sqlite_where=owned,
    )
    op.create_index(
        f"ix_{p}sessions_updated_at", sessions, [sa.text("updated_at DESC"), "session_id"]
    )
    op.create_index(
        f"ix_{p}sessions_expires_at",
        sessions,
        ["expires_at"],
        postgresql_where=expiring,
        sqlite_where=expiring,
    )


def downgrade() -> None:
    p = _prefix()
    sessions = f"{p}sessions"
    op.drop_index(f"ix_{p}sessions_expires_at", table_name=sessions)
    op.drop_index(f"ix_{p}sessions_updated_at", table_name=sessions)
    op.drop_index(f"ix_{p}sessions_user_id_updated_at", table_name=sessions)
    op.drop_index(f"ix_{p}sessions_metadata_json", table_name=sessions)
    if _is_postgres():
        op.alter_column(
            sessions,
            "metadata_json",
            type_=sa.Text(),
            existing_type=postgresql.JSONB(),
            existing_nullable=True,
            postgresql_using="metadata_json::text",
        )
    # In place on SQLite too (3.35+, no index names them now): no rebuild of ``sessions``.
    table = op.get_context().dialect.identifier_preparer.quote(sessions)
    for column in ("item_count", "title", "user_id"):
        op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
