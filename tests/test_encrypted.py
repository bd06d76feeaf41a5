"""EncryptedSession: the Session contract over every backend wrapped, and what encryption adds.

The whole contract suite of ``test_contract.py`` runs again here with ``make_session`` handing out
an :class:`EncryptedSession` around each backend of ``BACKENDS``; key rotation runs over every
backend's manager (``MANAGERS``).
"""

from __future__ import annotations

import base64
import logging
import sys
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from agentmem import DecryptionError, EncryptedSession, EncryptionError, MissingDependencyError
from agentmem.wrappers import generate_key
from agentmem.wrappers.encrypted import FORMAT
from tests._backends import NEW_ID
from tests.conftest import BACKENDS, MANAGERS, ManagerCase, SessionFactory
from tests.test_contract import *  # noqa: F403  # the contract suite, on the wrapped backends

OLD = generate_key()
NEW = generate_key()
KEYS = {"2026-01": OLD}


def encrypted(inner: Any, **options: Any) -> EncryptedSession:
    options.setdefault("keys", KEYS)
    options.setdefault("current", "2026-01")
    return EncryptedSession(inner, **options)


@pytest.fixture(params=BACKENDS)
def make_session(request: pytest.FixtureRequest) -> SessionFactory:
    """Encrypted sessions around each backend's sessions in turn."""
    make_inner: SessionFactory = request.getfixturevalue(request.param)

    async def make(session_id: Any = NEW_ID, **kwargs: Any) -> EncryptedSession:
        return encrypted(await make_inner(session_id, **kwargs))

    return make


@pytest.fixture
def make_inner(sqlite_file_session: SessionFactory) -> SessionFactory:
    """Plain sessions on one SQLite file, for the tests that look at what is stored."""
    return sqlite_file_session


# --- what is stored ------------------------------------------------------------------------------


async def test_the_store_holds_envelopes_without_the_items(make_session: SessionFactory) -> None:
    session = await make_session()
    assert isinstance(session, EncryptedSession)
    item = {"role": "user", "type": "message", "content": "my secret plan"}
    await session.add_items([item, item])
    stored = await session.inner.get_items()
    assert [sorted(envelope) for envelope in stored] == [["data", "enc", "kid"]] * 2
    assert {envelope["kid"] for envelope in stored} == {"2026-01"}
    assert {envelope["enc"] for envelope in stored} == {FORMAT}
    assert "secret" not in str(stored) and "user" not in str(stored)
    assert stored[0]["data"] != stored[1]["data"]  # a fresh nonce per item
    assert await session.get_items() == [item, item]


@pytest.mark.sqlite
async def test_clear_fields_keeps_role_and_type_in_clear(make_inner: SessionFactory) -> None:
    session = encrypted(await make_inner(), clear_fields=("role", "type"))
    # The content has spaces, which no base64 ciphertext holds, so it cannot show up by chance.
    said = {"role": "user", "content": "the words in clear"}
    await session.add_items([said, {"type": "reasoning"}])
    stored = await session.inner.get_items()
    assert stored[0]["role"] == "user" and "type" not in stored[0]
    assert stored[1]["type"] == "reasoning" and "role" not in stored[1]
    assert "the words in clear" not in str(stored)
    assert await session.get_items() == [said, {"type": "reasoning"}]


@pytest.mark.sqlite
async def test_an_altered_clear_field_is_detected(make_inner: SessionFactory) -> None:
    session = encrypted(await make_inner(), clear_fields=("role",))
    await session.add_items([{"role": "user", "content": "hi"}])
    [envelope] = await session.inner.get_items()
    await session.inner.clear_session()
    await session.inner.add_items([{**envelope, "role": "system"}])
    with pytest.raises(DecryptionError, match="'role' field was altered"):
        await session.get_items()


@pytest.mark.sqlite
async def test_the_ciphertext_is_the_json_plus_28_bytes(make_inner: SessionFactory) -> None:
    session = encrypted(await make_inner())
    item = {"role": "user", "content": "x" * 1000}
    await session.add_items([item])
    [envelope] = await session.inner.get_items()
    assert len(base64.b64decode(envelope["data"])) == len(orjson.dumps(item)) + 28


