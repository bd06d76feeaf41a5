"""``AdvancedSession``: conversation branches, turn queries and usage tracking on any store.

The OpenAI Agents SDK's ``AdvancedSQLiteSession`` API over any agentmem session that can fork
(SQLite, SQLAlchemy/PostgreSQL, Redis, cached), built on public session methods only:

- **Turns** are computed from the items: a turn starts at a user message (``role == "user"``);
  the n-th user message of a branch opens turn n, items before the first user message are
  turn 0.
- **Branches**: ``"main"`` is the wrapped session itself; branch ``name`` is the session
  ``f"{session_id}::branch::{name}"`` on the same store, made by :meth:`SessionABC.fork`.
- **Bookkeeping** (branch names used, usage per turn, clears) is an append-only log of JSON
  records in the sibling session ``f"{session_id}::advanced"`` on the same store.

The derived ids count against the 255-character id limit: creating a branch whose id would be
longer raises ``ValueError``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from os import PathLike
from typing import Any, Protocol, Self, runtime_checkable

from agentmem.forks import ForkOrigin, ItemCursor
from agentmem.items import MAX_SESSION_ID_LENGTH, EncodedItem, SessionItem, decode_item
from agentmem.session import SessionABC

__all__ = [
    "MAIN_BRANCH",
    "AdvancedSession",
    "BranchableSession",
    "message_type",
    "tool_name",
    "turn_numbers",
]

MAIN_BRANCH = "main"
_BRANCH_INFIX = "::branch::"
_LOG_SUFFIX = "::advanced"
_RECORD = "agentmem_advanced"

# Item types the SDK's tool usage counts as one call each (``shell_call`` and
# ``apply_patch_call`` fall back to their type when they carry no tool name).
_TOOL_CALL_TYPES = frozenset(
    {
        "tool_call",
        "function_call",
        "computer_call",
        "file_search_call",
        "web_search_call",
        "code_interpreter_call",
        "tool_search_call",
        "custom_tool_call",
        "mcp_call",
        "mcp_approval_request",
        "shell_call",
        "apply_patch_call",
    }
)
_NAMED_BY_TYPE = frozenset(
    {
        "computer_call",
        "file_search_call",
        "web_search_call",
        "code_interpreter_call",
        "shell_call",
        "apply_patch_call",
    }
)


@runtime_checkable
class BranchableSession(Protocol):
    """What :class:`AdvancedSession` needs of the session it wraps: every agentmem session."""

    session_id: str
    session_settings: Any

    async def get_items(
        self,
        limit: int | None = None,
        *,
        whole_pairs: bool | None = None,
        whole_turns: bool | None = None,
    ) -> list[SessionItem]: ...

    async def add_items(self, items: list[SessionItem]) -> None: ...

    async def pop_item(self) -> SessionItem | None: ...

    async def clear_session(self) -> None: ...

    async def replace_items(
        self,
        items: list[SessionItem],
        *,
        newest: int | None = None,
        if_newest: list[SessionItem] | None = None,
    ) -> bool: ...

    async def fork(self, session_id: str, upto: ItemCursor | str | None = None) -> Any: ...

    async def fork_origin(self) -> ForkOrigin | None: ...

    def with_id(self, session_id: str) -> Any: ...

    async def close(self) -> None: ...


def _now() -> str:
    """A UTC timestamp in the form SQLite's ``CURRENT_TIMESTAMP`` gives."""
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _is_user(item: Any) -> bool:
    return isinstance(item, dict) and item.get("role") == "user"


def message_type(item: Any) -> str:
    """The kind of an item as the SDK's advanced session records it: ``"user"``,
    ``"assistant"``, the item's ``type``, else ``"other"``."""
    if isinstance(item, dict):
        if item.get("role") in ("user", "assistant"):
            return str(item["role"])
        if item.get("type"):
            return str(item["type"])
    return "other"


def tool_name(item: Any) -> str | None:
    """The tool an item calls or answers, named as the SDK's advanced session names it."""
    if not isinstance(item, dict):
        return None
    item_type = item.get("type")
    if item_type in ("mcp_call", "mcp_approval_request") and "server_label" in item:
        label, name = item.get("server_label"), item.get("name")
        if name and label:
            return f"{label}.{name}"
        return str(label) if label else (str(name) if name else None)
    if item_type in ("tool_search_call", "tool_search_output"):
        return "tool_search"
    if item_type in _NAMED_BY_TYPE:
        return str(item_type)
    if "name" in item:
        name, namespace = item.get("name"), item.get("namespace")
        if name is None:
            return None
        name_text = str(name)
        namespace_text = None if namespace is None else str(namespace)
        if name_text and namespace_text and namespace_text != name_text:
            return f"{namespace_text}.{name_text}"
        return name_text
    return None


