"""batch ids: each add_items call's id on the first of its items, unique per session

Revision ID: 0003
Revises: 0001
Create Date: 2026-12-02 02:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0001"
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


def downgrade() -> None:
    p = _prefix()
    op.drop_index(f"ix_{p}messages_session_id_batch_id", table_name=f"{p}messages")
    with op.batch_alter_table(f"{p}messages") as batch:
        batch.drop_column("batch_id")
