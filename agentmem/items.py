"""History items: the item type, id and limit validation, and the encoding every backend stores.

This module imports nothing else of agentmem: backends depend on it, never the reverse.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, NamedTuple, NoReturn, TypeAlias

import orjson

__all__ = [
    "MAX_SESSION_ID_LENGTH",
    "EncodedItem",
    "SessionItem",
    "decode_item",
    "encode_item",
    "encode_items",
    "validate_limit",
    "validate_session_id",
]

SessionItem: TypeAlias = Any
"""One history item: a JSON object, such as an OpenAI Agents SDK ``TResponseInputItem``."""

MAX_SESSION_ID_LENGTH = 255
"""Session ids are 1 to 255 characters: it is the width of the SQL key column."""


def validate_session_id(session_id: object) -> str:
    """Return ``session_id`` if it is a usable id, else raise.

    Any string of 1 to 255 characters works and is stored exactly, except NUL characters and
    lone surrogates, which neither PostgreSQL nor UTF-8 can store.

    Raises:
        TypeError: not a ``str``.
        ValueError: empty, longer than 255 characters, or holding NUL or a lone surrogate.
    """
    if not isinstance(session_id, str):
        raise TypeError(f"session_id must be a str, got {type(session_id).__name__}")
    if not session_id:
        raise ValueError("session_id must not be empty")
    if len(session_id) > MAX_SESSION_ID_LENGTH:
        raise ValueError(
            f"session_id is {len(session_id)} characters long; "
            f"the maximum is {MAX_SESSION_ID_LENGTH}"
        )
    if "\x00" in session_id:
        raise ValueError("session_id must not contain NUL characters")
    try:
        session_id.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("session_id must be valid Unicode (it holds a lone surrogate)") from None
    return session_id


def validate_limit(limit: object) -> int | None:
    """Return ``limit`` if it is ``None`` or a non-negative ``int``, else raise.

    Raises:
        TypeError: not an ``int`` (``bool`` is refused too).
        ValueError: negative.
    """
    if limit is None:
        return None
    if not isinstance(limit, int) or isinstance(limit, bool):
        raise TypeError(f"limit must be an int or None, got {type(limit).__name__}")
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    return limit


class EncodedItem(NamedTuple):
    """An item as stored: its JSON text plus the fields extracted for querying."""

    json: str
    role: str | None
    item_type: str | None


_INDEXED_FIELD_MAX = 64
_ENCODE_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
_LEAVES = frozenset({str, int, bool, type(None)})  # values that hold no float
_new_encoded = tuple.__new__  # builds an EncodedItem without NamedTuple's argument handling


def _reject_value(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not a JSON value")


def _find_non_finite(value: Any) -> bool:
    if isinstance(value, dict):
        values: Iterable[Any] = value.values()
    elif isinstance(value, list | tuple):
        values = value
    else:
        return isinstance(value, float) and not math.isfinite(value)
    for v in values:
        kind = type(v)
        if kind is float:
            if not math.isfinite(v):
                return True
        elif kind not in _LEAVES and _find_non_finite(v):
            return True
    return False


def encode_item(item: object, index: int = 0) -> EncodedItem:
    """Validate and serialize one item; see :func:`encode_items`."""
    encoded = _encode_valid((item,))
    if encoded is None:
        _refuse(item, index)
    return encoded[0]


def encode_items(items: Iterable[object]) -> list[EncodedItem]:
    """Validate and serialize a batch, before anything is written.

    Items must be dicts of JSON values: ``str`` keys; ``str``, ``int`` (64-bit), ``float``
    (finite), ``bool``, ``None``, lists and dicts as values, nested at most 254 levels deep.
    Tuples are stored as JSON arrays and come back as lists.

    Raises:
        TypeError: ``items`` is not a list, or an item is not a dict of JSON values
            (sets, bytes, datetimes, objects, non-``str`` keys, integers beyond 64 bits).
        ValueError: an item holds NaN or Infinity.
        The message names the index of the offending item in the batch.
    """
    if not isinstance(items, list | tuple):
        raise TypeError(f"items must be a list of dicts, got {type(items).__name__}")
    encoded = _encode_valid(items)
    if encoded is None:  # some item is invalid: raise the first one's error
        index, item = next((i, it) for i, it in enumerate(items) if _encode_valid((it,)) is None)
        _refuse(item, index)
    return encoded


def _encode_valid(items: list[object] | tuple[object, ...]) -> list[EncodedItem] | None:
    """``items`` validated and serialized, in one inlined loop (the hot path): ``None`` if any
    is invalid (:func:`_refuse` says why)."""
    dumps = orjson.dumps
    encoded: list[EncodedItem] = []
    append = encoded.append
    try:
        for item in items:
            if not isinstance(item, dict):
                return None
            text = dumps(item, default=_reject_value, option=_ENCODE_OPTIONS).decode()
            # orjson writes NaN and Infinity as null; JSON has no such numbers, so they are
            # refused. (A str search is about twice as fast as the same search in the bytes.)
            if "null" in text and _find_non_finite(item):
                return None
            role = item.get("role")
            if type(role) is not str or len(role) > _INDEXED_FIELD_MAX:
                role = None
            item_type = item.get("type")
            if type(item_type) is not str or len(item_type) > _INDEXED_FIELD_MAX:
                item_type = None
            append(_new_encoded(EncodedItem, (text, role, item_type)))
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return None
    return encoded


def _refuse(item: object, index: int) -> NoReturn:
    """Raise the error of an item :func:`_encode_valid` refused."""
    if not isinstance(item, dict):
        raise TypeError(f"item {index} is a {type(item).__name__}, not a dict (a JSON object)")
    try:
        orjson.dumps(item, default=_reject_value, option=_ENCODE_OPTIONS)
    except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
        raise TypeError(f"item {index} is not valid JSON: {exc}") from None
    raise ValueError(f"item {index} holds NaN or Infinity, which JSON cannot represent")


def decode_item(data: str | bytes) -> SessionItem:
    """Deserialize one stored item."""
    return orjson.loads(data)
