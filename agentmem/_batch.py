"""Batch ids: each ``add_items`` call's unique id, stored with its items, so that a retry of a
write whose reply was lost is recognised by the store and applied once.

Core: it imports nothing else of agentmem.
"""

from __future__ import annotations

import os

__all__ = ["BATCH_ID_LENGTH", "new_batch_id"]

BATCH_ID_LENGTH = 32


def new_batch_id() -> str:
    """A new batch id: 32 lower-case hex digits, 128 random bits from the OS (as a random UUID's
    122, at a quarter of the cost)."""
    return os.urandom(16).hex()
