"""A write whose reply is lost is never sent again: PostgreSQL behind a proxy that swallows the
server's reply to the write and then closes the connection (the server did the work; the client
cannot know)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from agentmem import SQLAlchemySession
from tests._proxy import Proxy
from tests.conftest import unique_id

pytestmark = pytest.mark.postgres


@pytest.fixture
async def via_proxy(postgres_url: str) -> AsyncIterator[tuple[Proxy, Any]]:
    """A proxy to the test PostgreSQL and an engine whose connections go through it."""
    url = make_url(postgres_url)
    proxy = Proxy(url.host or "127.0.0.1", url.port or 5432)
    await proxy.start()
    engine = create_async_engine(url.set(host="127.0.0.1", port=proxy.port), pool_size=1)
    yield proxy, engine
    await engine.dispose()
    await proxy.aclose()


@pytest.mark.parametrize("write", ["add", "pop", "clear"])
async def test_a_write_whose_reply_is_lost_is_not_resent(
    write: str, via_proxy: tuple[Proxy, Any], postgres_engine: Any
) -> None:
    proxy, engine = via_proxy
    session_id = unique_id("lost")
    a = SQLAlchemySession(engine, session_id)  # through the proxy
    b = SQLAlchemySession(postgres_engine, session_id)  # direct
    await b.add_items([{"n": 1}, {"n": 2}])
    # Warm A's one connection up (connected, each statement prepared) with the same writes.
    await a.add_items([{"n": "warm"}])
    assert await a.pop_item() == {"n": "warm"}
    warm = SQLAlchemySession(engine, unique_id("lost"))
    await warm.clear_session()
    call = {
        "add": lambda: a.add_items([{"n": 3}]),
        "pop": a.pop_item,
        "clear": a.clear_session,
    }[write]
    proxy.swallow_replies()
    task = asyncio.create_task(call())
    await asyncio.wait_for(proxy.swallowed.wait(), 60)  # the server has done it: the reply is lost
    # Meanwhile another client sees the write and adds an item; it is told it is stored.
    seen = await b.get_items()
    await b.add_items([{"n": "b"}])
    await proxy.cut()
    with pytest.raises(Exception) as raised:
        await asyncio.wait_for(task, 60)
    assert not isinstance(raised.value, TimeoutError)
    expected = {"add": [{"n": 1}, {"n": 2}, {"n": 3}], "pop": [{"n": 1}], "clear": []}[write]
    assert seen == expected
    # Applied once, and B's acknowledged item is still there.
    assert await b.get_items() == [*expected, {"n": "b"}]
    await b.clear_session()
