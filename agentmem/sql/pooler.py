"""Settings for PostgreSQL behind a connection pooler that shares server connections between
transactions (PgBouncer in ``transaction`` mode): no prepared statement may outlive its
transaction, nor two clients prepare one name."""

from __future__ import annotations

import uuid
from typing import Any

__all__ = ["pgbouncer_connect_args"]


def _statement_name() -> str:
    return f"__asyncpg_{uuid.uuid4().hex}__"


def pgbouncer_connect_args() -> dict[str, Any]:
    """The ``connect_args`` of an asyncpg engine behind PgBouncer in ``transaction`` mode.

    asyncpg's statement cache is off (``statement_cache_size=0``: each statement is prepared
    unnamed, in the transaction that runs it) and so is SQLAlchemy's
    (``prepared_statement_cache_size=0``); the statements SQLAlchemy still prepares get unique
    names, so two clients never collide on one server connection. Not needed in ``session``
    mode, nor behind PgBouncer 1.21+ with ``max_prepared_statements`` set.

    Example::

        engine = create_async_engine(
            "postgresql+asyncpg://app@pgbouncer:6432/app",
            connect_args=pgbouncer_connect_args(),
        )
        session = SQLAlchemySession.from_url(
            "user_123", url=url, engine_kwargs={"connect_args": pgbouncer_connect_args()}
        )

    Returns:
        A new dict each call; its values are the same objects every time, so sessions built
        by ``from_url`` with it share one engine per URL.
    """
    return {
        "statement_cache_size": 0,
        "prepared_statement_cache_size": 0,
        "prepared_statement_name_func": _statement_name,
    }
