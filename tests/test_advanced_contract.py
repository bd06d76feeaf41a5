"""The Session contract (tests/test_contract.py) over ``AdvancedSession`` wrapping each backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from agentmem import AdvancedSession
from tests._backends import NEW_ID
from tests.conftest import SessionFactory
from tests.test_contract import *  # noqa: F403  (the contract tests, collected again here)


@pytest.fixture
async def make_session(make_session: SessionFactory) -> AsyncIterator[SessionFactory]:
    """The backend's factory, each session wrapped in an ``AdvancedSession``."""
    made: list[AdvancedSession] = []

    async def make(session_id: Any = NEW_ID, **kwargs: Any) -> AdvancedSession:
        advanced = AdvancedSession(await make_session(session_id, **kwargs))  # type: ignore[arg-type]
        made.append(advanced)
        return advanced

    yield make
    for advanced in made:
        if not advanced.closed:
            await advanced.clear_session()
            await advanced.close()
