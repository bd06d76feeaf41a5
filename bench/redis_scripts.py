"""What a Redis write costs beyond the floor's one command: the server's time per call of the add
and pop scripts, whole and with parts taken out, and the client's CPU per call shape.

    python -m bench.redis_scripts [--url redis://127.0.0.1:6379/0] [--calls 3000] [--rounds 5]

Server time is ``INFO commandstats`` (``usec`` over ``calls`` of EVALSHA, RPUSH, RPOP), read
before and after each batch of pipelined calls: the statistics are never reset, but they are the
server's, so run it on a Redis that nothing else uses at the time (``redis-server --port N``).
The variants are the shipped scripts (agentmem/redis/_lifecycle.py) with parts cut out, for
measurement only: a session of one key pair, one item of about 130 bytes, no ttl, no owner.
Client CPU is the thread time per awaited call of redis.asyncio (hiredis parser if installed).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import orjson

from agentmem.redis import _lifecycle as lua

KEYS = ["agentmem-bench-scripts:m:{x}", "agentmem-bench-scripts:s:{x}"]
PREFIX = "agentmem-bench-scripts:s"
ITEM = orjson.dumps({"role": "user", "content": "hello there, how are you doing today? " * 3})
ADD_INDEX = "return indexed(1, ARGV[11], ARGV[4], ARGV[5], ARGV[1], expires, owner)"
POP_INDEX = "return indexed(item, ARGV[6]"
EXPIRE = "expire({KEYS[1], KEYS[2]}, ttl)"


def _cut(source: str, *pairs: tuple[str, str]) -> str | None:
    """``source`` with each ``old`` replaced by ``new``; ``None`` if one is not found (another
    version of the script: only the whole script is measured then)."""
    for old, new in pairs:
        if old not in source:
            return None
        source = source.replace(old, new)
    return source


def add_variants() -> dict[str, str | None]:
    no_index = (ADD_INDEX, "do return 1 end\n" + ADD_INDEX)
    no_ring = ("local recent = held[1] or ''", "local recent = ''")
    no_ring_write = ("recent = recent .. ARGV[9]", "recent = ''")
    return {
        "add script": lua.ADD_SOURCE,
        "  without the index update": _cut(lua.ADD_SOURCE, no_index),
        "  and without the ttl of both keys": _cut(lua.ADD_SOURCE, no_index, (EXPIRE, "")),
        "  and without the batch-id ring": _cut(
            lua.ADD_SOURCE, no_index, (EXPIRE, ""), no_ring, no_ring_write
        ),
        "RPUSH + HSET updated_at": "redis.call('RPUSH', KEYS[1], ARGV[12])\n"
        "redis.call('HSET', KEYS[2], 'updated_at', ARGV[1]) return 1",
        "RPUSH alone": "redis.call('RPUSH', KEYS[1], ARGV[12]) return 1",
        "return 1": "return 1",
    }


def pop_variants() -> dict[str, str | None]:
    no_index = (POP_INDEX, "do return item end\n" + POP_INDEX)
    return {
        "pop script": lua.POP_SOURCE,
        "  without the index update ": _cut(lua.POP_SOURCE, no_index),
        "  and without the ttl of both keys ": _cut(lua.POP_SOURCE, no_index, (EXPIRE, "")),
        "RPOP alone": "return redis.call('RPOP', KEYS[1])",
    }


def add_args() -> list[str | int | bytes]:
    return [f"{time.time():.6f}", 0, 0, PREFIX, "x", "", "", "", os.urandom(16), "", "1", ITEM]


def pop_args() -> list[str | int | bytes]:
    return [f"{time.time():.6f}", 0, PREFIX, "x", "", "1"]


def usec_per_call(client: Any, command: str, send: Callable[[Any], None], n: int) -> float:
    """Server µs per call of ``command`` over ``n`` calls sent 100 to a pipeline."""
    before = client.info("commandstats")[f"cmdstat_{command}"]
    for _ in range(0, n, 100):
        pipe = client.pipeline(transaction=False)
        for _ in range(100):
            send(pipe)
        pipe.execute()
    after = client.info("commandstats")[f"cmdstat_{command}"]
    return float(after["usec"] - before["usec"]) / (after["calls"] - before["calls"])


def server_table(client: Any, calls: int, rounds: int) -> None:
    def refill() -> None:
        client.delete(*KEYS)
        client.rpush(KEYS[0], *([ITEM] * (calls + 200)))
        client.hset(KEYS[1], "created_at", "1")

    # (names are the table's rows: the pop's variants end in a space to stay apart)
    cases: list[tuple[str, str, Callable[[Any], None], Callable[[], None]]] = []
    for variants, make_args, reset in (
        (add_variants(), add_args, lambda: client.delete(*KEYS)),
        (pop_variants(), pop_args, refill),
    ):
        for name, source in variants.items():
            if source is None:
                continue
            sha = client.script_load(source)

            def send(
                pipe: Any, sha: str = sha, make_args: Callable[[], list[Any]] = make_args
            ) -> None:
                pipe.evalsha(sha, 2, *KEYS, *make_args())

            cases.append((name, "evalsha", send, reset))
    cases.append(
        ("RPUSH (the floor's add)", "rpush", lambda p: p.rpush(KEYS[0], ITEM), lambda: None)
    )
    cases.append(("RPOP (the floor's pop)", "rpop", lambda p: p.rpop(KEYS[0]), refill))
    results: dict[str, list[float]] = {name: [] for name, *_ in cases}
    for _ in range(rounds):
        for name, command, send, reset in cases:
            reset()
            results[name].append(usec_per_call(client, command, send, calls))
    print(f"server µs per call, pipelined, {rounds} rounds of {calls} calls (min, median)")
    for name, values in results.items():
        print(f"  {name:36} {min(values):6.2f} {statistics.median(values):6.2f}")
    client.delete(*KEYS, f"{PREFIX}:all:{{all}}", f"{PREFIX}:all-expiry:{{all}}")


async def client_table(url: str, calls: int, rounds: int) -> None:
    import redis.asyncio as redis

    client = redis.Redis.from_url(url)
    one = await client.script_load("return 1")
    args = add_args()
    shapes = {
        "RPUSH key item (the floor's add)": lambda: client.rpush(KEYS[0], ITEM),
        "EVALSHA 'return 1', 0 keys, 1 arg": lambda: client.evalsha(one, 0, ITEM),
        "EVALSHA 'return 1', the add's 2 keys, 12 args": lambda: client.evalsha(
            one, 2, *KEYS, *args
        ),
    }
    results: dict[str, list[float]] = {name: [] for name in shapes}
    for _ in range(rounds):
        for name, call in shapes.items():
            start = time.thread_time()
            for _ in range(calls):
                await call()
            results[name].append((time.thread_time() - start) / calls * 1e6)
    print(f"client CPU µs per awaited call, {rounds} rounds of {calls} calls (min, median)")
    for name, values in results.items():
        print(f"  {name:46} {min(values):6.1f} {statistics.median(values):6.1f}")
    await client.delete(*KEYS)
    await client.aclose()


def main() -> None:
    import redis

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--url", default=os.environ.get("AGENTMEM_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args()
    server_table(redis.Redis.from_url(options.url), options.calls, options.rounds)
    asyncio.run(client_table(options.url, options.calls // 3 or 1, options.rounds))


if __name__ == "__main__":
    main()