@pytest.mark.sqlite
async def test_a_duplicate_within_one_session_is_not_detected(make_inner: SessionFactory) -> None:
    """A documented limit: items are authenticated one by one, not the history as a whole."""
    session = encrypted(await make_inner())
    await session.add_items([{"n": 1}])
    await session.inner.add_items(await session.inner.get_items())
    assert await session.get_items() == [{"n": 1}, {"n": 1}]


# --- items that do not decrypt -------------------------------------------------------------------


async def _store_with_middle(session: EncryptedSession, change: Callable[[Any], Any]) -> None:
    """Three items in ``session``; the stored middle one replaced by ``change(stored)``."""
    await session.add_items([{"n": 0}, {"n": 1}, {"n": 2}])
    stored = await session.inner.get_items()
    await session.inner.clear_session()
    await session.inner.add_items([stored[0], change(stored[1]), stored[2]])


def _flip_a_bit(envelope: dict[str, Any]) -> dict[str, Any]:
    raw = bytearray(base64.b64decode(envelope["data"]))
    raw[-20] ^= 1
    return {**envelope, "data": base64.b64encode(bytes(raw)).decode()}


TAMPERED = [
    pytest.param(_flip_a_bit, "authentication tag", id="flipped-bit"),
    pytest.param(lambda e: {**e, "kid": "2025-12"}, "key id '2025-12' is not in keys", id="kid"),
    pytest.param(lambda e: {**e, "data": "!!"}, "not base64", id="not-base64"),
    pytest.param(lambda e: {**e, "data": "AAAA"}, "authentication tag", id="truncated"),
    pytest.param(lambda e: {"n": 1}, "not an item of an encrypted session", id="plaintext"),
    pytest.param(lambda e: {**e, "data": 7}, "malformed", id="malformed"),
]


@pytest.mark.sqlite
@pytest.mark.parametrize(("change", "reason"), TAMPERED)
async def test_a_tampered_item_raises_naming_session_and_position(
    make_inner: SessionFactory, change: Callable[[Any], Any], reason: str
) -> None:
    session = encrypted(await make_inner())
    await _store_with_middle(session, change)
    with pytest.raises(DecryptionError, match=reason) as raised:
        await session.get_items()
    assert raised.value.session_id == session.session_id
    assert raised.value.position == -2
    assert f"position -2 (-1 is the newest) of session {session.session_id!r}" in str(raised.value)
    assert isinstance(raised.value, EncryptionError)
    assert await session.get_items(limit=1) == [{"n": 2}]  # the others still read
    assert await session.pop_item() == {"n": 2}
    with pytest.raises(DecryptionError, match=reason) as popped:
        await session.pop_item()
    assert popped.value.position == -1
    assert popped.value.stored_item is not None
    assert await session.get_items() == [{"n": 0}]


@pytest.mark.sqlite
async def test_pop_keeps_the_removed_item_in_the_error(make_inner: SessionFactory) -> None:
    session = encrypted(await make_inner())
    await session.inner.add_items([{"plain": "text"}])
    with pytest.raises(DecryptionError) as raised:
        await session.pop_item()
    assert raised.value.stored_item == {"plain": "text"}
    assert await session.inner.get_items() == []


async def test_an_item_copied_into_another_session_does_not_decrypt(
    make_session: SessionFactory,
) -> None:
    source = await make_session()
    target = await make_session()
    await source.add_items([{"secret": "for source only"}])
    await target.add_items([{"n": 1}])
    await target.inner.add_items(await source.inner.get_items())
    with pytest.raises(DecryptionError, match="authentication tag") as raised:
        await target.get_items()
    assert raised.value.session_id == target.session_id
    assert raised.value.position == -1
    assert await target.get_items(limit=0) == []


@pytest.mark.sqlite
async def test_another_key_does_not_decrypt(make_inner: SessionFactory) -> None:
    inner = await make_inner()
    await encrypted(inner).add_items([{"n": 1}])
    impostor = encrypted(inner, keys={"2026-01": NEW})
    with pytest.raises(DecryptionError, match="authentication tag"):
        await impostor.get_items()


