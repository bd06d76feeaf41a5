"""Every ```python block of README.md runs as written.

How a block runs (each in a fresh namespace, in README order, in one scratch directory where its
SQLite files land):

- A block with a top-level ``await`` is the body of a coroutine run in an event loop, as it runs in
  a notebook or inside any async function. Any other block runs as a script: in a thread with no
  running event loop (``Runner.run_sync`` works there, as in a plain script).
- The prelude: the names the README's snippets use without defining them, and only those. The
  README says later snippets continue the quick start: ``agent`` and ``Runner`` are the quick
  start's, ``engine`` the SQL application engine (here on the test suite's PostgreSQL database).
  ``session`` and ``items`` are the interface summary's placeholders (a ``SQLiteSession`` in memory
  and one message), ``my_redis`` is "your ``redis.asyncio.Redis``".
- Servers and ids: the connection URLs a snippet names (``POSTGRES_URLS``, ``REDIS_URLS``) become
  the test suite's servers, and the session ids the README uses (``IDS``) become ids unique to
  this run, so runs never share data. Nothing else in a snippet is changed.
- The model: the OpenAI Agents SDK's default model provider answers with agentmem's offline demo
  model, so an ``Agent`` written as in the README (no ``model=``) runs without a key or network.

A block that must not run is preceded by ``<!-- no-test: the reason -->`` on the line before its
fence; use it sparingly.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import re
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import REDIS_URL, server_unavailable

README = Path(__file__).resolve().parent.parent / "README.md"
TOKEN = uuid.uuid4().hex[:12]
IDS = {name: f"{name}-{TOKEN}" for name in ("user_123", "user_456", "conversation_123")}
POSTGRES_URLS = ("postgresql+asyncpg://app@db/app", "postgresql://app@db/app")
REDIS_URLS = ("redis://localhost:6379",)
NO_TEST = re.compile(r"<!--\s*no-test:\s*(?P<reason>\S.*?)\s*-->")


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence
    source: str

    @property
    def needs_postgres(self) -> bool:
        return any(url in self.source for url in POSTGRES_URLS) or uses(self.source, "engine")

    @property
    def needs_redis(self) -> bool:
        return "Redis" in self.source or any(url in self.source for url in REDIS_URLS)


def uses(source: str, name: str) -> bool:
    return re.search(rf"\b{name}\b", source) is not None


def python_blocks(text: str) -> list[Block]:
    """The README's ```python blocks, less those marked ``no-test`` (which must give a reason)."""
    blocks: list[Block] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        if lines[index].strip() != "```python":
            index += 1
            continue
        end = lines.index("```", index + 1)
        marker = lines[index - 1] if index else ""
        if "no-test" not in marker:
            blocks.append(Block(index + 1, "\n".join(lines[index + 1 : end]) + "\n"))
        else:
            assert NO_TEST.fullmatch(marker.strip()), f"README.md:{index}: no-test needs a reason"
        index = end + 1
    return blocks


def params() -> list[Any]:
    """One test per block, marked with the servers it needs."""
    cases = []
    for block in python_blocks(README.read_text(encoding="utf-8")):
        marks = [pytest.mark.postgres] if block.needs_postgres else []
        marks += [pytest.mark.redis] if block.needs_redis else []
        marks = marks or [pytest.mark.sqlite]
        cases.append(pytest.param(block, marks=marks, id=f"README.md:{block.line}"))
    return cases


def concrete(source: str, servers: dict[str, str]) -> str:
    """The snippet with the test suite's servers and this run's session ids put in."""
    for placeholder, real in servers.items():
        source = source.replace(placeholder, real)
    for name, unique in IDS.items():
        source = source.replace(f'"{name}"', f'"{unique}"')
    return source


async def close_all(namespace: dict[str, Any], extra: list[Any]) -> None:
    """Close what a snippet (or its prelude) left open: sessions, managers, engines, clients."""
    from redis.asyncio import Redis
    from sqlalchemy.ext.asyncio import AsyncEngine

    from agentmem import RedisSessionManager, SessionABC

    objects = [*namespace.values(), *extra]
    for value in objects:
        if isinstance(value, SessionABC | RedisSessionManager):
            await value.close()
    for value in objects:
        if isinstance(value, AsyncEngine):
            await value.dispose()
        elif isinstance(value, Redis):
            await value.aclose()


