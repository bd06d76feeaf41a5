"""``add_items`` on a ``postgresql+psycopg`` engine (the SQLAlchemy Core path): the item count
kept by a recount ``UPDATE`` after the insert (before) against the counted insert (one
statement: the insert a CTE of the count's update), interleaved rounds in one process.

    python -m bench.psycopg_count [--url postgresql://postgres@127.0.0.1:5432/postgres]

Runs in a database of its own, created and dropped. Per batch size (1, 10, 100 items) and
round, each variant appends 100 times to a session of its own; the median of 6 rounds of
microseconds per ``add_items`` is printed with the ratio counted/recount.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from agentmem import SQLAlchemySession
from agentmem.session import EncodedItem
from agentmem.sql import _core
from tests._backends import new_postgres_database

ROUNDS = 6
ADDS = 100


class Recount(_core.CoreOperations):
    """The path before: the rows inserted, then ``item_count`` recounted from them."""

    async def _insert_counted(
        self, conn: AsyncConnection, items: list[EncodedItem], batch_id: str
    ) -> None:
        await self._insert(conn, items, batch_id)
        await self._recount(conn)


async def measure(url: str, batch: int) -> dict[str, list[float]]:
    engine = create_async_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    results: dict[str, list[float]] = {"recount": [], "counted": []}
    items: list[dict[str, Any]] = [{"role": "user", "content": f"m{n}"} for n in range(batch)]
    try:
        for round_ in range(ROUNDS):
            order = ("recount", "counted") if round_ % 2 == 0 else ("counted", "recount")
            for name in order:
                session = SQLAlchemySession(
                    engine, f"{name}-{uuid.uuid4().hex}", create_tables=True
                )
                if name == "recount":
                    session._ops = Recount(session)
                await session.add_items([{"warm": 1}])
                start = time.perf_counter()
                for _ in range(ADDS):
                    await session.add_items(items)
                results[name].append((time.perf_counter() - start) / ADDS * 1e6)
                assert len(await session.get_items()) == 1 + ADDS * batch
                await session.clear_session()
                await session.close()
    finally:
        await engine.dispose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    name = f"agentmem_bench_psycopg_{uuid.uuid4().hex[:8]}"
    with new_postgres_database(args.url, name) as url:
        for batch in (1, 10, 100):
            results = asyncio.run(measure(url, batch))
            before = statistics.median(results["recount"])
            after = statistics.median(results["counted"])
            print(
                f"batch {batch:>3}: recount {before:8.0f} us  counted {after:8.0f} us  "
                f"counted/recount {after / before:.2f}"
            )


if __name__ == "__main__":
    main()
