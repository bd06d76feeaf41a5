"""The records of the session lifecycle: what a store knows of a conversation besides its items,
pages of sessions and of one history, and the checks of the lifecycle options.

Core: it imports only :mod:`agentmem.items`; sessions and managers depend on it.
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any, Final, TypeAlias

import orjson

from agentmem.items import SessionItem

__all__ = [
    "MAX_TITLE_LENGTH",
    "MAX_USER_ID_LENGTH",
    "TTL",
    "UNSET",
    "decode_position",
    "encode_position",
    "ItemPage",
    "Lifecycle",
    "SessionInfo",
    "SessionPage",
    "Unset",
    "utc",
    "validate_max_items",
    "validate_metadata",
    "validate_metadata_filter",
    "validate_title",
    "validate_ttl",
    "validate_user_id",
]

TTL: TypeAlias = int | float | timedelta
"""A time to live: seconds, or a ``timedelta``."""

MAX_USER_ID_LENGTH: Final = 255
MAX_TITLE_LENGTH: Final = 1000


class Unset(Enum):
    """The type of :data:`UNSET`."""

    UNSET = "UNSET"

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = Unset.UNSET
"""The default of ``update_info``'s fields: "leave it as it is" (``None`` clears a field)."""


def utc(value: datetime) -> datetime:
    """``value`` as an aware UTC time; a naive value (as SQLite stores it) is UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


@dataclass(frozen=True)
class SessionInfo:
    """What a store knows of one conversation besides its items.

    Attributes:
        session_id: The conversation's id.
        item_count: How many items its history holds.
        created_at: When it was first written (UTC).
        updated_at: When it was last written (UTC).
        user_id: Its owner, if one was given.
        title: Its title, if one was given.
        metadata: A JSON object of the caller's (``{}`` when none was given).
        expires_at: When it expires (UTC); ``None``: never.
    """

    session_id: str
    item_count: int
    created_at: datetime
    updated_at: datetime
    user_id: str | None = field(default=None, kw_only=True)
    title: str | None = field(default=None, kw_only=True)
    metadata: dict[str, Any] = field(default_factory=dict, kw_only=True)
    expires_at: datetime | None = field(default=None, kw_only=True)


@dataclass(frozen=True)
class SessionPage:
    """One page of a manager's ``find_sessions``.

    Attributes:
        items: The sessions of this page, most recently updated first.
        next_cursor: Pass it as ``cursor`` for the next page; ``None`` on the last page.
    """

    items: list[SessionInfo]
    next_cursor: str | None


@dataclass(frozen=True)
class ItemPage:
    """One page of a history, from ``session.get_page``.

    Attributes:
        items: The items of this page, oldest first.
        before: Pass it as ``before`` for the page of older items; ``None`` when this page
            starts at the beginning of the history. Cursors stay valid across appends.
    """

    items: list[SessionItem]
    before: str | None


@dataclass(frozen=True)
class Lifecycle:
    """The lifecycle options of one session object, checked.

    Attributes:
        ttl: Seconds each write (and, with ``touch_on_read``, each read) extends the expiry to;
            ``None``: a write makes the session never expire.
        max_items: The longest history kept: a write beyond it drops the oldest items.
        touch_on_read: Whether reads slide the expiry too.
        user_id: The owner given when the session is first written (or to fill an absent one).
        title: Likewise, the title.
        metadata: Likewise, the metadata (``None``: none given).
    """

    ttl: float | None = None
    max_items: int | None = None
    touch_on_read: bool = False
    user_id: str | None = None
    title: str | None = None
    metadata: dict[str, Any] | None = None

    @classmethod
    def checked(
        cls,
        *,
        ttl: object = None,
        max_items: object = None,
        touch_on_read: object = False,
        user_id: object = None,
        title: object = None,
        metadata: object = None,
    ) -> Lifecycle:
        """The options, each checked by its ``validate_*`` function.

        Raises:
            TypeError, ValueError: a bad option.
        """
        if not isinstance(touch_on_read, bool):
            raise TypeError(f"touch_on_read must be a bool, got {type(touch_on_read).__name__}")
        return cls(
            validate_ttl(ttl),
            validate_max_items(max_items),
            touch_on_read,
            validate_user_id(user_id),
            validate_title(title),
            validate_metadata(metadata) or None,
        )

    @property
    def metadata_json(self) -> str | None:
        """``metadata`` as JSON text (``None`` when none was given)."""
        return None if self.metadata is None else orjson.dumps(self.metadata).decode()


def validate_user_id(user_id: object) -> str | None:
    """Return ``user_id`` if it is ``None`` or a usable owner id (1 to 255 characters, no NUL).

    Raises:
        TypeError: neither ``None`` nor a ``str``.
        ValueError: empty, too long, or holding NUL.
    """
    return _text("user_id", user_id, MAX_USER_ID_LENGTH)


def validate_title(title: object) -> str | None:
    """Return ``title`` if it is ``None`` or a usable title (up to 1,000 characters, no NUL).

    Raises:
        TypeError: neither ``None`` nor a ``str``.
        ValueError: empty, too long, or holding NUL.
    """
    return _text("title", title, MAX_TITLE_LENGTH)


def _text(name: str, value: object, longest: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str or None, got {type(value).__name__}")
    if not value:
        raise ValueError(f"{name} must not be empty (pass None for none)")
    if len(value) > longest:
        raise ValueError(f"{name} is {len(value)} characters long; the maximum is {longest}")
    if "\x00" in value:
        raise ValueError(f"{name} must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{name} must be valid Unicode (it holds a lone surrogate)") from None
    return value


def validate_metadata(metadata: object) -> dict[str, Any]:
    """Return ``metadata`` as a JSON object (``None`` is ``{}``).

    Raises:
        TypeError: not a ``dict`` with ``str`` keys, or holding what JSON cannot store.
        ValueError: holding NaN or infinity, or NUL characters.
    """
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict (a JSON object), got {type(metadata).__name__}")
    try:
        text = orjson.dumps(metadata)
    except TypeError as exc:
        raise TypeError(f"metadata is not JSON-serializable: {exc}") from None
    if b"\\u0000" in text:
        raise ValueError("metadata must not contain NUL characters (PostgreSQL cannot store them)")
    value: dict[str, Any] = orjson.loads(text)
    if _non_finite(metadata):
        raise ValueError("metadata must not contain NaN or infinity")
    return value


def validate_metadata_filter(metadata: object) -> dict[str, Any] | None:
    """Return a ``find_sessions`` metadata filter if it is ``None`` or a JSON object of scalar
    values (the top-level keys a session's metadata must hold with equal values).

    Raises:
        TypeError: not a ``dict`` of ``str`` keys and ``str``/number/bool/``None`` values.
    """
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict or None, got {type(metadata).__name__}")
    for key, value in metadata.items():
        if not isinstance(key, str):
            raise TypeError(f"metadata filter keys must be str, got {key!r}")
        if not (value is None or isinstance(value, str | int | float)):
            raise TypeError(
                f"metadata filter values must be str, numbers, bools or None; {key!r} holds "
                f"{type(value).__name__}"
            )
    return metadata


def _non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_non_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_non_finite(v) for v in value)
    return False


def validate_ttl(ttl: object, name: str = "ttl") -> float | None:
    """Return ``ttl`` in seconds (``None``: no expiry).

    Raises:
        TypeError: not an ``int``, ``float``, ``timedelta`` or ``None`` (``bool`` is refused).
        ValueError: not positive, or not finite.
    """
    if ttl is None:
        return None
    if isinstance(ttl, timedelta):
        seconds = ttl.total_seconds()
    elif isinstance(ttl, int | float) and not isinstance(ttl, bool):
        seconds = float(ttl)
    else:
        raise TypeError(f"{name} must be seconds or a timedelta, got {type(ttl).__name__}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{name} must be positive, got {ttl!r}")
    return seconds


def validate_max_items(max_items: object) -> int | None:
    """Return ``max_items`` if it is ``None`` or an ``int`` of at least 1.

    Raises:
        TypeError: not an ``int`` (``bool`` is refused).
        ValueError: below 1.
    """
    if max_items is None:
        return None
    if not isinstance(max_items, int) or isinstance(max_items, bool):
        raise TypeError(f"max_items must be an int or None, got {type(max_items).__name__}")
    if max_items < 1:
        raise ValueError(f"max_items must be at least 1, got {max_items}")
    return max_items


def encode_position(position: int) -> str:
    """An opaque cursor for a position in one history (what ``ItemPage.before`` holds)."""
    return base64.urlsafe_b64encode(f"p{position}".encode()).decode().rstrip("=")


def decode_position(cursor: object) -> int:
    """The position an :func:`encode_position` cursor holds.

    Raises:
        TypeError: not a ``str``.
        ValueError: not such a cursor.
    """
    if not isinstance(cursor, str):
        raise TypeError(f"before must be a str or None, got {type(cursor).__name__}")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if raw[:1] == "p" and raw[1:].isdigit():
            return int(raw[1:])
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise ValueError(f"not a history page cursor: {cursor!r}")
