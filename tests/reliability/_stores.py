"""Where the reliability tests keep histories: a picklable description of one backend's store,
opened into sessions in this process or in spawned children, from any event loop."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

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
    """One backend's store: ``kind`` is "sqlite-memory", "sqlite-file", "postgres" or "redis";
    ``target`` the file path or server URL; ``prefix`` the Redis key prefix."""

    kind: str
    target: str = ""
    prefix: str = ""
    pool_size: int = 5
    options: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def shared(self) -> bool:
        """Whether two session objects (or processes) on one id see one history."""
        return self.kind != "sqlite-memory"

    def open(self, session_id: str, application_name: str = APPLICATION_NAME) -> Session:
        """A new session object on this store (closed by the caller)."""
        if self.kind in ("sqlite-memory", "sqlite-file"):
            from agentmem import SQLiteSession

            return SQLiteSession(session_id, self.target or ":memory:")
        if self.kind == "postgres":
            from agentmem import SQLAlchemySession

            kwargs = {
                "pool_size": self.pool_size,
                "max_overflow": 0,
                "connect_args": {"server_settings": {"application_name": application_name}},
            }
            return SQLAlchemySession.from_url(session_id, url=self.target, engine_kwargs=kwargs)
        if self.kind == "redis":
            from agentmem import RedisSession

            return RedisSession(
                session_id,
                self.target,
                session_prefix=f"{self.prefix}:session",
                messages_prefix=f"{self.prefix}:messages",
                max_connections=self.pool_size,
                **self.options,
            )
        raise ValueError(f"unknown store kind {self.kind!r}")
