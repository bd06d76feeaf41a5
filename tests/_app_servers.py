"""What one app server does in the many-app-servers test (run in a spawned process): its own
manager, on the Redis Cluster, on PostgreSQL through PgBouncer, or both (the cached mode)."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from agentmem.manager import SessionManagerABC

CONCURRENCY = 20
LOCK_TIMEOUT = 300  # seconds: generous, the run shares a loaded machine


def open_manager(kind: str, sql_url: str, cluster_url: str) -> SessionManagerABC[Any]:
    """``kind``: "redis-cluster", "pgbouncer" or "cached-cluster" (PgBouncer behind the cluster)."""
    from agentmem import (
        CachedSessionManager,
        RedisSessionManager,
        SQLAlchemySessionManager,
        pgbouncer_connect_args,
    )

    if kind == "redis-cluster":
        return RedisSessionManager(
            cluster_url, session_prefix="apps:session", messages_prefix="apps:messages"
        )
    # exclusive() blocks pin a PgBouncer server connection each, at most half of the engine's
    # pool per process: 4 servers x 4 stays below the PgBouncer's 20 (tests/_pgbouncer.py).
    store = SQLAlchemySessionManager.from_url(
        sql_url,
        engine_kwargs={
            "connect_args": pgbouncer_connect_args(),
            "pool_size": 4,
            "max_overflow": 4,
        },
    )
    if kind == "pgbouncer":
        return store
    return CachedSessionManager(store, cluster_url, key_prefix="apps:cache")


def serve_turns(
    kind: str,
    sql_url: str,
    cluster_url: str,
    session_ids: list[str],
    server: int,
    turns: int,
    exclusive: bool = False,
) -> int:
    """Each turn of each session: read the newest items, then add a user and an assistant item
    (one batch). Sessions in a shuffled order of this server's own, ``CONCURRENCY`` at once.
    With ``exclusive``, each turn runs inside ``session.exclusive()``, reads the whole history
    and records in its items how many it saw (``seen``). Returns how many turns were stored."""

    async def run() -> int:
        order = random.Random(server)
        slots = asyncio.Semaphore(CONCURRENCY)
        async with open_manager(kind, sql_url, cluster_url) as manager:

            async def turn(session_id: str, t: int) -> None:
                async with slots:
                    session = manager.get_session(session_id)
                    if exclusive:
                        async with session.exclusive(timeout=LOCK_TIMEOUT):
                            seen = len(await session.get_items())
                            await session.add_items(
                                [
                                    {"role": "user", "server": server, "turn": t, "seen": seen},
                                    {"role": "assistant", "server": server, "turn": t},
                                ]
                            )
                    else:
                        await session.get_items(4)
                        await session.add_items(
                            [
                                {"role": "user", "server": server, "turn": t},
                                {"role": "assistant", "server": server, "turn": t},
                            ]
                        )
                    await session.close()

            for t in range(turns):
                ids = list(session_ids)
                order.shuffle(ids)
                await asyncio.gather(*(turn(session_id, t) for session_id in ids))
        return turns * len(session_ids)

    return asyncio.run(run())
