"""A TCP proxy in the test's event loop, between a client and a real server on this machine,
that a test can tell to lose replies or to refuse connections: the faults no client can tell
apart from a network's."""

from __future__ import annotations

import asyncio
import contextlib


class Proxy:
    """Forwards every connection on a free loopback port to ``host:port`` both ways.

    ``swallow_replies()`` makes it drop whatever the server sends from then on (the server has
    done the work; the client never hears of it) until ``cut()`` closes every connection.
    ``refuse()`` closes them and stops listening, so new connections are refused.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = 0
        self._upstream_port = port
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._swallowing = False
        self.swallowed = asyncio.Event()
        """Set once a reply has been dropped."""

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def swallow_replies(self) -> None:
        self.swallowed.clear()
        self._swallowing = True

    async def cut(self) -> None:
        """Close every open connection (both sides); new ones are forwarded normally."""
        self._swallowing = False
        writers, self._writers = self._writers, set()
        for writer in writers:
            writer.close()
        for writer in writers:
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def refuse(self) -> None:
        """Stop listening and close every connection: connecting fails from now on."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        await self.cut()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(self.host, self._upstream_port)
        except OSError:
            client_w.close()
            return
        self._writers.update((client_w, server_w))
        await asyncio.gather(
            self._pump(client_r, server_w, replies=False),
            self._pump(server_r, client_w, replies=True),
            return_exceptions=True,
        )
        for writer in (client_w, server_w):
            writer.close()
            self._writers.discard(writer)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, replies: bool
    ) -> None:
        try:
            while data := await reader.read(65536):
                if replies and self._swallowing:
                    self.swallowed.set()
                    continue
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def aclose(self) -> None:
        await self.refuse()
