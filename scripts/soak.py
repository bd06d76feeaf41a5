"""The long reliability run (not in CI): per backend, the largest concurrent load that holds,
the faults survived and the inputs tried.

    .venv/bin/python scripts/soak.py                      # every backend, the default ladder
    .venv/bin/python scripts/soak.py --backends sqlite-file redis --max-processes 4

1. Load ladder: for each backend, processes x tasks x batches of writers (plus poppers) on one
   session and on many, each rung checked like tests/reliability (nothing lost or duplicated,
   each writer's order kept, every pop unique), climbing until a rung fails or the top is held.
2. Faults and inputs: tests/reliability run with the hypothesis "soak" profile (many more
   examples than CI), its results counted per backend.

Servers: AGENTMEM_TEST_POSTGRES_URL and AGENTMEM_TEST_REDIS_URL, as for the tests (a database and
a key prefix of this run, removed afterwards).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.reliability import _children, _load  # noqa: E402
from tests.reliability._stores import Store  # noqa: E402

POSTGRES_URL = os.environ.get(
    "AGENTMEM_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("AGENTMEM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RUN = uuid.uuid4().hex[:8]
BACKENDS = ["sqlite-file", "postgres", "redis", "cached"]
# (processes, tasks per process and session, batches per task); sessions: 1 and 8.
LADDER = [(2, 4, 25), (4, 8, 25), (4, 16, 25), (6, 16, 25), (6, 32, 20), (8, 32, 20)]
MANY = 8


def run_rung(
    store: Store, processes: int, tasks: int, batches: int, sessions: int
) -> tuple[bool, str, float]:
    """One rung: the load, then the checks. Returns (held, detail, seconds)."""
    session_ids = [f"soak-{RUN}-{uuid.uuid4().hex[:8]}" for _ in range(sessions)]
    pops = batches * 2 if sessions == 1 else 0
    started = time.monotonic()
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(processes, mp_context=context) as pool:
        futures = [
            pool.submit(_children.run_load, store, session_ids, p, tasks, batches, pops)
            for p in range(processes)
        ]
        outcome = _load.Outcome()
        for future in futures:
            outcome.merge(future.result())
    seconds = time.monotonic() - started

    async def read() -> list[list[dict[str, Any]]]:
        histories = []
        for session_id in session_ids:
            async with store.open(session_id) as session:  # type: ignore[attr-defined]
                histories.append(await session.get_items())
                await session.clear_session()
        return histories

    histories = asyncio.run(read())
    if outcome.errors:
        kinds = Counter(str(error)[:80] for error in outcome.errors)
        return False, f"{len(outcome.errors)} errors: {kinds.most_common(2)}", seconds
    try:
        _load.check_history([i for h in histories for i in h] + outcome.popped, outcome)
        for history in histories:
            _load.check_order(history)
    except AssertionError as exc:
        return False, f"check failed: {exc}", seconds
    ops = processes * tasks * batches * sessions + (processes * pops * sessions)
    return True, f"{ops} calls, {len(outcome.popped)} pops", seconds


def ladder(store: Store, max_processes: int) -> dict[int, str]:
    held: dict[int, str] = {}
    for sessions in (1, MANY):
        for processes, tasks, batches in LADDER:
            if processes > max_processes:
                break
            ok, detail, seconds = run_rung(store, processes, tasks, batches, sessions)
            rung = f"{processes}x{tasks}x{batches}"
            print(
                f"  {store.kind:12} sessions={sessions:<2} {rung:10} "
                f"{'held' if ok else 'FAILED'} in {seconds:5.1f}s: {detail}",
                flush=True,
            )
            if not ok:
                break
            held[sessions] = rung
    return held


def pytest_counts(backends: list[str]) -> dict[str, Counter[str]]:
    """Run tests/reliability with the soak profile; count outcomes per backend id."""
    env = dict(os.environ, AGENTMEM_RELIABILITY_PROFILE="soak")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "tests/reliability",
            "-q",
            "-rA",
            "-p",
            "no:cacheprovider",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    line_re = re.compile(
        r"^(PASSED|FAILED|XFAIL|XPASS|SKIPPED|ERROR) (\S+?::[^\[\s]+(?:\[.*?\])?)(?: - |$)"
    )
    for line in result.stdout.splitlines():
        match = line_re.match(line)
        if match is None:
            continue
        status, test = match.groups()
        ids = re.search(r"\[(.*)\]$", test)
        backend = next(
            (b for b in ("sqlite-memory", *backends) if ids and ids.group(1).startswith(b)),
            "other",
        )
        name = test.split("::")[-1].split("[")[0]
        counts[backend][f"{status} {name}"] += 1
    print(result.stdout.splitlines()[-1] if result.stdout else result.stderr[-2000:])
    return counts


def make_postgres_database() -> tuple[str, str]:
    import asyncpg
    from sqlalchemy.engine import make_url
    from sqlalchemy.ext.asyncio import create_async_engine

    from agentmem import migrate

    admin = POSTGRES_URL.replace("postgresql+asyncpg://", "postgresql://")
    name = f"agentmem_soak_{RUN}"

    async def create() -> str:
        conn = await asyncpg.connect(admin)
        await conn.execute(f'CREATE DATABASE "{name}"')
        await conn.close()
        url = make_url(admin).set(drivername="postgresql+asyncpg", database=name)
        rendered = url.render_as_string(hide_password=False)
        engine = create_async_engine(rendered)
        await migrate.upgrade(engine)
        await engine.dispose()
        return rendered

    return asyncio.run(create()), name


def drop_postgres_database(name: str) -> None:
    import asyncpg

    async def drop() -> None:
        conn = await asyncpg.connect(POSTGRES_URL.replace("postgresql+asyncpg://", "postgresql://"))
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()

    asyncio.run(drop())


def drop_redis_keys(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    for start in range(0, len(keys), 1000):
        client.unlink(*keys[start : start + 1000])
    client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=BACKENDS)
    parser.add_argument("--max-processes", type=int, default=8)
    parser.add_argument("--skip-tests", action="store_true", help="only the load ladder")
    args = parser.parse_args()

    prefix = f"agentmem-soak-{RUN}"
    pg_url, pg_name = make_postgres_database()
    held: dict[str, dict[int, str]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            stores = {
                "sqlite-file": Store("sqlite-file", str(Path(tmp) / "soak.db")),
                "postgres": Store("postgres", pg_url),
                "redis": Store("redis", redis_url=REDIS_URL, prefix=prefix),
                "cached": Store("cached", pg_url, REDIS_URL, prefix),
            }
            print("== load ladder (processes x tasks x batches of 5 items)", flush=True)
            for backend in args.backends:
                held[backend] = ladder(stores[backend], args.max_processes)
    finally:
        drop_postgres_database(pg_name)
        drop_redis_keys(prefix)
    counts = {} if args.skip_tests else pytest_counts(args.backends)

    print("\n== per backend")
    for backend in args.backends:
        one = held[backend].get(1, "none")
        many = held[backend].get(MANY, "none")
        print(f"{backend}: load held: one session {one}; {MANY} sessions {many}")
        for outcome, n in sorted(counts.get(backend, Counter()).items()):
            print(f"    {n:3} x {outcome}")
    if counts.get("other"):
        print("backend-independent:")
        for outcome, n in sorted(counts["other"].items()):
            print(f"    {n:3} x {outcome}")


if __name__ == "__main__":
    main()
