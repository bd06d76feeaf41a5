"""Writers and poppers that record what each call was told, and the checks that compare it with
what the store holds afterwards."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from agentmem import Session

BATCH = 5


def batch(writer: str, number: int, size: int = BATCH) -> list[dict[str, Any]]:
    """Batch ``number`` of ``writer``: items tagged with the writer, the batch and the position."""
    return [{"w": writer, "b": number, "i": i} for i in range(size)]


@dataclass
class Outcome:
    """What the callers were told: batches acknowledged, batches whose call raised, items popped,
    and the errors seen."""

    stored: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    failed: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    popped: list[dict[str, Any]] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    failed_pops: int = 0
    stop: bool = False
    """Set to end the writers after their current batch."""

    def merge(self, other: Outcome) -> None:
        for writer, numbers in other.stored.items():
            self.stored[writer].extend(numbers)
        for writer, numbers in other.failed.items():
            self.failed[writer].extend(numbers)
        self.popped.extend(other.popped)
        self.failed_pops += other.failed_pops
        self.errors.extend(other.errors)


async def write(
    session: Session, writer: str, batches: int, outcome: Outcome, *, size: int = BATCH
) -> None:
    """Add ``batches`` batches (or until ``outcome.stop``), recording each as stored or failed
    (an error does not stop it)."""
    for number in range(batches):
        if outcome.stop:
            return
        try:
            await session.add_items(batch(writer, number, size))
        except asyncio.CancelledError:
            outcome.failed[writer].append(number)  # it may have been stored: the caller can't know
            raise
        except Exception as exc:
            outcome.failed[writer].append(number)
            outcome.errors.append(exc)
            await asyncio.sleep(0.02)  # as a caller would, rather than spin while a server is down
        else:
            outcome.stored[writer].append(number)


async def pop(session: Session, pops: int, outcome: Outcome) -> None:
    """Pop ``pops`` times, recording every item returned."""
    for _ in range(pops):
        try:
            item = await session.pop_item()
        except Exception as exc:
            outcome.failed_pops += 1
            outcome.errors.append(exc)
            await asyncio.sleep(0.02)
        else:
            if item is not None:
                outcome.popped.append(item)
        await asyncio.sleep(0)


def check_history(items: Iterable[dict[str, Any]], outcome: Outcome, *, size: int = BATCH) -> None:
    """Assert that ``items`` (the history, plus what was popped) is what the callers were told.

    Every acknowledged batch is there exactly once, whole, in its writer's order; a batch whose
    call raised is there whole or not at all (its commit may have happened before the connection
    dropped); nothing else is there; no item was popped twice. The one allowance: a pop whose
    call raised may have removed an item before its reply was lost, so at most that many items
    may be missing.
    """
    items = list(items)
    keys = [(item["w"], item["b"], item["i"]) for item in items]
    assert len(keys) == len(set(keys)), "an item is stored (or popped) twice"
    by_batch: dict[tuple[str, int], set[int]] = defaultdict(set)
    for writer, number, index in keys:
        by_batch[writer, number].add(index)
    missing = 0
    for (writer, number), indexes in by_batch.items():
        assert number in outcome.stored[writer] or number in outcome.failed[writer], (
            f"batch {writer}/{number} was never written"
        )
        assert indexes <= set(range(size)), f"batch {writer}/{number} has foreign items"
        missing += size - len(indexes)
    for writer, numbers in outcome.stored.items():
        missing += size * sum((writer, number) not in by_batch for number in numbers)
    assert missing <= outcome.failed_pops, (
        f"{missing} acknowledged items are missing, more than the {outcome.failed_pops} pops "
        "that raised could have taken"
    )


def check_order(history: list[dict[str, Any]]) -> None:
    """Each writer's items in the history are in the order it wrote them."""
    seen: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for item in history:
        seen[item["w"]].append((item["b"], item["i"]))
    for writer, positions in seen.items():
        assert positions == sorted(positions), f"writer {writer}'s items are out of order"
