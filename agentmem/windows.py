"""Windows of the newest items that never split what belongs together.

``get_items(limit=N)`` returns exactly the newest N items. A *whole-pairs* window
(``whole_pairs=True``) starts at the same place unless that cut would separate items that the
model API only accepts together; it then moves the start **backwards** (towards older items)
until no such pair is split:

- a tool call and its output, matched by type and ``call_id``: ``function_call`` /
  ``function_call_output`` and the SDK's other kinds (:data:`OUTPUT_TO_CALL`), and an
  ``mcp_approval_request`` and its ``mcp_approval_response`` (by ``approval_request_id``);
- a ``reasoning`` item and the item that follows it (the cut never falls right after a
  reasoning item).

A *whole-turns* window (``whole_turns=True``; implies whole pairs) also moves the start back to
the newest user message (``role == "user"``) at or before it: the window holds whole turns.

The window therefore always holds the newest N items (or the whole history when shorter) plus
the fewest older items that complete them; it is never shorter than the exact window. An
output whose call is not stored at all extends the window to the whole history.

This module is core: it imports nothing else of agentmem. Every backend implements the same
walk in its own store (SQL, Lua); :func:`window_length` is the reference they are tested
against.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final, Literal, NamedTuple, TypeAlias

__all__ = [
    "APPROVAL_REQUEST",
    "APPROVAL_RESPONSE",
    "CALL_TYPES",
    "OUTPUT_TO_CALL",
    "Mark",
    "WindowMode",
    "mark_from_fields",
    "mark_of",
    "reference_field",
    "resolve_window_mode",
    "window_length",
]

WindowMode: TypeAlias = Literal["items", "pairs", "turns"]
"""``"items"``: exactly the newest N; ``"pairs"``: whole pairs; ``"turns"``: whole turns."""

OUTPUT_TO_CALL: dict[str, str] = {
    "function_call_output": "function_call",
    "custom_tool_call_output": "custom_tool_call",
    "shell_call_output": "shell_call",
    "apply_patch_call_output": "apply_patch_call",
    "computer_call_output": "computer_call",
    "local_shell_call_output": "local_shell_call",
    "tool_search_output": "tool_search_call",
    "program_output": "program",
}
"""Each tool output type and the call type it answers (the OpenAI Agents SDK's tool kinds)."""

CALL_TYPES = frozenset(OUTPUT_TO_CALL.values())

APPROVAL_REQUEST = "mcp_approval_request"
APPROVAL_RESPONSE = "mcp_approval_response"


class Mark(NamedTuple):
    """What the window walk needs of one item.

    Attributes:
        item_type: The item's ``type`` (``None`` if it has none).
        is_user: Whether the item is a user message (a turn starts there).
        needs: The key of the call this item answers (an output), else ``None``.
        gives: The key this item answers to (a call), else ``None``.
    """

    item_type: str | None
    is_user: bool
    needs: str | None
    gives: str | None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def reference_field(item_type: str | None) -> str | None:
    """The field that pairs an item of ``item_type`` (``call_id``, ``approval_request_id`` or
    ``id``), or ``None`` when such items pair with nothing."""
    if item_type in OUTPUT_TO_CALL or item_type in CALL_TYPES:
        return "call_id"
    if item_type == APPROVAL_RESPONSE:
        return "approval_request_id"
    if item_type == APPROVAL_REQUEST:
        return "id"
    return None


def mark_from_fields(item_type: Any, role: Any, reference: Any) -> Mark:
    """The :class:`Mark` of an item from its ``type``, ``role`` and the value of its
    :func:`reference_field`; keys are ``"<call type>:<reference>"``."""
    item_type = _text(item_type)
    reference = _text(reference)
    needs = gives = None
    if reference is not None:
        if item_type in OUTPUT_TO_CALL:
            needs = f"{OUTPUT_TO_CALL[item_type]}:{reference}"
        elif item_type == APPROVAL_RESPONSE:
            needs = f"{APPROVAL_REQUEST}:{reference}"
        elif item_type in CALL_TYPES or item_type == APPROVAL_REQUEST:
            gives = f"{item_type}:{reference}"
    return Mark(item_type, role == "user", needs, gives)


def mark_of(item: Any) -> Mark:
    """The :class:`Mark` of one decoded item."""
    if not isinstance(item, dict):
        return Mark(None, False, None, None)
    item_type = item.get("type")
    field = reference_field(_text(item_type))
    return mark_from_fields(item_type, item.get("role"), None if field is None else item.get(field))


def window_length(marks_newest_first: Iterable[Mark], limit: int, mode: WindowMode) -> int:
    """How many of the newest items the window of ``limit`` holds.

    Walks from the newest item back and stops before an older item only when at least
    ``limit`` items are taken, every output taken has its call taken, the older item is not
    a reasoning item, and (``"turns"``) the oldest item taken is a user message. Consumes
    ``marks_newest_first`` only as far as it needs.
    """
    if limit == 0:
        return 0
    taken = 0
    open_keys: set[str] = set()
    oldest: Mark | None = None
    for mark in marks_newest_first:
        if (
            oldest is not None
            and taken >= limit
            and (
                mode == "items"
                or (
                    not open_keys
                    and mark.item_type != "reasoning"
                    and (mode != "turns" or oldest.is_user)
                )
            )
        ):
            return taken
        taken += 1
        if mark.gives is not None:
            open_keys.discard(mark.gives)
        if mark.needs is not None:
            open_keys.add(mark.needs)
        oldest = mark
    return taken


def resolve_window_mode(
    whole_pairs: bool | None,
    whole_turns: bool | None,
    default: WindowMode = "items",
) -> WindowMode:
    """The mode of one call: the session's ``default`` when neither flag is given, else the
    flags given alone (an omitted one counts as false; ``whole_turns`` implies whole pairs).

    Raises:
        TypeError: a flag is not a ``bool`` or ``None``.
    """
    for name, value in (("whole_pairs", whole_pairs), ("whole_turns", whole_turns)):
        if value is not None and not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool or None, got {type(value).__name__}")
    if whole_pairs is None and whole_turns is None:
        return default
    if whole_turns:
        return "turns"
    return "pairs" if whole_pairs else "items"


def cut_window(items: list[Any], limit: int, mode: WindowMode) -> list[Any]:
    """The window of ``limit`` over decoded ``items`` (oldest first), by the rule of
    :func:`window_length`: what a wrapper that sees items only once decoded applies."""
    taken = window_length((mark_of(item) for item in reversed(items)), limit, mode)
    return items[len(items) - taken :] if taken else []


EVERY_ITEM: Final = 2**53
"""A limit above any history: the whole of it, whatever ``session_settings`` say."""


async def plain_items(session: Any, limit: int | None) -> list[Any]:
    """``session.get_items(limit)`` cut by count alone, whatever the session's window default
    (a Session that is no agentmem session has no windows)."""
    from agentmem.session import SessionABC

    if isinstance(session, SessionABC):
        return await session.get_items(limit, whole_pairs=False, whole_turns=False)
    items: list[Any] = await session.get_items(limit)
    return items
