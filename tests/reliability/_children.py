"""Functions the reliability tests run in spawned child processes (importable by name)."""

from __future__ import annotations

import asyncio
from multiprocessing.synchronize import Event

from tests.reliability import _load
from tests.reliability._stores import Store


def add_large_batches_forever(store: Store, session_id: str, size: int, started: Event) -> None:
    """Add batches of ``size`` items until killed, setting ``started`` as the second one begins."""

    async def run() -> None:
        async with store.open(session_id) as session:  # type: ignore[attr-defined]
            number = 0
            while True:
                if number == 1:
                    started.set()
                await session.add_items(_load.batch("big", number, size))
                number += 1

    asyncio.run(run())


def run_load(
    store: Store, session_ids: list[str], process: int, tasks: int, batches: int, pops: int
) -> _load.Outcome:
    """``tasks`` writers (and as many poppers when ``pops``) per session, in one event loop;
    returns what they were told."""

    async def run() -> _load.Outcome:
        outcome = _load.Outcome()
        sessions = [store.open(sid) for sid in session_ids]
        try:
            await asyncio.gather(
                *(
                    _load.write(session, f"p{process}t{task}s{index}", batches, outcome)
                    for index, session in enumerate(sessions)
                    for task in range(tasks)
                ),
                *(_load.pop(session, pops, outcome) for session in sessions if pops),
            )
        finally:
            for session in sessions:
                await session.close()  # type: ignore[attr-defined]
        outcome.errors = [RuntimeError(repr(error)) for error in outcome.errors]  # picklable
        return outcome

    return asyncio.run(run())
