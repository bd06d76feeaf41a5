"""The standard workloads, W1 to W8 and W10, and the items they write.

A workload runs on every target in rounds (see ``bench.run``): ``setup`` builds the history
untimed, each ``run_round`` does its share of the timed operations, and ``verify`` checks that
every read returned what was written and that the history ends exactly as expected.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from dataclasses import dataclass
from time import perf_counter_ns
from typing import Any

import orjson

from bench.targets import BenchSession, Target

PREFILL_BATCH = 1_000


def make_items(tag: str, count: int) -> list[dict[str, Any]]:
    """``count`` realistic OpenAI Agents SDK items, cycling through one agent step: a user
    message, a function_call with ~500 bytes of JSON arguments, its output, the assistant's
    reply with content parts. ``tag`` makes each item unique, so a misplaced item is noticed."""
    items: list[dict[str, Any]] = []
    for i in range(count):
        mark = f"{tag}.{i}"
        kind = i % 4
        if kind == 0:
            items.append({"role": "user", "content": f"[{mark}] What changed in the Q3 report?"})
        elif kind == 1:
            arguments = {
                "query": f"quarterly report changes {mark}",
                "filters": {"year": 2025, "quarter": 3, "departments": ["sales", "ops", "eng"]},
                "fields": ["title", "summary", "author", "updated_at", "revenue", "headcount"],
                "context": "Compare against the previous quarter and list notable changes. " * 4,
            }
            items.append(
                {
                    "type": "function_call",
                    "id": f"fc_{mark}",
                    "call_id": f"call_{mark}",
                    "name": "search_documents",
                    "arguments": orjson.dumps(arguments).decode(),
                }
            )
        elif kind == 2:
            items.append(
                {
                    "type": "function_call_output",
                    "call_id": f"call_{tag}.{i - 1}",
                    "output": f"3 documents match {mark}: revenue +4.2%, headcount flat.",
                }
            )
        else:
            items.append(
                {
                    "id": f"msg_{mark}",
                    "type": "message",
                    "role": "assistant",
                    "status": "completed",
                    "content": [
                        {
                            "type": "output_text",
                            "text": f"Revenue grew 4.2% in Q3 ({mark}); headcount is flat. ☀️",
                            "annotations": [],
                            "logprobs": [],
                        }
                    ],
                }
            )
    return items


@dataclass(frozen=True)
class Sizes:
    """Operation counts of a run: the issue's numbers, or a smoke run's."""

    rounds: int
    w1_appends: int
    w2_batches: int
    w3_history: int
    w3_reads: int
    w4_history: int
    w4_reads: int
    w5_turns: int
    w6_sessions: int
    w6_turns: int
    w7_pops: int
    w8_small: int
    w8_large: int
    w8_reads: int


FULL = Sizes(10, 2_000, 200, 10_000, 1_000, 1_000, 200, 300, 200, 20, 1_000, 1_000, 100_000, 1_000)
QUICK = Sizes(3, 40, 6, 300, 20, 100, 4, 10, 20, 4, 30, 100, 2_000, 20)


class Recorder:
    """Per-operation latencies (ns) of one target in one workload, plus the wall time; and
    where each round ended (how many latencies each operation had by then, the round's wall
    time), for the per-round statistics."""

    def __init__(self) -> None:
        self.latencies: dict[str, list[int]] = {}
        self.wall_ns = 0
        self.round_ends: list[tuple[dict[str, int], int]] = []

    def op(self, name: str) -> list[int]:
        return self.latencies.setdefault(name, [])

    def end_round(self, wall_ns: int) -> None:
        """Close a round that took ``wall_ns``."""
        self.wall_ns += wall_ns
        counts = {op: len(lat) for op, lat in self.latencies.items()}
        self.round_ends.append((counts, wall_ns))

    def rounds(self) -> list[tuple[dict[str, list[int]], int]]:
        """Each round's latencies per operation, and its wall time."""
        found = []
        before: dict[str, int] = {}
        for counts, wall_ns in self.round_ends:
            found.append(
                (
                    {op: self.latencies[op][before.get(op, 0) : n] for op, n in counts.items()},
                    wall_ns,
                )
            )
            before = counts
        return found