def turn_numbers(items: Sequence[Any]) -> list[int]:
    """The turn of each item: how many user messages lie at or before it."""
    turns: list[int] = []
    turn = 0
    for item in items:
        if _is_user(item):
            turn += 1
        turns.append(turn)
    return turns


def _preview(content: Any, max_length: int | None) -> str:
    text = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
    if max_length is not None and len(text) > max_length:
        return text[:max_length] + "..."
    return text


class _Ledger:
    """The state the bookkeeping log describes, folded from its records oldest first."""

    def __init__(self, records: Sequence[Any]) -> None:
        self.reserved: set[str] = {MAIN_BRANCH}
        self.live: dict[str, str | None] = {}  # branch -> created_at, in creation order
        self.usage: dict[tuple[str, int], dict[str, Any]] = {}
        self.clears = 0
        for record in records:
            if not isinstance(record, dict) or record.get(_RECORD) is None:
                continue
            kind = record[_RECORD]
            branch: Any = record.get("branch")
            if kind == "branch":
                self.reserved.add(branch)
                self.live[branch] = record.get("at")
            elif kind == "delete":
                self.live.pop(branch, None)
                self.usage = {k: v for k, v in self.usage.items() if k[0] != branch}
            elif kind == "usage":
                self.usage[(branch, record["turn"])] = record
            elif kind == "drop_usage":
                self.usage.pop((branch, record["turn"]), None)
            elif kind == "clear":
                self.live.clear()
                self.usage.clear()
                self.clears += 1


