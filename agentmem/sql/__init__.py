"""agentmem's SQL backends: one ``sessions`` row per conversation, one ``messages`` row per item.

Where each concept lives:

- :mod:`agentmem.sql.schema`: the tables (declarative, naming convention, table-name prefixes).
- :mod:`agentmem.sql.migrate`: the Alembic API (upgrade, check, current, head) and the
  "run ``agentmem upgrade``" hints of its errors.
- :mod:`agentmem.sql.base`: the public interface of the SQL backends, what the cache composes:
  :class:`~agentmem.sql.base.SQLSessionBase` (every SQL session on stored JSON text),
  :class:`~agentmem.sql.base.SQLSessionManagerABC` (every SQL manager), and the ``Operations``
  each connection kind implements.
- :mod:`agentmem.sql._statements`: the statements of the hot path, per dialect, and the SQLite
  settings and retries.
- :mod:`agentmem.sql._manage`: the managers' statements (listing, paging, whole conversations).
- :mod:`agentmem.sql.sqlite`: ``SQLiteSession`` and ``SQLiteSessionManager`` (stdlib sqlite3,
  no server); :mod:`agentmem.sql._sqlite_schema`: their schema on a raw sqlite3 connection.
- :mod:`agentmem.sql.sqlalchemy`: ``SQLAlchemySession`` and ``SQLAlchemySessionManager`` on an
  ``AsyncEngine`` (PostgreSQL with asyncpg, SQLite with aiosqlite); under them
  :mod:`agentmem.sql._engines` (engines shared per URL and event loop, schema readiness, SQLite
  connection settings) and :mod:`agentmem.sql._retry` (a call on a pooled driver connection:
  call timeout, disconnect detection, retry).
- :mod:`agentmem.sql._urls`: the async driver agentmem uses for a plain URL.

Import the sessions and managers from :mod:`agentmem`.
"""
