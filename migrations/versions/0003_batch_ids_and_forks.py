"""batch ids and fork origins: each add_items call's id on the first of its items, unique per
session; the parent and fork point of a forked session

Revision ID: 0003
Revises: 0002_lifecycle
Create Date: 2026-12-02 02:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002_lifecycle"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _prefix() -> str:
    """agentmem's table-name prefix for this run (set by env.py)."""
    return str(op.get_context().config.attributes.get("table_prefix", ""))


def upgrade() -> None:
    p = _prefix()
    op.add_column(f"{p}messages", sa.Column("batch_id", sa.String(32), nullable=True))
    # Partial: only the first item of a batch carries its id, and the rest cost no index entry.
    op.create_index(
        f"ix_{p}messages_session_id_batch_id",
        f"{p}messages",
        ["session_id", "batch_id"],
        unique=True,
        postgresql_where=sa.text("batch_id IS NOT NULL"),
        sqlite_where=sa.text("batch_id IS NOT NULL"),
    )
    op.add_column(f"{p}sessions", sa.Column("forked_from", sa.String(255), nullable=True))
    op.add_column(f"{p}sessions", sa.Column("fork_point", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    p = _prefix()
    # In place on SQLite too (3.35+): no rebuild of ``sessions``, whose drop would cascade.
    table = op.get_context().dialect.identifier_preparer.quote(f"{p}sessions")
    for column in ("fork_point", "forked_from"):
        op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    op.drop_index(f"ix_{p}messages_session_id_batch_id", table_name=f"{p}messages")
    with op.batch_alter_table(f"{p}messages") as batch:
        batch.drop_column("batch_id")