class WorkloadRun(ABC):
    """One workload on one target."""

    def __init__(self, target: Target, sizes: Sizes, session_prefix: str, items: ItemCache) -> None:
        self.target = target
        self.sizes = sizes
        self.items_cache = items
        self.prefix = session_prefix
        self.sessions: list[BenchSession] = []
        self.problems: list[str] = []

    async def open(self, name: str) -> BenchSession:
        session = await self.target.make(f"{self.prefix}-{name}")
        self.sessions.append(session)
        return session

    async def prefill(self, session: BenchSession, items: list[dict[str, Any]]) -> None:
        for start in range(0, len(items), PREFILL_BATCH):
            await session.add_items(items[start : start + PREFILL_BATCH])

    def expect(self, what: str, got: object, expected: object) -> None:
        if got != expected:
            self.problems.append(f"{what}: got {_describe(got)}, expected {_describe(expected)}")

    @abstractmethod
    async def setup(self) -> None: ...

    @abstractmethod
    async def run_round(self, index: int, rec: Recorder) -> None: ...

    @abstractmethod
    async def verify(self) -> None: ...

    async def teardown(self) -> None:
        for session in self.sessions:
            await session.clear_session()
            await self.target.release(session)


def _describe(value: object) -> str:
    if isinstance(value, list):
        return f"{len(value)} items"
    return repr(value)[:80]


