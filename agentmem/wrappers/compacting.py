"""Compaction for any agentmem session: the oldest whole turns replaced by one summary item.

:class:`CompactingSession` wraps a session of any backend and is a session itself. When the
history passes a threshold (a number of items, or of tokens by a counter you supply), the oldest
whole turns are replaced by the one item that your ``summarize(items)`` returns: any model, any
provider, or a plain function.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable

from agentmem.errors import CompactionError
from agentmem.session import (
    EncodedItem,
    Session,
    SessionABC,
    SessionItem,
    decode_item,
    encode_item,
)
from agentmem.windows import resolve_window_mode

if TYPE_CHECKING:
    from agentmem.manager import SessionManagerABC

__all__ = ["CompactingSession", "StoredForm", "Summarize", "turn_starts"]

Summarize = Callable[[list[SessionItem]], Awaitable[SessionItem]]
"""``async summarize(items) -> item``: one item that stands for ``items`` (oldest first)."""

_REPLACE_ATTEMPTS: Final = 5


@runtime_checkable
class StoredForm(Protocol):
    """A wrapper whose items are stored in another form (:class:`agentmem.EncryptedSession`):
    what the compaction's swap, which reads and writes the store, converts through."""

    def seal_items(self, items: list[SessionItem]) -> list[Any]:
        """``items`` as stored."""
        ...

    def open_items(self, stored: list[Any]) -> list[SessionItem]:
        """The items ``stored`` holds."""
        ...


def turn_starts(items: list[SessionItem]) -> list[int]:
    """The indexes of the items that start a turn: the user's messages (``role == "user"``).

    A turn runs from one user message to the next, so it holds every tool call of that turn
    with its output: cutting at a turn's start never splits a call from its output.
    """
    return [
        i for i, item in enumerate(items) if isinstance(item, dict) and item.get("role") == "user"
    ]


def _positive(name: str, value: object) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int or None, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    return value


