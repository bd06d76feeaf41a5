"""Batch ids: each ``add_items`` call's unique id, stored with its items, so that a retry of a
write whose reply was lost is recognised by the store and applied once.

Core: it imports nothing else of agentmem.
"""

from __future__ import annotations

import os

__all__ = ["BATCH_ID_BYTES", "BATCH_ID_LENGTH", "new_batch_id", "new_raw_batch_id"]

BATCH_ID_BYTES = 16
BATCH_ID_LENGTH = 2 * BATCH_ID_BYTES  # in hex digits


def new_raw_batch_id() -> bytes:
    """A new batch id as its 16 bytes: 128 random bits from the OS (as a random UUID's 122, at a
    quarter of the cost)."""
    return os.urandom(BATCH_ID_BYTES)


def new_batch_id() -> str:
    """A new batch id as 32 lower-case hex digits (see :func:`new_raw_batch_id`)."""
    return new_raw_batch_id().hex()
