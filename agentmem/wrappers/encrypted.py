"""Encryption at rest for any agentmem session: AES-GCM per item, keys rotated without downtime.

:class:`EncryptedSession` wraps a session of any backend and is a session itself. Each item is
stored as an envelope, an ordinary JSON object that every backend keeps as it keeps any item::

    {"enc": "agentmem-aesgcm-v1", "kid": "2026-01", "data": "<base64: nonce + ciphertext + tag>"}

The cipher is AES-256-GCM with a random 96-bit nonce per item, under a key derived for this one
session (HKDF-SHA256 over the session id) from the key named by ``kid``; the format, the session
id and the key id are bound in as associated data. An envelope altered or copied into another
session fails its authentication tag: it raises :class:`agentmem.errors.DecryptionError`.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

import orjson

from agentmem._deps import missing
from agentmem.errors import DecryptionError
from agentmem.manager import utc
from agentmem.session import (
    EncodedItem,
    Session,
    SessionABC,
    SessionItem,
    decode_item,
    encode_items,
    validate_limit,
)
from agentmem.windows import EVERY_ITEM, cut_window, plain_items, resolve_window_mode

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from agentmem.manager import SessionManagerABC

__all__ = [
    "FORMAT",
    "EncryptedSession",
    "RotationReport",
    "generate_key",
    "load_key",
    "parse_keys",
    "require_cryptography",
    "rotate_store",
    "rotation_keys",
]

logger = logging.getLogger("agentmem.encryption")

FORMAT: Final = "agentmem-aesgcm-v1"
"""The envelope's ``enc`` value: the cipher, the key derivation and the associated data."""

KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12
MAX_KEY_ID_LENGTH: Final = 64
CLEAR_FIELDS: Final = frozenset({"role", "type"})
_REPLACE_ATTEMPTS: Final = 5

OnError = Literal["raise", "skip"]


def require_cryptography() -> type[AESGCM]:
    """The AES-GCM cipher class of the ``cryptography`` package.

    Raises:
        MissingDependencyError: ``cryptography`` is not installed; the message names the
            ``pip install`` line of agentmem's ``encryption`` extra.
    """
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError as exc:
        raise missing("encryption", "cryptography") from exc
    return AESGCM


