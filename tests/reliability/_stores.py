"""Where the reliability tests keep histories: a picklable description of one backend's store,
opened into sessions in this process or in spawned children, from any event loop."""

from __future__ import annotations

import os
from dataclasses import dataclass

from hypothesis import settings

from tests._backends import Backend

APPLICATION_NAME = "agentmem-reliability"
"""The ``application_name`` of this suite's PostgreSQL connections: the only backends it kills."""

settings.register_profile("ci", max_examples=25, deadline=None, stateful_step_count=20)
settings.register_profile("soak", max_examples=400, deadline=None, stateful_step_count=50)
PROFILE = settings.get_profile(os.environ.get("AGENTMEM_RELIABILITY_PROFILE", "ci"))
"""Hypothesis settings of this suite: the small "ci" profile unless the soak run asks for more."""


@dataclass(frozen=True)
class Store(Backend):
    """One backend's store, as the registry (tests/_backends.py) opens it, with this suite's
    pools (five connections) and ``application_name``: ``kind`` is "sqlite-memory",
    "sqlite-file", "postgres", "redis" or "cached" (PostgreSQL behind a Redis cache); ``target``
    the file path or, for "postgres" and "cached", the PostgreSQL URL; ``redis_url`` and
    ``prefix`` the Redis server and key prefix of "redis" and "cached". ``open(session_id)``
    gives a session with connections of its own (closed by the caller)."""

    pool_size: int | None = 5
    application_name: str = APPLICATION_NAME