class AdvancedSession(SessionABC):
    """The OpenAI Agents SDK's ``AdvancedSQLiteSession`` API on any agentmem session.

    Wraps an agentmem session (``AdvancedSession(RedisSession(...))``,
    ``AdvancedSession(manager.get_session("id"))``) or, given no session, opens an agentmem
    :class:`~agentmem.SQLiteSession` with the SDK's keyword arguments
    (``AdvancedSession(session_id=..., db_path=...)``). The session protocol methods act on the
    current branch. ``close()`` closes the wrapped session too.

    Args:
        session: The agentmem session to wrap: its history is the ``"main"`` branch.
        session_id: Without ``session``: the id of the SQLite session to open.
        db_path: Without ``session``: the SQLite file (default in memory).
        create_tables: Accepted for the SDK's signature; agentmem creates its schema itself.
        logger: The logger of branch and usage messages (default this module's).
        session_settings: Without ``session``: the SDK's ``SessionSettings`` (or a dict).
        **kwargs: Without ``session``: more options of :class:`~agentmem.SQLiteSession`.

    Raises:
        TypeError: ``session`` cannot fork, or both or neither of ``session`` and
            ``session_id`` were given.
    """

    def __init__(
        self,
        session: BranchableSession | None = None,
        *,
        session_id: str | None = None,
        db_path: str | PathLike[str] = ":memory:",
        create_tables: bool = False,
        logger: logging.Logger | None = None,
        session_settings: Any = None,
        **kwargs: Any,
    ) -> None:
        del create_tables
        if session is None:
            if session_id is None:
                raise TypeError("AdvancedSession needs a session to wrap or a session_id")
            from agentmem.sql.sqlite import SQLiteSession

            session = SQLiteSession(
                session_id, db_path, session_settings=session_settings, **kwargs
            )
        elif session_id is not None or session_settings is not None or kwargs:
            raise TypeError("pass either a session to wrap or the SQLite session's arguments")
        if not isinstance(session, BranchableSession):
            raise TypeError(
                f"AdvancedSession wraps an agentmem session that can fork, "
                f"got {type(session).__name__}"
            )
        super().__init__(session.session_id, session.session_settings)
        self.window_mode = getattr(session, "window_mode", "items")
        self.inner = session
        self._logger = logger if logger is not None else logging.getLogger(__name__)
        self._log_session: BranchableSession | None = None
        self._branches: dict[str, BranchableSession] = {MAIN_BRANCH: session}
        self._current = MAIN_BRANCH
        self._clears_seen: int | None = None
        self._lock = asyncio.Lock()

    @property
    def db_path(self) -> Any:
        """The wrapped session's ``db_path`` (a SQLite session's file), else ``None``."""
        return getattr(self.inner, "db_path", None)

    # --- ids and the bookkeeping log -------------------------------------------------------

    def _derived_id(self, suffix: str) -> str:
        derived = self.session_id + suffix
        if len(derived) > MAX_SESSION_ID_LENGTH:
            raise ValueError(
                f"the derived session id {derived[:40]!r}... is {len(derived)} characters long; "
                f"the maximum is {MAX_SESSION_ID_LENGTH} (shorten the session id or branch name)"
            )
        return derived

    def branch_session_id(self, branch_id: str) -> str:
        """The id of the session that holds branch ``branch_id`` on the wrapped store."""
        if branch_id == MAIN_BRANCH:
            return self.session_id
        return self._derived_id(_BRANCH_INFIX + branch_id)

    def _branch(self, branch_id: str) -> BranchableSession:
        session = self._branches.get(branch_id)
        if session is None:
            session = self.inner.with_id(self.branch_session_id(branch_id))
            self._branches[branch_id] = session
        return session

    @property
    def _log(self) -> BranchableSession:
        """The bookkeeping session, opened on first use (a session whose id leaves no room for
        the suffix works, without branches or usage)."""
        if self._log_session is None:
            self._log_session = self.inner.with_id(self._derived_id(_LOG_SUFFIX))
        return self._log_session

    async def _ledger(self) -> _Ledger:
        """The bookkeeping state; follows a clear made elsewhere back to ``"main"``."""
        ledger = _Ledger(await self._log.get_items(None))
        if self._clears_seen is not None and ledger.clears != self._clears_seen:
            self._current = MAIN_BRANCH
        self._clears_seen = ledger.clears
        return ledger

    async def _record(self, kind: str, **fields: Any) -> None:
        await self._log.add_items([{_RECORD: kind, **fields}])

    @property
    def _has_log(self) -> bool:
        """Whether the bookkeeping session's id fits (else there are no branches or usage)."""
        return len(self.session_id + _LOG_SUFFIX) <= MAX_SESSION_ID_LENGTH

    async def _current_branch(self) -> str:
        if self._current != MAIN_BRANCH:
            await self._ledger()
        return self._current

    async def _read_branch(self, branch_id: str | None) -> str:
        return await self._current_branch() if branch_id is None else branch_id

    # --- the session protocol, on the current branch ---------------------------------------

    async def get_items(
        self,
        limit: int | None = None,
        branch_id: str | None = None,
        *,
        whole_pairs: bool | None = None,
        whole_turns: bool | None = None,
    ) -> list[SessionItem]:
        """The history of the current branch (or ``branch_id``), oldest first.

        Args:
            limit: As :meth:`SessionABC.get_items`.
            branch_id: The branch to read (default the current one).
            whole_pairs: As :meth:`SessionABC.get_items`.
            whole_turns: As :meth:`SessionABC.get_items`.
        """
        self._check_open()
        branch = self._branch(await self._read_branch(branch_id))
        return await branch.get_items(limit, whole_pairs=whole_pairs, whole_turns=whole_turns)

    async def add_items(self, items: list[SessionItem]) -> None:
        """Append ``items`` to the current branch."""
        self._check_open()
        await self._branch(await self._current_branch()).add_items(items)

    async def pop_item(self) -> SessionItem | None:
        """Remove and return the newest item of the current branch; a turn it empties loses
        its usage record."""
        self._check_open()
        async with self._lock:
            branch_id = await self._current_branch()
            branch = self._branch(branch_id)
            item = await branch.pop_item()
            if item is None:
                return None
            if not self._has_log:
                return item
            remaining = await branch.get_items(None)
            users_left = sum(1 for kept in remaining if _is_user(kept))
            if _is_user(item):
                await self._record("drop_usage", branch=branch_id, turn=users_left + 1)
            elif not remaining:
                await self._record("drop_usage", branch=branch_id, turn=0)
            return item

    async def clear_session(self) -> None:
        """Remove every branch's items and all usage; back to ``"main"``. Branch names used
        stay reserved."""
        self._check_open()
        async with self._lock:
            records = await self._log.get_items(None) if self._has_log else []
            if not records:  # never branched nor tracked: nothing to tell other objects
                await self.inner.clear_session()
                return
            ledger = _Ledger(records)
            for branch_id in ledger.live:
                await self._branch(branch_id).clear_session()
            await self.inner.clear_session()
            await self._record("clear", at=_now())
            self._clears_seen = ledger.clears + 1
            self._current = MAIN_BRANCH

    async def _replace(
        self, items: list[EncodedItem], newest: int | None, expected: list[SessionItem] | None
    ) -> bool:
        """Replaced in the current branch's session (see :meth:`SessionABC.replace_items`)."""
        branch = self._branch(await self._current_branch())
        return await branch.replace_items(
            [decode_item(item.json) for item in items], newest=newest, if_newest=expected
        )

    async def fork(self, session_id: str, upto: ItemCursor | str | None = None) -> Self:
        """Fork the current branch into session ``session_id`` and wrap it (see
        :meth:`SessionABC.fork`); the new session starts with no branches or usage."""
        self._check_open()
        forked = await self._branch(await self._current_branch()).fork(session_id, upto)
        return type(self)(forked, logger=self._logger)

    async def fork_origin(self) -> ForkOrigin | None:
        """Where the wrapped session was forked from."""
        self._check_open()
        return await self.inner.fork_origin()

    async def _close(self) -> None:
        for branch in self._branches.values():
            await branch.close()
        if self._log_session is not None:
            await self._log_session.close()

    # --- branches ---------------------------------------------------------------------------

    async def get_current_branch(self) -> str:
        """The id of the current branch (``"main"`` until a switch or a new branch)."""
        self._check_open()
        return await self._current_branch()

    async def create_branch_from_turn(
        self, turn_number: int, branch_name: str | None = None
    ) -> str:
        """Copy the current branch's turns before ``turn_number`` into a new branch and switch
        to it.

        Args:
            turn_number: The turn (its user message) the new branch replaces.
            branch_name: The new branch's id; generated when ``None``. A name used before in
                this session, even by a deleted branch, is refused.

        Returns:
            The new branch's id.

        Raises:
            ValueError: the turn has no user message on the current branch, ``branch_name`` is
                blank or was used before, or the branch's session id would be too long.
        """
        self._check_open()
        if branch_name is not None and not branch_name.strip():
            raise ValueError("Branch name cannot be empty")
        async with self._lock:
            ledger = await self._ledger()
            source_id = self._current
            items = await self._branch(source_id).get_items(None)
            turns = turn_numbers(items)
            start = next(
                (i for i, item in enumerate(items) if _is_user(item) and turns[i] == turn_number),
                None,
            )
            if start is None:
                raise ValueError(
                    f"Turn {turn_number} does not contain a user message in branch '{source_id}'"
                )
            if branch_name is None:
                base = f"branch_from_turn_{turn_number}_{int(time.time())}"
                branch_name, suffix = base, 1
                while branch_name in ledger.reserved:
                    suffix += 1
                    branch_name = f"{base}_{suffix}"
            elif branch_name in ledger.reserved:
                raise ValueError(
                    f"Branch ID '{branch_name}' has already been used. Choose a new branch ID."
                )
            target_id = self.branch_session_id(branch_name)
            forked = await self._branch(source_id).fork(target_id, ItemCursor.first(start))
            stale = self._branches.pop(branch_name, None)
            if stale is not None:
                await stale.close()
            self._branches[branch_name] = forked
            await self._record("branch", branch=branch_name, at=_now())
            self._current = branch_name
        self._logger.debug(
            "Created branch '%s' from turn %s in '%s'", branch_name, turn_number, source_id
        )
        return branch_name

    async def create_branch_from_content(
        self, search_term: str, branch_name: str | None = None
    ) -> str:
        """:meth:`create_branch_from_turn` at the first user turn that contains
        ``search_term``.

        Raises:
            ValueError: no user turn contains it, or as :meth:`create_branch_from_turn`.
        """
        matches = await self.find_turns_by_content(search_term)
        if not matches:
            raise ValueError(f"No user turns found containing '{search_term}'")
        return await self.create_branch_from_turn(matches[0]["turn"], branch_name)

    async def switch_to_branch(self, branch_id: str) -> None:
        """Make ``branch_id`` the current branch.

        Raises:
            ValueError: the branch holds no items (or never existed).
        """
        self._check_open()
        async with self._lock:
            ledger = await self._ledger()
            if (branch_id != MAIN_BRANCH and branch_id not in ledger.live) or not (
                await self._branch(branch_id).get_items(1)
            ):
                raise ValueError(f"Branch '{branch_id}' does not exist")
            old, self._current = self._current, branch_id
        self._logger.info("Switched from branch '%s' to '%s'", old, branch_id)

    async def delete_branch(self, branch_id: str, force: bool = False) -> None:
        """Delete a branch's items and usage; its id stays reserved.

        Args:
            branch_id: The branch to delete (never ``"main"``).
            force: Allow deleting the current branch (switching to ``"main"`` first).

        Raises:
            ValueError: ``branch_id`` is blank, ``"main"``, the current branch without
                ``force``, or holds no items.
        """
        self._check_open()
        if not branch_id or not branch_id.strip():
            raise ValueError("Branch ID cannot be empty")
        if branch_id == MAIN_BRANCH:
            raise ValueError("Cannot delete the 'main' branch")
        async with self._lock:
            ledger = await self._ledger()
            exists = branch_id in ledger.live and bool(await self._branch(branch_id).get_items(1))
            if branch_id == self._current:
                if not force:
                    raise ValueError(
                        f"Cannot delete current branch '{branch_id}'. "
                        "Use force=True or switch branches first"
                    )
                if not exists:
                    raise ValueError(f"Branch '{branch_id}' does not exist")
                self._current = MAIN_BRANCH
            if not exists:
                raise ValueError(f"Branch '{branch_id}' does not exist")
            await self._branch(branch_id).clear_session()
            await self._record("delete", branch=branch_id, at=_now())
        self._logger.info("Deleted branch '%s'", branch_id)

    async def list_branches(self) -> list[dict[str, Any]]:
        """The branches that hold items, ``"main"`` first, then in creation order.

        Returns:
            One dict per branch: ``branch_id``, ``message_count``, ``user_turns`` (user
            messages), ``is_current`` and ``created_at`` (when the branch was created, UTC,
            ``"YYYY-MM-DD HH:MM:SS"``; ``None`` for ``"main"``).
        """
        self._check_open()
        ledger = await self._ledger()
        current = self._current
        branches: list[dict[str, Any]] = []
        created: dict[str, str | None] = {MAIN_BRANCH: None, **ledger.live}
        for branch_id, created_at in created.items():
            items = await self._branch(branch_id).get_items(None)
            if items:
                branches.append(
                    {
                        "branch_id": branch_id,
                        "message_count": len(items),
                        "user_turns": sum(1 for item in items if _is_user(item)),
                        "is_current": branch_id == current,
                        "created_at": created_at,
                    }
                )
        return branches

    # --- turns ------------------------------------------------------------------------------

    async def _turns(self, branch_id: str | None) -> list[tuple[int, Any]]:
        self._check_open()
        items = await self._branch(await self._read_branch(branch_id)).get_items(None)
        return list(zip(turn_numbers(items), items, strict=True))

    async def get_conversation_turns(self, branch_id: str | None = None) -> list[dict[str, Any]]:
        """The user turns of a branch (default the current one), oldest first.

        Returns:
            One dict per user message: ``turn``, ``content`` (its first 100 characters),
            ``full_content``, ``timestamp`` (always ``None``) and ``can_branch`` (``True``).
        """
        return [
            _turn(turn, item, 100) for turn, item in await self._turns(branch_id) if _is_user(item)
        ]

    async def find_turns_by_content(
        self, search_term: str, branch_id: str | None = None
    ) -> list[dict[str, Any]]:
        """The user turns whose text contains ``search_term`` (ASCII letters compared without
        case), as :meth:`get_conversation_turns` gives them but with the whole content."""
        pattern = re.compile(re.escape(search_term), re.IGNORECASE | re.ASCII)
        found = []
        for turn, item in await self._turns(branch_id):
            if not _is_user(item):
                continue
            content = item.get("content", "")
            if isinstance(content, str):
                texts = [content]
            elif isinstance(content, list) and all(isinstance(part, dict) for part in content):
                texts = [part.get("text", "") for part in content]
            else:
                continue
            if any(isinstance(text, str) and pattern.search(text) for text in texts):
                found.append(_turn(turn, item, None))
        return found

    async def get_conversation_by_turns(
        self, branch_id: str | None = None
    ) -> dict[int, list[dict[str, str | None]]]:
        """The items of a branch grouped by turn: ``{turn: [{"type", "tool_name"}, ...]}``."""
        grouped: dict[int, list[dict[str, str | None]]] = {}
        for turn, item in await self._turns(branch_id):
            grouped.setdefault(turn, []).append(
                {"type": message_type(item), "tool_name": tool_name(item)}
            )
        return grouped

    async def get_tool_usage(
        self, branch_id: str | None = None
    ) -> list[tuple[str | None, int, int]]:
        """How often each tool was called per turn: ``(tool_name, count, turn)``, by turn.

        A ``tool_search_output`` counts when its turn holds no ``tool_search_call``.
        """
        counts: dict[tuple[int, str | None], int] = {}
        searched: set[int] = set()
        outputs: list[int] = []
        for turn, item in await self._turns(branch_id):
            kind = message_type(item)
            if kind in _TOOL_CALL_TYPES:
                name = tool_name(item)
                if name is None and kind in ("shell_call", "apply_patch_call"):
                    name = kind
                counts[(turn, name)] = counts.get((turn, name), 0) + 1
                if kind == "tool_search_call":
                    searched.add(turn)
            elif kind == "tool_search_output":
                outputs.append(turn)
        for turn in outputs:
            if turn not in searched:
                counts[(turn, "tool_search")] = counts.get((turn, "tool_search"), 0) + 1
        return [
            (name, count, turn)
            for (turn, name), count in sorted(
                counts.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))
            )
        ]

    # --- usage ------------------------------------------------------------------------------

    async def store_run_usage(self, result: Any) -> None:
        """Record a run's usage (``result.context_wrapper.usage``) for the current turn of the
        current branch, replacing what that turn held. Nothing is stored for an empty branch.

        Raises:
            Exception: the store's errors (the SDK's session logs them instead).
        """
        self._check_open()
        usage = result.context_wrapper.usage
        if usage is None:
            return
        async with self._lock:
            branch_id = await self._current_branch()
            items = await self._branch(branch_id).get_items(None)
            if not items:
                self._logger.debug("Skipping usage store: no current turn on %r", branch_id)
                return
            await self._record(
                "usage",
                branch=branch_id,
                turn=turn_numbers(items)[-1],
                requests=usage.requests or 0,
                input_tokens=usage.input_tokens or 0,
                output_tokens=usage.output_tokens or 0,
                total_tokens=usage.total_tokens or 0,
                input_tokens_details=_details(getattr(usage, "input_tokens_details", None)),
                output_tokens_details=_details(getattr(usage, "output_tokens_details", None)),
            )

    async def get_session_usage(self, branch_id: str | None = None) -> dict[str, int] | None:
        """Usage summed over every branch's turns (or ``branch_id``'s); ``None`` if none.

        Returns:
            ``requests``, ``input_tokens``, ``output_tokens``, ``total_tokens`` and
            ``total_turns`` (the turns with usage).
        """
        self._check_open()
        ledger = await self._ledger()
        rows = [
            row for (branch, _), row in ledger.usage.items() if not branch_id or branch == branch_id
        ]
        if not rows:
            return None
        totals = {
            key: sum(row[key] for row in rows)
            for key in ("requests", "input_tokens", "output_tokens", "total_tokens")
        }
        return {**totals, "total_turns": len(rows)}

    async def get_turn_usage(
        self, user_turn_number: int | None = None, branch_id: str | None = None
    ) -> list[dict[str, Any]] | dict[str, Any]:
        """Usage of one turn (a dict, ``{}`` if none) or of every turn of a branch (a list by
        turn, each with ``user_turn_number``), with the token details."""
        self._check_open()
        ledger = await self._ledger()
        branch = await self._read_branch(branch_id)
        if user_turn_number is not None:
            row = ledger.usage.get((branch, user_turn_number))
            return {} if row is None else _usage(row)
        return [
            {"user_turn_number": turn, **_usage(row)}
            for (owner, turn), row in sorted(ledger.usage.items(), key=lambda kv: kv[0][1])
            if owner == branch
        ]


def _details(details: Any) -> dict[str, Any] | None:
    if not details:
        return None
    return dict(vars(details))


def _usage(row: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "requests",
        "input_tokens",
        "output_tokens",
        "total_tokens",
        "input_tokens_details",
        "output_tokens_details",
    )
    return {key: row.get(key) for key in keys}


def _turn(turn: int, item: dict[str, Any], max_length: int | None) -> dict[str, Any]:
    content = item.get("content", "")
    return {
        "turn": turn,
        "content": _preview(content, max_length),
        "full_content": content,
        "timestamp": None,
        "can_branch": True,
    }