def generate_key() -> str:
    """A new random 256-bit key, base64-encoded (what ``keys`` takes)."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode()


def validate_key_id(key_id: object) -> str:
    """Return ``key_id`` if it is a usable key id: 1 to 64 printable characters.

    Raises:
        TypeError: not a ``str``.
        ValueError: empty, too long, or holding a control character.
    """
    if not isinstance(key_id, str):
        raise TypeError(f"a key id must be a str, got {type(key_id).__name__}")
    if not key_id or len(key_id) > MAX_KEY_ID_LENGTH or not key_id.isprintable():
        raise ValueError(f"key id {key_id!r} must be 1 to {MAX_KEY_ID_LENGTH} printable characters")
    return key_id


def load_key(key_id: str, key: object) -> bytes:
    """The 32 bytes of ``key``: 32 raw bytes, or a ``str`` holding their base64 (standard or
    URL-safe alphabet).

    Raises:
        TypeError: neither ``bytes`` nor ``str``.
        ValueError: not 32 bytes long once decoded, or not base64. The message never shows the
            key.
    """
    if isinstance(key, bytes | bytearray | memoryview):
        raw = bytes(key)
    elif isinstance(key, str):
        text = key.strip()
        try:
            raw = base64.b64decode(
                text + "=" * (-len(text) % 4), altchars=_altchars(text), validate=True
            )
        except (binascii.Error, ValueError):
            raise ValueError(f"key {key_id!r} is not valid base64") from None
    else:
        raise TypeError(f"key {key_id!r} must be bytes or a base64 str, got {type(key).__name__}")
    if len(raw) != KEY_BYTES:
        raise ValueError(
            f"key {key_id!r} is {len(raw)} bytes long; an AES-256 key is {KEY_BYTES} bytes "
            f"(or the base64 of {KEY_BYTES} bytes: 44 characters)"
        )
    return raw


def _altchars(text: str) -> bytes | None:
    return b"-_" if "-" in text or "_" in text else None


def parse_keys(keys: Mapping[str, object]) -> dict[str, bytes]:
    """Validate a ``{key id: key}`` mapping into ``{key id: 32 bytes}``.

    Raises:
        TypeError, ValueError: a bad key id or key, or no key at all.
    """
    if not isinstance(keys, Mapping):
        raise TypeError(f"keys must be a mapping of key id to key, got {type(keys).__name__}")
    if not keys:
        raise ValueError("keys must hold at least one key")
    return {validate_key_id(key_id): load_key(key_id, key) for key_id, key in keys.items()}


def _clear_fields(fields: Iterable[str]) -> tuple[str, ...]:
    if isinstance(fields, str):
        raise TypeError("clear_fields must be a collection of field names, not a str")
    chosen = tuple(dict.fromkeys(fields))
    unknown = [name for name in chosen if name not in CLEAR_FIELDS]
    if unknown:
        raise ValueError(f"clear_fields may hold only 'role' and 'type', got {unknown!r}")
    return chosen


class EncryptedSession(SessionABC):
    """Any agentmem session with its items encrypted at rest (AES-256-GCM), keys rotatable.

    Example::

        keys = {"2026-01": os.environ["AGENTMEM_KEY_2026_01"]}
        inner = SQLAlchemySession(engine, "user_123")
        async with EncryptedSession(inner, keys=keys, current="2026-01") as session:
            await Runner.run(agent, "Hello", session=session)

    New items are encrypted under ``keys[current]``; items under any key id in ``keys`` are read.
    To rotate, add the new key, make it ``current``, then move the stored items to it with
    :meth:`reencrypt` (one session) or ``agentmem rotate-keys`` (a whole store); drop the old
    key from ``keys`` once nothing uses it.

    The encrypted session owns ``inner``: ``close()`` closes it too. Every writer of these
    sessions must go through an ``EncryptedSession``: an item written through the bare inner
    session is not encrypted, and reading it raises :class:`DecryptionError`.

    Args:
        inner: The session that stores the envelopes (any backend, or another wrapper).
        keys: Key id -> key: 32 bytes, or their base64. Key ids are 1 to 64 printable
            characters, stored in clear with each item.
        current: The key id new items are encrypted under.
        on_error: ``"raise"`` (default): an item that does not decrypt raises
            :class:`DecryptionError`. ``"skip"``: it is left out of what ``get_items`` returns
            (``pop_item`` removes it and returns the next one), with a warning on the
            ``agentmem.encryption`` logger.
        clear_fields: Item fields also stored in clear in the envelope, where the SQL backends
            index them: ``("role", "type")`` or a part of it. Empty by default.

    Raises:
        TypeError, ValueError: a bad key or key id, ``current`` not in ``keys``, a bad
            ``on_error`` or ``clear_fields``.
        MissingDependencyError: the ``cryptography`` package is not installed.

    Attributes:
        session_id: The wrapped session's id.
        session_settings: The wrapped session's ``session_settings``.
        inner: The wrapped session, which stores the envelopes.
        current: The key id new items are encrypted under.
        on_error: What a read does with an item that does not decrypt.
        clear_fields: The item fields also stored in clear.
    """

    inner: Session
    current: str
    on_error: OnError
    clear_fields: tuple[str, ...]

    def __init__(
        self,
        inner: Session,
        *,
        keys: Mapping[str, object],
        current: str,
        on_error: OnError = "raise",
        clear_fields: Iterable[str] = (),
    ) -> None:
        aesgcm = require_cryptography()
        parsed = parse_keys(keys)
        if current not in parsed:
            raise ValueError(f"current key id {current!r} is not in keys {sorted(parsed)!r}")
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        super().__init__(inner.session_id, inner.session_settings)
        self.inner = inner
        self.window_mode = getattr(inner, "window_mode", "items")
        self.current = current
        self.on_error = on_error
        self.clear_fields = _clear_fields(clear_fields)
        self._keys = parsed
        self._aesgcm = aesgcm
        self._ciphers: dict[str, tuple[AESGCM, bytes]] = {}
        from cryptography.exceptions import InvalidTag

        self._invalid_tag = InvalidTag

    @property
    def key_ids(self) -> list[str]:
        """The ids of the keys this session reads, sorted."""
        return sorted(self._keys)

    # --- the cipher --------------------------------------------------------------------------

    def _cipher(self, key_id: str) -> tuple[AESGCM, bytes]:
        """The AES-GCM cipher under this session's key derived from ``keys[key_id]``, and the
        associated data of the items under that key."""
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            from cryptography.hazmat.primitives.hashes import SHA256
            from cryptography.hazmat.primitives.kdf.hkdf import HKDF

            derived = HKDF(
                algorithm=SHA256(),
                length=KEY_BYTES,
                salt=FORMAT.encode(),
                info=b"session:" + self.session_id.encode(),
            ).derive(self._keys[key_id])
            associated_data = orjson.dumps([FORMAT, self.session_id, key_id])
            cipher = self._ciphers[key_id] = (self._aesgcm(derived), associated_data)
        return cipher

    def _seal_json(self, plaintext: bytes, item: Mapping[str, Any]) -> dict[str, Any]:
        key_id = self.current
        nonce = os.urandom(NONCE_BYTES)
        cipher, associated_data = self._cipher(key_id)
        sealed = cipher.encrypt(nonce, plaintext, associated_data)
        envelope: dict[str, Any] = {
            "enc": FORMAT,
            "kid": key_id,
            "data": base64.b64encode(nonce + sealed).decode(),
        }
        for name in self.clear_fields:
            if name in item:
                envelope[name] = item[name]
        return envelope

    def _open(self, stored: object, position: int) -> SessionItem:
        """The item a stored envelope holds; raises :class:`DecryptionError` otherwise."""

        def fail(reason: str, key_id: str | None = None) -> DecryptionError:
            return DecryptionError(
                self.session_id, position, reason, key_id=key_id, stored_item=stored
            )

        if not isinstance(stored, dict) or stored.get("enc") != FORMAT:
            raise fail("it is not an item of an encrypted session")
        key_id, data = stored.get("kid"), stored.get("data")
        if not isinstance(key_id, str) or not isinstance(data, str):
            raise fail("its envelope is malformed")
        if key_id not in self._keys:
            raise fail(f"its key id {key_id!r} is not in keys {self.key_ids!r}", key_id)
        try:
            raw = memoryview(binascii.a2b_base64(data, strict_mode=True))
        except (binascii.Error, ValueError):
            raise fail("its data is not base64", key_id) from None
        cipher, associated_data = self._cipher(key_id)
        try:
            plaintext = cipher.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], associated_data)
        except (self._invalid_tag, ValueError):
            raise fail(
                "its authentication tag does not match (altered, or copied from another "
                "session, or the key is not the one it was written with)",
                key_id,
            ) from None
        item = orjson.loads(plaintext)
        if len(stored) > 3:  # fields kept in clear
            for name in CLEAR_FIELDS.intersection(stored):
                if item.get(name) != stored[name]:
                    raise fail(f"its clear {name!r} field was altered", key_id)
        return item

    def _opened(self, stored: list[SessionItem]) -> list[SessionItem]:
        items: list[SessionItem] = []
        count = len(stored)
        for index, envelope in enumerate(stored):
            try:
                items.append(self._open(envelope, index - count))
            except DecryptionError as error:
                if self.on_error == "raise":
                    raise
                logger.warning("skipped an item that does not decrypt: %s", error)
        return items

    def seal_items(self, items: list[SessionItem]) -> list[dict[str, Any]]:
        """``items`` as this session stores them: checked, then encrypted under ``current``.

        Raises:
            TypeError, ValueError: an item is not a JSON object.
        """
        encoded = encode_items(items)
        return [
            self._seal_json(entry.json.encode(), item)
            for entry, item in zip(encoded, items, strict=True)
        ]

    def open_items(self, stored: list[SessionItem]) -> list[SessionItem]:
        """The items that ``stored`` (this session's envelopes, oldest first, the last one the
        newest) hold.

        Raises:
            DecryptionError: one does not decrypt, whatever ``on_error`` says.
        """
        count = len(stored)
        return [self._open(envelope, index - count) for index, envelope in enumerate(stored)]

    # --- the Session protocol ----------------------------------------------------------------

    async def get_items(
        self,
        limit: int | None = None,
        *,
        whole_pairs: bool | None = None,
        whole_turns: bool | None = None,
    ) -> list[SessionItem]:
        """Return the history oldest first, decrypted; see :meth:`SessionABC.get_items`.

        With ``on_error="skip"`` an item that does not decrypt is left out, so fewer than
        ``limit`` items may come back. A window of whole pairs or turns reads and decrypts the
        whole history (the store cannot see what the items are) and cuts it here.

        Raises:
            DecryptionError: an item does not decrypt (``on_error="raise"``).
        """
        self._check_open()
        validate_limit(limit)
        mode = resolve_window_mode(whole_pairs, whole_turns, self.window_mode)
        resolved = self._resolve_limit(limit)
        if mode == "items" or resolved is None:
            return self._opened(await plain_items(self.inner, limit))
        every = self._opened(await plain_items(self.inner, EVERY_ITEM))
        return cut_window(every, resolved, mode)

    async def add_items(self, items: list[SessionItem]) -> None:
        """Encrypt ``items`` under ``current`` and append them, in order, atomically.

        Raises:
            TypeError, ValueError: an item is not a JSON object; nothing is written.
        """
        self._check_open()
        sealed = self.seal_items(items)
        if sealed:
            await self.inner.add_items(sealed)

    async def pop_item(self) -> SessionItem | None:
        """Remove and return the newest item, decrypted; ``None`` when the history is empty.

        Raises:
            DecryptionError: the newest item does not decrypt (``on_error="raise"``). It has
                been removed from the store: the error's ``stored_item`` holds it as stored.
        """
        self._check_open()
        while True:
            stored = await self.inner.pop_item()
            if stored is None:
                return None
            try:
                return self._open(stored, -1)
            except DecryptionError as error:
                if self.on_error == "raise":
                    raise
                logger.warning("removed an item that does not decrypt: %s", error)

    async def clear_session(self) -> None:
        self._check_open()
        await self.inner.clear_session()

    async def _replace(
        self, items: list[EncodedItem], newest: int | None, expected: list[SessionItem] | None
    ) -> bool:
        """Encrypted under ``current`` and replaced in the wrapped session (which must offer
        ``replace_items``). With ``expected``, the newest envelopes are read and decrypted
        first, and the wrapped session swaps only while they are still the newest."""
        replace = getattr(self.inner, "replace_items", None)
        if replace is None:
            raise NotImplementedError(f"{type(self.inner).__name__} has no replace_items")
        sealed = [self._seal_json(item.json.encode(), decode_item(item.json)) for item in items]
        if expected is None:
            return bool(await replace(sealed, newest=newest))
        stored = await plain_items(self.inner, newest) if newest else []
        try:
            if len(stored) != len(expected) or self.open_items(stored) != expected:
                return False
        except DecryptionError:
            return False
        return bool(await replace(sealed, if_newest=stored))

    async def _close(self) -> None:
        await _close_session(self.inner)

    # --- key rotation ------------------------------------------------------------------------

    def _key_id_of(self, stored: object) -> str | None:
        """The key id a stored envelope names; ``None`` if it is not an envelope."""
        if isinstance(stored, dict) and stored.get("enc") == FORMAT:
            key_id = stored.get("kid")
            return key_id if isinstance(key_id, str) else None
        return None

    def _reencrypted(
        self, stored: list[SessionItem], *, from_key: str | None = None
    ) -> tuple[list[SessionItem], int]:
        """``stored`` (this session's envelopes, oldest first) with the items that are not
        under ``current`` (only those under ``from_key``, if given) encrypted under it; and how
        many changed.

        Raises:
            DecryptionError: an item to re-encrypt does not decrypt, whatever ``on_error``
                says: a rotation never drops an item.
        """
        result = list(stored)
        changed = 0
        for index, envelope in enumerate(stored):
            key_id = self._key_id_of(envelope)
            if key_id == self.current or (from_key is not None and key_id != from_key):
                continue
            item = self._open(envelope, index - len(stored))
            result[index] = self._seal_json(orjson.dumps(item), item)
            changed += 1
        return result, changed

    async def reencrypt(
        self, manager: SessionManagerABC[Any], *, from_key: str | None = None
    ) -> int:
        """Re-encrypt this session's stored items under ``current``, in one atomic replace of
        the history by ``manager`` (the manager of the store ``inner`` is on, e.g. the
        :class:`agentmem.CachedSessionManager` for a cached session).

        The history is read whole, re-encrypted in memory, checked unchanged (same item count
        and ``updated_at``; read again otherwise) and written back whole with its timestamps by
        ``manager.write_conversation`` (all or nothing). A write by another writer between
        that check and the write back is lost: run rotations while the session is not being
        written (``agentmem rotate-keys`` skips sessions already rotated, so it can be re-run).

        Args:
            manager: The manager of the store that holds this session.
            from_key: Only re-encrypt the items under this key id (default: every item not
                under ``current``).

        Returns:
            How many items were re-encrypted (0: nothing was written).

        Raises:
            DecryptionError: an item does not decrypt; nothing is written.
            RuntimeError: the session kept changing during five attempts; nothing is written.
        """
        self._check_open()
        for _ in range(_REPLACE_ATTEMPTS):
            conversation = await manager.read_conversation(self.session_id)
            if conversation is None:
                return 0
            items, changed = self._reencrypted(conversation.items, from_key=from_key)
            if not changed:
                return 0
            info = await manager.session_info(self.session_id)
            if (
                info is None
                or info.item_count != len(items)
                or conversation.updated_at is None
                or utc(info.updated_at) != utc(conversation.updated_at)
            ):
                continue
            # Its owner, title, metadata, expiry and fork origin too: only the items change.
            await manager.write_conversation(dataclasses.replace(conversation, items=items))
            return changed
        raise RuntimeError(
            f"session {self.session_id!r} changed during each of {_REPLACE_ATTEMPTS} attempts "
            "to re-encrypt it; nothing was written"
        )

    def __repr__(self) -> str:
        return (
            f"EncryptedSession({self.inner!r}, current={self.current!r}, key_ids={self.key_ids!r})"
        )


@dataclass
class RotationReport:
    """What :func:`rotate_store` did.

    Attributes:
        sessions_checked: Sessions read.
        sessions_rotated: Sessions written back with items moved to the new key.
        items_rotated: Items moved to the new key.
        failed: ``(session id, error message)`` of the sessions left as they were because an
            item under the old key does not decrypt (or the session kept changing).
    """

    sessions_checked: int = 0
    sessions_rotated: int = 0
    items_rotated: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


def rotation_keys(keys: Mapping[str, object], from_key: str, to_key: str) -> dict[str, bytes]:
    """The validated ``keys`` of a rotation from ``from_key`` to ``to_key``.

    Raises:
        TypeError, ValueError: a bad key, or ``from_key``/``to_key`` missing or equal.
    """
    parsed = parse_keys(keys)
    for role, key_id in (("from", from_key), ("to", to_key)):
        if key_id not in parsed:
            raise ValueError(f"the {role} key id {key_id!r} is not in keys {sorted(parsed)!r}")
    if from_key == to_key:
        raise ValueError(f"the from and to key ids are the same ({from_key!r})")
    return parsed


async def rotate_store(
    manager: SessionManagerABC[Any],
    *,
    keys: Mapping[str, object],
    from_key: str,
    to_key: str,
    page_size: int = 500,
    on_session: Callable[[str], object] | None = None,
) -> RotationReport:
    """Move every item under ``from_key`` in ``manager``'s store to ``to_key``, one session at
    a time (each with :meth:`EncryptedSession.reencrypt`), over the manager's listing read
    ``page_size`` sessions at a time.

    Resumable: a session without items under ``from_key`` is read, not written, so running it
    again after an interruption finishes the rest. Items under other key ids, and items that
    are not encrypted, are left as they are. A session whose items under ``from_key`` do not
    all decrypt is left as it was and reported in ``failed``; the others go on.

    Args:
        manager: The store's manager.
        keys: Key id -> key; must hold ``from_key`` and ``to_key``.
        from_key: The key id to move items away from.
        to_key: The key id to encrypt them under.
        page_size: Sessions listed per page.
        on_session: Called with each session id once that session is done.

    Raises:
        TypeError, ValueError: bad keys, or ``from_key``/``to_key`` missing or equal.
    """
    parsed = rotation_keys(keys, from_key, to_key)
    report = RotationReport()
    async for info in manager.iter_sessions(page_size=page_size):
        session = EncryptedSession(
            manager.get_session(info.session_id), keys=parsed, current=to_key
        )
        try:
            changed = await session.reencrypt(manager, from_key=from_key)
        except (DecryptionError, RuntimeError) as error:
            report.failed.append((info.session_id, str(error)))
            changed = 0
        finally:
            await session.close()
        report.sessions_checked += 1
        if changed:
            report.sessions_rotated += 1
            report.items_rotated += changed
        if on_session is not None:
            on_session(info.session_id)
    return report


async def _close_session(session: Session) -> None:
    close = getattr(session, "close", None)
    if close is not None:
        await close()
