"""Where the reliability tests keep histories: a picklable description of one backend's store,
opened into sessions in this process or in spawned children, from any event loop."""

from __future__ import annotations

import os
from dataclasses import dataclass

from hypothesis import settings

from agentmem import Session

APPLICATION_NAME = "agentmem-reliability"
"""The ``application_name`` of this suite's PostgreSQL connections: the only backends it kills."""

settings.register_profile("ci", max_examples=25, deadline=None, stateful_step_count=20)
settings.register_profile("soak", max_examples=400, deadline=None, stateful_step_count=50)
PROFILE = settings.get_profile(os.environ.get("AGENTMEM_RELIABILITY_PROFILE", "ci"))
"""Hypothesis settings of this suite: the small "ci" profile unless the soak run asks for more."""


@dataclass(frozen=True)
class Store:
    """One backend's store: ``kind`` is "sqlite-memory", "sqlite-file", "postgres", "redis" or
    "cached" (PostgreSQL behind a Redis cache); ``target`` the file path or server URL (for
    "cached", the PostgreSQL URL); ``redis_url`` and ``prefix`` the Redis server and key prefix
    of "redis" and "cached"."""

    kind: str
    target: str = ""
    redis_url: str = ""
    prefix: str = ""
    pool_size: int = 5

    @property
    def shared(self) -> bool:
        """Whether two session objects (or processes) on one id see one history."""
        return self.kind != "sqlite-memory"

    def open(self, session_id: str, application_name: str = APPLICATION_NAME) -> Session:
        """A new session object on this store (closed by the caller)."""
        if self.kind in ("sqlite-memory", "sqlite-file"):
            from agentmem import SQLiteSession

            return SQLiteSession(session_id, self.target or ":memory:")
        if self.kind in ("postgres", "cached"):
            from agentmem import CachedSession, SQLAlchemySession

            kwargs = {
                "pool_size": self.pool_size,
                "max_overflow": 0,
                "connect_args": {"server_settings": {"application_name": application_name}},
            }
            store = SQLAlchemySession.from_url(session_id, url=self.target, engine_kwargs=kwargs)
            if self.kind == "postgres":
                return store
            return CachedSession(
                store,
                self.redis_url,
                key_prefix=f"{self.prefix}:cache",
                max_connections=self.pool_size,
            )
        if self.kind == "redis":
            from agentmem import RedisSession

            return RedisSession(
                session_id,
                self.redis_url,
                session_prefix=f"{self.prefix}:session",
                messages_prefix=f"{self.prefix}:messages",
                max_connections=self.pool_size,
            )
        raise ValueError(f"unknown store kind {self.kind!r}")