@pytest.mark.sqlite
async def test_skip_leaves_out_and_logs(
    make_inner: SessionFactory, caplog: pytest.LogCaptureFixture
) -> None:
    session = encrypted(await make_inner(), on_error="skip")
    await _store_with_middle(session, _flip_a_bit)
    with caplog.at_level(logging.WARNING, logger="agentmem.encryption"):
        assert await session.get_items() == [{"n": 0}, {"n": 2}]
    assert "position -2" in caplog.text and session.session_id in caplog.text
    assert await session.pop_item() == {"n": 2}
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="agentmem.encryption"):
        assert await session.pop_item() == {"n": 0}  # the undecryptable one removed, logged
    assert "removed an item" in caplog.text
    assert await session.pop_item() is None


# --- keys ----------------------------------------------------------------------------------------


@pytest.mark.sqlite
async def test_keys_may_be_raw_bytes_or_either_base64(make_inner: SessionFactory) -> None:
    raw = base64.b64decode(OLD)
    inner = await make_inner()
    await encrypted(inner, keys={"k": raw}, current="k").add_items([{"n": 1}])
    urlsafe = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    assert await encrypted(inner, keys={"k": urlsafe}, current="k").get_items() == [{"n": 1}]


BAD_OPTIONS = [
    pytest.param({"keys": {"k": "c2hvcnQ="}}, ValueError, "'k' is 5 bytes long", id="short"),
    pytest.param({"keys": {"k": b"x" * 31}}, ValueError, "32 bytes", id="31-bytes"),
    pytest.param({"keys": {"k": "not base64 at all!"}}, ValueError, "not valid base64", id="b64"),
    pytest.param({"keys": {"k": 42}}, TypeError, "bytes or a base64 str", id="int-key"),
    pytest.param({"keys": {}}, ValueError, "at least one key", id="no-keys"),
    pytest.param({"keys": [OLD]}, TypeError, "mapping", id="list-of-keys"),
    pytest.param({"keys": {"": OLD}}, ValueError, "printable", id="empty-id"),
    pytest.param({"keys": {"a\nb": OLD}}, ValueError, "printable", id="control-id"),
    pytest.param({"keys": {1: OLD}}, TypeError, "key id", id="int-id"),
    pytest.param({"current": "2099-01"}, ValueError, "'2099-01' is not in keys", id="current"),
    pytest.param({"on_error": "ignore"}, ValueError, "on_error", id="on-error"),
    pytest.param({"clear_fields": ("content",)}, ValueError, "'role' and 'type'", id="content"),
    pytest.param({"clear_fields": "role"}, TypeError, "not a str", id="str-fields"),
]


@pytest.mark.sqlite
@pytest.mark.parametrize(("options", "error", "message"), BAD_OPTIONS)
async def test_bad_keys_and_options_are_refused_at_construction(
    make_inner: SessionFactory, options: dict[str, Any], error: type[Exception], message: str
) -> None:
    options = {"current": "k", **options} if "keys" in options else options
    with pytest.raises(error, match=message) as raised:
        encrypted(await make_inner(), **options)
    assert OLD not in str(raised.value)