class CompactingSession(SessionABC):
    """Any agentmem session whose oldest whole turns are replaced by a summary item when the
    history passes a threshold.

    Example::

        async def summarize(items):
            result = await Runner.run(summarizer, [*items, {"role": "user", "content": ASK}])
            return {"role": "assistant", "content": f"Summary so far: {result.final_output}"}

        manager = SQLiteSessionManager("conversations.db")
        session = CompactingSession(
            manager.get_session("user_123"), manager=manager, summarize=summarize,
            max_items=40, keep_last_turns=3,
        )

    After each ``add_items`` the history is checked; past ``max_items`` items (or
    ``max_tokens`` by ``count_tokens``), every turn but the last ``keep_last_turns`` is given to
    ``summarize`` (a previous summary first among them) and replaced by the item it returns, in
    one atomic write of the whole history by ``manager``. If ``summarize`` raises, the history is
    left as it was and :class:`CompactionError` is raised (the items of that ``add_items`` are
    stored). With ``archive``, the replaced items are appended to that session first (if the
    swap then fails, a retry archives them again).

    Around an :class:`agentmem.EncryptedSession` (put the compaction outside the encryption)
    ``summarize`` gets the decrypted items and the summary is stored encrypted.

    The swap is a compare-and-swap: ``inner.replace_items(..., if_newest=history)`` replaces the
    whole history in one transaction (one script on Redis) only while it still holds exactly
    the history that was read; if another writer changed it meanwhile, the history is read again
    and the swap retried while the summarized items are still its oldest (items appended
    meanwhile are kept after the summary). No concurrent write is ever lost.

    Args:
        inner: The session that stores the history.
        summarize: ``async (items) -> item``.
        manager: The manager of ``inner``'s store (it reads the whole history).
        max_items: Compact when the history holds more items than this.
        max_tokens: Compact when ``count_tokens(history)`` is more than this.
        count_tokens: ``(items) -> int``, needed with ``max_tokens``.
        keep_last_turns: The newest turns kept as they are (at least 1).
        archive: A session the replaced items are appended to before each swap.

    Raises:
        TypeError, ValueError: no threshold, a bad number, or ``max_tokens`` without
            ``count_tokens``.
    """

    def __init__(
        self,
        inner: Session,
        *,
        summarize: Summarize,
        manager: SessionManagerABC[Any],
        max_items: int | None = None,
        max_tokens: int | None = None,
        count_tokens: Callable[[list[SessionItem]], int] | None = None,
        keep_last_turns: int = 2,
        archive: Session | None = None,
    ) -> None:
        self.max_items = _positive("max_items", max_items)
        self.max_tokens = _positive("max_tokens", max_tokens)
        kept = _positive("keep_last_turns", keep_last_turns)
        if kept is None:
            raise TypeError("keep_last_turns must be an int")
        if self.max_items is None and self.max_tokens is None:
            raise ValueError("give max_items or max_tokens: when to compact")
        if self.max_tokens is not None and count_tokens is None:
            raise ValueError("max_tokens needs count_tokens, the function that counts them")
        if not isinstance(inner, SessionABC):
            raise TypeError(
                "inner must be an agentmem session: the summary is swapped in with its "
                f"replace_items(), got {type(inner).__name__}"
            )
        super().__init__(inner.session_id, inner.session_settings)
        self.window_mode = getattr(inner, "window_mode", "items")
        self.inner = inner
        self.summarize = summarize
        self.manager = manager
        self.count_tokens = count_tokens
        self.keep_last_turns = kept
        self.archive = archive
        self._lock = asyncio.Lock()

    async def get_items(
        self,
        limit: int | None = None,
        *,
        whole_pairs: bool | None = None,
        whole_turns: bool | None = None,
    ) -> list[SessionItem]:
        self._check_open()
        mode = resolve_window_mode(whole_pairs, whole_turns, self.window_mode)
        if isinstance(self.inner, SessionABC):
            return await self.inner.get_items(
                limit, whole_pairs=mode != "items", whole_turns=mode == "turns"
            )
        return await self.inner.get_items(limit)

    async def add_items(self, items: list[SessionItem]) -> None:
        """Append ``items``, then compact if the history passed the threshold.

        Raises:
            TypeError, ValueError: an item is not a JSON object; nothing is written.
            CompactionError: ``summarize`` failed or returned no item; ``items`` are stored,
                the history is otherwise unchanged.
        """
        self._check_open()
        async with self._lock:
            await self.inner.add_items(items)
            if items:
                await self._compact()

    async def pop_item(self) -> SessionItem | None:
        self._check_open()
        async with self._lock:
            return await self.inner.pop_item()

    async def clear_session(self) -> None:
        self._check_open()
        async with self._lock:
            await self.inner.clear_session()

    async def _replace(
        self, items: list[EncodedItem], newest: int | None, expected: list[SessionItem] | None
    ) -> bool:
        """Replaced in the wrapped session, which must offer ``replace_items`` (every agentmem
        session does)."""
        replace = getattr(self.inner, "replace_items", None)
        if replace is None:
            raise NotImplementedError(f"{type(self.inner).__name__} has no replace_items")
        async with self._lock:
            replaced = await replace(
                [decode_item(item.json) for item in items], newest=newest, if_newest=expected
            )
        return bool(replaced)

    async def compact(self) -> bool:
        """Compact now if the history is past the threshold; whether it was compacted.

        Raises:
            CompactionError: ``summarize`` failed or returned no item; nothing changed.
        """
        self._check_open()
        async with self._lock:
            return await self._compact()

    def _over(self, items: list[SessionItem]) -> bool:
        if self.max_items is not None and len(items) > self.max_items:
            return True
        return (
            self.max_tokens is not None
            and self.count_tokens is not None
            and self.count_tokens(items) > self.max_tokens
        )

    def _cut(self, items: list[SessionItem]) -> int:
        """How many of the oldest items to summarize: every turn but the kept ones."""
        starts = turn_starts(items)
        if len(starts) <= self.keep_last_turns:
            return 0
        return starts[-self.keep_last_turns]

    async def _compact(self) -> bool:
        # Without a token count, the newest max_items + 1 items tell whether it is passed.
        if (
            self.max_items is not None
            and self.max_tokens is None
            and len(await self.inner.get_items(self.max_items + 1)) <= self.max_items
        ):
            return False
        conversation = await self.manager.read_conversation(self.session_id)
        if conversation is None:
            return False
        history = self._open(conversation.items)
        if not self._over(history):
            return False
        cut = self._cut(history)
        if cut < 2:  # nothing to gain: one item would be replaced by one
            return False
        try:
            summary = await self.summarize(history[:cut])
            encode_item(summary)
        except Exception as exc:
            raise CompactionError(
                f"summarize failed for session {self.session_id!r}; the history is unchanged: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if self.archive is not None:
            await self.archive.add_items(history[:cut])
        inner = self.inner
        assert isinstance(inner, SessionABC)  # checked at construction
        for _ in range(_REPLACE_ATTEMPTS):
            # A compare-and-swap of the whole history (one transaction or script): it is
            # replaced only while it holds exactly the history read, so a concurrent writer
            # never loses an item; items added meanwhile are kept after the summary next time.
            if await inner.replace_items(
                [summary, *history[cut:]], newest=len(history), if_newest=history
            ):
                return True
            conversation = await self.manager.read_conversation(self.session_id)
            if conversation is None:
                return False
            current = self._open(conversation.items)
            if current[:cut] != history[:cut]:
                return False  # cleared, popped into, or compacted by another writer meanwhile
            history = current
        raise CompactionError(
            f"session {self.session_id!r} changed during each of {_REPLACE_ATTEMPTS} attempts "
            "to swap in its summary; the history is unchanged"
        )

    def _open(self, stored: list[Any]) -> list[SessionItem]:
        return self.inner.open_items(stored) if isinstance(self.inner, StoredForm) else stored

    async def _close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            await close()

    def __repr__(self) -> str:
        return f"CompactingSession({self.inner!r}, max_items={self.max_items!r})"
