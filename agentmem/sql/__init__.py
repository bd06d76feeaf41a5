"""agentmem's SQL backends: one ``sessions`` row per conversation, one ``messages`` row per item.

Where each concept lives:

- :mod:`agentmem.sql.schema`: the tables (declarative, naming convention, table-name prefixes).
- :mod:`agentmem.sql.migrate`: the Alembic API (upgrade, check, current, head) and URL mapping.
- :mod:`agentmem.sql.base`: :class:`~agentmem.sql.base.SQLSessionBase`, the public interface of
  every SQL session on stored JSON text (what the cache composes), and the ``Operations`` each
  connection kind implements.
- :mod:`agentmem.sql._statements`: the statements of the hot path, per dialect, and the SQLite
  settings and retries.
- :mod:`agentmem.sql._manage`: the managers' statements (listing, paging, whole conversations).
- :mod:`agentmem.sql.sqlite`: ``SQLiteSession`` and ``SQLiteSessionManager`` (stdlib sqlite3,
  no server).
- :mod:`agentmem.sql.sqlalchemy`: ``SQLAlchemySession`` and ``SQLAlchemySessionManager`` on an
  ``AsyncEngine`` (PostgreSQL with asyncpg, SQLite with aiosqlite).

Import the sessions and managers from :mod:`agentmem`.
"""
