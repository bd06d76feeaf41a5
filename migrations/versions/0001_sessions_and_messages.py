"""sessions and messages

Revision ID: 0001
Revises:
Create Date: 2026-11-24 16:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _prefix() -> str:
    """agentmem's table-name prefix for this run (set by env.py)."""
    return str(op.get_context().config.attributes.get("table_prefix", ""))


def upgrade() -> None:
    p = _prefix()
    op.create_table(
        f"{p}sessions",
        sa.Column("session_id", sa.String(255), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        # expires_at and metadata_json are reserved: agentmem does not read or write them yet.
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("metadata_json", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("session_id", name=op.f(f"pk_{p}sessions")),
    )
    op.create_table(
        f"{p}messages",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("session_id", sa.String(255), nullable=False),
        sa.Column("message_data", sa.Text(), nullable=False),
        sa.Column("role", sa.String(64), nullable=True),
        sa.Column("item_type", sa.String(64), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["session_id"],
            [f"{p}sessions.session_id"],
            name=op.f(f"fk_{p}messages_session_id_{p}sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{p}messages")),
    )
    op.create_index(f"ix_{p}messages_session_id_id", f"{p}messages", ["session_id", "id"])


def downgrade() -> None:
    p = _prefix()
    op.drop_index(f"ix_{p}messages_session_id_id", table_name=f"{p}messages")
    op.drop_table(f"{p}messages")
    op.drop_table(f"{p}sessions")