def _share(total: int, rounds: int, index: int) -> range:
    """The operations of round ``index`` when ``total`` are split over ``rounds``."""
    return range(total * index // rounds, total * (index + 1) // rounds)


class W1AppendOne(WorkloadRun):
    async def setup(self) -> None:
        self.items = self.items_cache.get("w1", self.sizes.w1_appends)
        self.session = await self.open("w1")

    async def run_round(self, index: int, rec: Recorder) -> None:
        lat, session, items = rec.op("add 1"), self.session, self.items
        for i in _share(len(items), self.sizes.rounds, index):
            t = perf_counter_ns()
            await session.add_items([items[i]])
            lat.append(perf_counter_ns() - t)

    async def verify(self) -> None:
        self.expect("history", await self.session.get_items(), self.items)


class W2AppendBatch(WorkloadRun):
    batch = 50

    async def setup(self) -> None:
        self.items = self.items_cache.get("w2", self.sizes.w2_batches * self.batch)
        self.session = await self.open("w2")

    async def run_round(self, index: int, rec: Recorder) -> None:
        lat, session, items, n = rec.op("add 50"), self.session, self.items, self.batch
        for i in _share(self.sizes.w2_batches, self.sizes.rounds, index):
            batch = items[i * n : (i + 1) * n]
            t = perf_counter_ns()
            await session.add_items(batch)
            lat.append(perf_counter_ns() - t)

    async def verify(self) -> None:
        self.expect("history", await self.session.get_items(), self.items)


class W3NewestOfLong(WorkloadRun):
    async def setup(self) -> None:
        history = self.items_cache.get("w3", self.sizes.w3_history)
        self.expected = history[-20:]
        self.session = await self.open("w3")
        await self.prefill(self.session, history)

    async def run_round(self, index: int, rec: Recorder) -> None:
        lat, session = rec.op("get 20"), self.session
        for _ in _share(self.sizes.w3_reads, self.sizes.rounds, index):
            t = perf_counter_ns()
            got = await session.get_items(20)
            lat.append(perf_counter_ns() - t)
            self.expect("newest 20", got, self.expected)

    async def verify(self) -> None:
        pass


class W4FullRead(WorkloadRun):
    async def setup(self) -> None:
        self.history = self.items_cache.get("w4", self.sizes.w4_history)
        self.session = await self.open("w4")
        await self.prefill(self.session, self.history)

    async def run_round(self, index: int, rec: Recorder) -> None:
        lat, session = rec.op("get all"), self.session
        for _ in _share(self.sizes.w4_reads, self.sizes.rounds, index):
            t = perf_counter_ns()
            got = await session.get_items()
            lat.append(perf_counter_ns() - t)
            self.expect("full read", got, self.history)

    async def verify(self) -> None:
        pass


class W5AgentTurn(WorkloadRun):
    async def setup(self) -> None:
        self.items = self.items_cache.get("w5", self.sizes.w5_turns * 4)
        self.session = await self.open("w5")

    async def run_round(self, index: int, rec: Recorder) -> None:
        lat, session, items = rec.op("turn"), self.session, self.items
        for turn in _share(self.sizes.w5_turns, self.sizes.rounds, index):
            new = items[turn * 4 : turn * 4 + 4]
            t = perf_counter_ns()
            history = await session.get_items()
            await session.add_items(new)
            lat.append(perf_counter_ns() - t)
            self.expect(f"turn {turn} history", len(history), turn * 4)

    async def verify(self) -> None:
        self.expect("history", await self.session.get_items(), self.items)


class W10TurnUnderLock(W5AgentTurn):
    """W5's turn inside ``session.exclusive()``: its cost over W5 is the lock's (take and
    release, uncontended)."""

    async def run_round(self, index: int, rec: Recorder) -> None:
        lat, session, items = rec.op("turn"), self.session, self.items
        for turn in _share(self.sizes.w5_turns, self.sizes.rounds, index):
            new = items[turn * 4 : turn * 4 + 4]
            t = perf_counter_ns()
            async with session.exclusive():  # type: ignore[attr-defined]
                history = await session.get_items()
                await session.add_items(new)
            lat.append(perf_counter_ns() - t)
            self.expect(f"turn {turn} history", len(history), turn * 4)


class W6ConcurrentSessions(WorkloadRun):
    """Many sessions at once, each its own task: a lost or reordered write shows in ``verify``."""

    async def setup(self) -> None:
        sizes = self.sizes
        self.items = [
            self.items_cache.get(f"w6s{n}", sizes.w6_turns * 2) for n in range(sizes.w6_sessions)
        ]
        self.conversations = [await self.open(f"w6-{n}") for n in range(sizes.w6_sessions)]

    async def run_round(self, index: int, rec: Recorder) -> None:
        lat = rec.op("turn")
        turns = _share(self.sizes.w6_turns, self.sizes.rounds, index)

        async def converse(session: BenchSession, items: list[dict[str, Any]]) -> None:
            for turn in turns:
                t = perf_counter_ns()
                newest = await session.get_items(50)
                await session.add_items(items[turn * 2 : turn * 2 + 2])
                lat.append(perf_counter_ns() - t)
                self.expect("newest 50", newest, items[max(0, turn * 2 - 50) : turn * 2])

        await asyncio.gather(*map(converse, self.conversations, self.items))

    async def verify(self) -> None:
        for n, (session, items) in enumerate(zip(self.conversations, self.items, strict=True)):
            self.expect(f"session {n} history", await session.get_items(), items)


class W7Pop(WorkloadRun):
    async def setup(self) -> None:
        self.history = self.items_cache.get("w7", self.sizes.w7_pops)
        self.session = await self.open("w7")
        await self.prefill(self.session, self.history)
        self.next_pop = len(self.history) - 1

    async def run_round(self, index: int, rec: Recorder) -> None:
        lat, session = rec.op("pop"), self.session
        for _ in _share(self.sizes.w7_pops, self.sizes.rounds, index):
            t = perf_counter_ns()
            got = await session.pop_item()
            lat.append(perf_counter_ns() - t)
            self.expect(f"pop {self.next_pop}", got, self.history[self.next_pop])
            self.next_pop -= 1

    async def verify(self) -> None:
        self.expect("pop of an empty session", await self.session.pop_item(), None)


class W8NewestBySize(WorkloadRun):
    async def setup(self) -> None:
        sizes = self.sizes
        self.cases: list[tuple[str, BenchSession, list[dict[str, Any]]]] = []
        for count in (sizes.w8_small, sizes.w8_large):
            history = self.items_cache.get(f"w8n{count}", count)
            session = await self.open(f"w8-{count}")
            await self.prefill(session, history)
            self.cases.append((f"get 20 @{count:,}", session, history[-20:]))

    async def run_round(self, index: int, rec: Recorder) -> None:
        timed = [(rec.op(name), session, expected) for name, session, expected in self.cases]
        for _ in _share(self.sizes.w8_reads, self.sizes.rounds, index):
            for lat, session, expected in timed:
                t = perf_counter_ns()
                got = await session.get_items(20)
                lat.append(perf_counter_ns() - t)
                self.expect("newest 20", got, expected)

    async def verify(self) -> None:
        pass


class ItemCache:
    """Items are built once per workload and shared by all targets (building is not timed)."""

    def __init__(self) -> None:
        self._made: dict[str, list[dict[str, Any]]] = {}

    def get(self, tag: str, count: int) -> list[dict[str, Any]]:
        if tag not in self._made:
            self._made[tag] = make_items(tag, count)
        return self._made[tag]


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    run: type[WorkloadRun]
    # Under concurrency a turn's latency is mostly its wait in the queue, which depends on the
    # pool's fairness more than on the backend; compare wall time per operation instead.
    compare_throughput: bool = False
    # Uses what only agentmem's sessions have (exclusive()): runs on the agentmem targets.
    agentmem_only: bool = False


WORKLOADS = [
    Workload("W1", "append one item", W1AppendOne),
    Workload("W2", "append 50-item batches", W2AppendBatch),
    Workload("W3", "newest 20 of a long history", W3NewestOfLong),
    Workload("W4", "full read", W4FullRead),
    Workload("W5", "agent turn: read all, add 4", W5AgentTurn),
    Workload(
        "W6",
        "concurrent sessions: read newest 50, add 2",
        W6ConcurrentSessions,
        compare_throughput=True,
    ),
    Workload("W7", "pop", W7Pop),
    Workload("W8", "newest 20 at a short vs a long history", W8NewestBySize),
    Workload(
        "W10",
        "turn under the lock: exclusive, read all, add 4",
        W10TurnUnderLock,
        agentmem_only=True,
    ),
]
