"""Batch ids: each ``add_items`` call's unique id, stored with its items, so that a retry of a
write whose reply was lost is recognised by the store and applied once.

Core: it imports nothing else of agentmem.
"""

from __future__ import annotations

import uuid

__all__ = ["BATCH_ID_LENGTH", "new_batch_id"]

BATCH_ID_LENGTH = 32


def new_batch_id() -> str:
    """A new batch id: 32 lower-case hex digits (a random UUID)."""
    return uuid.uuid4().hex
