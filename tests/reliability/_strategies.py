"""Hypothesis strategies of the JSON items and session ids agentmem is given."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
items: st.SearchStrategy[dict[str, Any]] = st.dictionaries(
    st.text(max_size=10), json_values, max_size=5
)
"""Any JSON object, SDK-like or not."""

session_ids = st.text(
    st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=255
)
"""Every valid id: 1-255 characters, no NUL, no lone surrogate."""

any_strings = st.text(st.characters(codec=None, categories=None), max_size=300)
"""Any string at all, invalid ids included (empty, NUL, too long; surrogates come from
``characters(codec=None)`` which the default alphabet of ``text`` leaves out)."""