@pytest.mark.sqlite
async def test_missing_cryptography_names_the_extra(
    make_inner: SessionFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives.ciphers.aead", None)
    with pytest.raises(
        MissingDependencyError, match=r'pip install "agentmem-sessions\[encryption\]"'
    ):
        encrypted(await make_inner())


@pytest.mark.sqlite
async def test_wrappers_compose(make_inner: SessionFactory) -> None:
    outer = encrypted(encrypted(await make_inner(), keys={"in": NEW}, current="in"))
    await outer.add_items([{"n": 1}, {"n": 2}])
    assert await outer.get_items() == [{"n": 1}, {"n": 2}]
    assert await outer.inner.get_items() != [{"n": 1}, {"n": 2}]
    assert await outer.pop_item() == {"n": 2}
    await outer.close()
    assert outer.inner.closed  # type: ignore[attr-defined]


# --- key rotation --------------------------------------------------------------------------------


@pytest.fixture(params=MANAGERS)
def case(request: pytest.FixtureRequest) -> ManagerCase:
    """Each backend's manager in turn (see ``MANAGERS``)."""
    value: ManagerCase = request.getfixturevalue(request.param)
    return value


async def test_old_items_stay_readable_and_reencrypt_moves_them(case: ManagerCase) -> None:
    session_id = case.new_id()
    old = encrypted(case.manager.get_session(session_id))
    await old.add_items([{"n": 0}, {"n": 1}])
    before = await case.manager.session_info(session_id)
    both = {"2026-01": OLD, "2026-02": NEW}
    rotated = encrypted(case.manager.get_session(session_id), keys=both, current="2026-02")
    await rotated.add_items([{"n": 2}])
    assert await rotated.get_items() == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert [e["kid"] for e in await rotated.inner.get_items()] == ["2026-01", "2026-01", "2026-02"]

    assert await rotated.reencrypt(case.manager) == 2
    assert [e["kid"] for e in await rotated.inner.get_items()] == ["2026-02"] * 3
    assert await rotated.reencrypt(case.manager) == 0  # nothing left: nothing written
    after = await case.manager.session_info(session_id)
    assert before is not None and after is not None
    assert after.created_at == before.created_at and after.item_count == 3
    only_new = encrypted(case.manager.get_session(session_id), keys={"new": NEW}, current="new")
    with pytest.raises(DecryptionError, match="key id '2026-02' is not in keys"):
        await only_new.get_items()  # the key id is part of the associated data
    new_only = {"2026-02": NEW}
    latest = encrypted(case.manager.get_session(session_id), keys=new_only, current="2026-02")
    assert await latest.get_items() == [{"n": 0}, {"n": 1}, {"n": 2}]


async def test_reencrypt_writes_nothing_when_an_item_does_not_decrypt(case: ManagerCase) -> None:
    session_id = case.new_id()
    session = encrypted(case.manager.get_session(session_id))
    await session.add_items([{"n": 0}])
    await session.inner.add_items([{"plain": "text"}])
    rotated = encrypted(
        case.manager.get_session(session_id),
        keys={"2026-01": OLD, "2026-02": NEW},
        current="2026-02",
        on_error="skip",
    )
    stored = await session.inner.get_items()
    with pytest.raises(DecryptionError, match="position -1"):
        await rotated.reencrypt(case.manager)
    assert await session.inner.get_items() == stored


async def test_reencrypt_from_key_moves_only_that_key(case: ManagerCase) -> None:
    session_id = case.new_id()
    keys = {"a": OLD, "b": generate_key(), "c": NEW}
    for key_id in ("a", "b"):
        await encrypted(case.manager.get_session(session_id), keys=keys, current=key_id).add_items(
            [{"under": key_id}]
        )
    session = encrypted(case.manager.get_session(session_id), keys=keys, current="c")
    assert await session.reencrypt(case.manager, from_key="a") == 1
    assert [e["kid"] for e in await session.inner.get_items()] == ["c", "b"]
    assert await session.get_items() == [{"under": "a"}, {"under": "b"}]


@pytest.mark.sqlite
async def test_the_runner_remembers_through_encryption(make_inner: SessionFactory) -> None:
    from agents import Agent, Runner, set_tracing_disabled
    from agents.testing import ScriptedModel, assistant_message

    set_tracing_disabled(True)
    model = ScriptedModel([[assistant_message("San Francisco")], [assistant_message("California")]])
    agent = Agent(name="Assistant", instructions="Reply very concisely.", model=model)
    session = encrypted(await make_inner())
    try:
        await Runner.run(agent, "What city is the Golden Gate Bridge in?", session=session)
        await Runner.run(agent, "What state is it in?", session=session)
    finally:
        set_tracing_disabled(False)
    second_input = model.calls[1].input
    assert second_input[0] == {"content": "What city is the Golden Gate Bridge in?", "role": "user"}
    assert "San Francisco" in str(second_input[1])
    assert len(await session.get_items()) == 4
    assert "Golden Gate" not in str(await session.inner.get_items())
