"""Stateful property test: any sequence of add/pop/clear/get/get(limit), through one or two
session objects on one id, gives exactly what a plain Python list gives, on every backend."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from agentmem import Session
from tests.conftest import unique_id
from tests.reliability import _strategies
from tests.reliability._stores import PROFILE, Store

T = TypeVar("T")


def _machine(store: Store) -> type[RuleBasedStateMachine]:
    class History(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.runner = asyncio.Runner()
            session_id = unique_id("model")
            self.handles: list[Session] = [store.open(session_id)]
            if store.shared:  # a second object on the same id sees the same history
                self.handles.append(store.open(session_id))
            self.model: list[dict[str, Any]] = []

        def run(self, call: Coroutine[Any, Any, T]) -> T:
            return self.runner.run(call)

        def handle(self, index: int) -> Session:
            return self.handles[index % len(self.handles)]

        @rule(handle=st.integers(0, 1), items=st.lists(_strategies.items, max_size=6))
        def add(self, handle: int, items: list[dict[str, Any]]) -> None:
            self.run(self.handle(handle).add_items(items))
            self.model.extend(items)

        @rule(handle=st.integers(0, 1))
        def pop(self, handle: int) -> None:
            expected = self.model.pop() if self.model else None
            assert self.run(self.handle(handle).pop_item()) == expected

        @rule(handle=st.integers(0, 1))
        def clear(self, handle: int) -> None:
            self.run(self.handle(handle).clear_session())
            self.model.clear()

        @rule(handle=st.integers(0, 1), limit=st.integers(0, 10))
        def get_limit(self, handle: int, limit: int) -> None:
            expected = self.model[-limit:] if limit else []
            assert self.run(self.handle(handle).get_items(limit=limit)) == expected

        @invariant()
        def get_all(self) -> None:
            assert self.run(self.handles[-1].get_items()) == self.model

        def teardown(self) -> None:
            try:
                self.run(self.handles[0].clear_session())
                for session in self.handles:
                    self.run(session.close())  # type: ignore[attr-defined]
            finally:
                self.runner.close()

    return History


def test_any_sequence_of_operations_matches_a_list(any_store: Store) -> None:
    run_state_machine_as_test(_machine(any_store), settings=PROFILE)
