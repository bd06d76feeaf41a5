"""The Session contract, stated once in the conformance kit (``agentmem.testing``) and run
against every backend (see ``BACKENDS``).

Select one backend with its marker: ``pytest -m sqlite`` needs no server.
"""

from __future__ import annotations

from typing import Any

import pytest

from agentmem import Session
from agentmem.testing import SessionConformance
from tests.conftest import SessionFactory


class TestSessionContract(SessionConformance):
    """The kit's tests on each backend's sessions, from the registry's factories."""

    @pytest.fixture
    def make_session(self, make_session: SessionFactory) -> SessionFactory:
        """The suite's ``make_session`` (tests/conftest.py): each backend in turn."""
        return make_session

    @pytest.fixture
    def sdk_items(self, sdk_items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The items the SDK's Runner really stored (shared/fixtures/sdk_items.json)."""
        return sdk_items

    def shares_history(self, session: Session) -> bool:
        # An in-memory SQLite database is private to its session object (also when wrapped).
        while hasattr(session, "inner"):
            session = session.inner
        return getattr(session, "db_path", None) != ":memory:"
