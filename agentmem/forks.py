"""Forks: the item cursor a fork stops at, and the origin a forked session records.

Core: it imports nothing else of agentmem.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

import orjson

__all__ = ["ForkOrigin", "ItemCursor", "fork_origin_of", "validate_upto"]


@dataclass(frozen=True)
class ItemCursor:
    """An opaque position in a history: just after its first ``count`` items.

    Its text form (``str(cursor)``) is what the command line and other processes pass around;
    :meth:`parse` reads it back. A cursor names a place in the order of the history, so it
    stays valid while items are only appended.

    Attributes:
        count: How many of the oldest items lie before the cursor.
    """

    count: int

    def __post_init__(self) -> None:
        if not isinstance(self.count, int) or isinstance(self.count, bool) or self.count < 0:
            raise ValueError(f"an item cursor counts items (an int >= 0), got {self.count!r}")

    @classmethod
    def first(cls, count: int) -> ItemCursor:
        """The cursor just after the first ``count`` items."""
        return cls(count)

    @classmethod
    def parse(cls, text: object) -> ItemCursor:
        """The cursor of a text form made by ``str(cursor)``.

        Raises:
            TypeError: not a ``str``.
            ValueError: not an item cursor.
        """
        if not isinstance(text, str):
            raise TypeError(f"an item cursor is a str, got {type(text).__name__}")
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            value = orjson.loads(raw)
            count = value["n"] if isinstance(value, dict) else None
        except (binascii.Error, ValueError, orjson.JSONDecodeError):
            count = None
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ValueError(f"not an item cursor: {text!r}")
        return cls(count)

    def __str__(self) -> str:
        raw = orjson.dumps({"n": self.count})
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def validate_upto(upto: object) -> ItemCursor | None:
    """``upto`` of a fork as a cursor: ``None`` (everything), an :class:`ItemCursor`, or its
    text form.

    Raises:
        TypeError, ValueError: anything else.
    """
    if upto is None or isinstance(upto, ItemCursor):
        return upto
    if isinstance(upto, str):
        return ItemCursor.parse(upto)
    raise TypeError(f"upto must be an ItemCursor, its text form or None, got {type(upto).__name__}")


@dataclass(frozen=True)
class ForkOrigin:
    """Where a forked session came from.

    Attributes:
        parent_id: The id of the session it was forked from.
        fork_point: The cursor in the parent's history where the copy ends (after the items
            copied).
    """

    parent_id: str
    fork_point: ItemCursor


def fork_origin_of(
    parent_id: str | bytes | None, point: int | str | bytes | None
) -> ForkOrigin | None:
    """The fork origin a stored session records (``forked_from``, ``fork_point``: a SQL row's
    columns, or a Redis hash's fields as bytes or text), if any."""
    if parent_id is None or point is None:
        return None
    if isinstance(parent_id, bytes):
        parent_id = parent_id.decode()
    return ForkOrigin(parent_id, ItemCursor(int(point)))
