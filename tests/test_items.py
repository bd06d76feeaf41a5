"""encode_items, the validation and encoding every backend's write path shares: its batch path
gives what encode_item gives item by item, raises the same error for the first bad item, and
batch ids keep their format."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest

from agentmem._batch import BATCH_ID_LENGTH, new_batch_id
from agentmem.items import EncodedItem, decode_item, encode_item, encode_items


class _Float(float):
    pass


class _Dict(dict[str, Any]):
    pass


GOOD: list[Any] = [
    {"role": "user", "content": "hi"},
    {"type": "reasoning", "summary": [], "encrypted_content": None, "status": None},
    {"type": "function_call", "call_id": "c", "arguments": '{"q": null}', "name": "f"},
    {"role": "assistant", "type": "message", "content": [{"text": "x", "logprobs": None}]},
    {"role": "r" * 64, "type": "t" * 65},
    {"role": 1, "type": ["message"]},
    {"v": None, "w": "null", "x": (1.5, None, {"y": [None, 2.0]})},
    _Dict(role="user", n=1),
    {},
]

BAD: list[Any] = [
    {"v": math.nan},
    {"v": None, "w": [1.0, {"x": -math.inf}]},
    {"v": None, "w": (None, math.inf)},
    {"v": None, "w": _Float("nan")},
    {"v": {1, 2}},
    {"v": 2**64},
    {1: "int key"},
    "not a dict",
    None,
]


def test_a_batch_encodes_as_its_items_one_by_one() -> None:
    encoded = encode_items(GOOD)
    assert encoded == [encode_item(item, index) for index, item in enumerate(GOOD)]
    assert all(type(item) is EncodedItem for item in encoded)
    assert [decode_item(item.json) for item in encoded[:4]] == GOOD[:4]
    assert encoded[4][1:] == ("r" * 64, None)
    assert encoded[5][1:] == (None, None)
    assert encode_items(tuple(GOOD)) == encoded
    assert encode_items([]) == []


@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize("position", [0, 2, len(GOOD)])
def test_the_first_bad_item_raises_its_own_error(bad: Any, position: int) -> None:
    items = [*GOOD[:position], bad, *GOOD[position:], {"v": math.nan}]
    with pytest.raises((TypeError, ValueError)) as expected:
        encode_item(bad, position)
    with pytest.raises(type(expected.value), match=f"^item {position} ") as raised:
        encode_items(items)
    assert str(raised.value) == str(expected.value)


def test_batch_ids_are_unique_lower_case_hex() -> None:
    ids = [new_batch_id() for _ in range(1000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(f"[0-9a-f]{{{BATCH_ID_LENGTH}}}", batch_id) for batch_id in ids)