def prelude(source: str, postgres_url: str | None) -> dict[str, Any]:
    """The prelude's names that ``source`` uses."""
    from agents import Agent, Runner

    from agentmem import SQLiteSession

    factories: dict[str, Callable[[], Any]] = {
        "agent": lambda: Agent(name="Assistant", instructions="Reply very concisely."),
        "Runner": lambda: Runner,
        "session": lambda: SQLiteSession(f"placeholder-{TOKEN}"),
        "items": lambda: [{"role": "user", "content": "Hello"}],
    }
    if postgres_url is not None:
        from sqlalchemy.ext.asyncio import create_async_engine

        factories["engine"] = lambda: create_async_engine(postgres_url)
    if uses(source, "my_redis"):
        from redis.asyncio import Redis

        factories["my_redis"] = lambda: Redis.from_url(REDIS_URL)
    return {name: make() for name, make in factories.items() if uses(source, name)}


def run_block(source: str, name: str, postgres_url: str | None) -> None:
    """Run one snippet as the README reader would (see the module docstring)."""
    code = compile(source, name, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    given = prelude(source, postgres_url)
    namespace: dict[str, Any] = {"__name__": "__main__", **given}
    if code.co_flags & inspect.CO_COROUTINE:

        async def body() -> None:
            try:
                await eval(code, namespace)
            finally:
                await close_all(namespace, list(given.values()))

        asyncio.run(body())
        return
    loop = asyncio.new_event_loop()  # the thread's default loop, as a script's main thread has
    asyncio.set_event_loop(loop)
    try:
        try:
            exec(code, namespace)
        finally:
            loop.run_until_complete(close_all(namespace, list(given.values())))
    finally:
        asyncio.set_event_loop(None)
        loop.close()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("readme")


@pytest.fixture
def offline_model(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The SDK's default model provider answers with agentmem's offline demo model."""
    from agents import set_tracing_disabled
    from agents.models.multi_provider import MultiProvider

    from agentmem.cli._demo import OfflineModel

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setattr(MultiProvider, "get_model", lambda self, name: OfflineModel())
    set_tracing_disabled(True)
    yield
    set_tracing_disabled(False)


@pytest.fixture
def redis_cleanup(request: pytest.FixtureRequest) -> Iterator[None]:
    """Check Redis is there; delete the keys of this run's ids afterwards."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        client.close()
        server_unavailable(f"Redis at {REDIS_URL}", exc)
    yield
    keys = list(client.scan_iter(match=f"*{TOKEN}*", count=1000))
    if keys:
        client.unlink(*keys)
    client.close()


def test_readme_has_python_blocks() -> None:
    assert len(python_blocks(README.read_text(encoding="utf-8"))) >= 5


def test_a_block_marked_no_test_is_left_out_and_needs_a_reason() -> None:
    text = "```python\nrun()\n```\n<!-- no-test: needs a GPU -->\n```python\nskip()\n```\n"
    assert python_blocks(text) == [Block(1, "run()\n")]
    with pytest.raises(AssertionError, match="no-test needs a reason"):
        python_blocks("<!-- no-test -->\n```python\nskip()\n```\n")


@pytest.mark.usefixtures("offline_model")
@pytest.mark.parametrize("block", params())
def test_readme_python_block_runs_as_written(
    block: Block, workdir: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    servers: dict[str, str] = {}
    postgres_url = None
    if block.needs_postgres:
        postgres_url = request.getfixturevalue("postgres_url")
        plain = postgres_url.replace("postgresql+asyncpg://", "postgresql://", 1)
        servers |= {POSTGRES_URLS[0]: postgres_url, POSTGRES_URLS[1]: plain}
    if block.needs_redis:
        request.getfixturevalue("redis_cleanup")
        server = urlsplit(REDIS_URL)._replace(path="").geturl()  # the db stays the snippet's
        servers |= dict.fromkeys(REDIS_URLS, server)
    monkeypatch.chdir(workdir)
    source = concrete(block.source, servers)
    with ThreadPoolExecutor(1) as thread:  # no running event loop there
        thread.submit(run_block, source, f"README.md:{block.line}", postgres_url).result()
