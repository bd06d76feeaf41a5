"""The conformance kit (``agentmem.testing``) as a user runs it: pytest, in a project of its own
(no agentmem configuration, so pytest-asyncio's strict mode), on toy Session classes kept in a
list in memory. The README's example passes every test; one that breaks the contract fails the
tests that name what it breaks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest

from agentmem import SessionABC
from agentmem.items import decode_item, encode_items

pytestmark = pytest.mark.sqlite

README = Path(__file__).resolve().parent.parent / "README.md"

REVERSED = """

class ReversedListSession(ListSession):
    \"\"\"Wrong: hands the history back newest first.\"\"\"

    async def get_items(self, limit=None):
        return list(reversed(await super().get_items(limit)))


class TestReversedListSession(SessionConformance):
    async def new_session(self, session_id, **options):  # a coroutine function works too
        return ReversedListSession(session_id, **options)
"""


def readme_example() -> str:
    """The README's example: a correct list-backed session and its conformance test class."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Checking your own Session") :]
    start = section.index("```python\n") + len("```python\n")
    return section[start : section.index("```\n", start)]


def test_the_readme_session_passes_the_kit_and_a_reversed_one_fails_it(tmp_path: Path) -> None:
    (tmp_path / "test_toy.py").write_text(readme_example() + REVERSED, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "test_toy.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    outcomes: dict[str, dict[str, str]] = {"TestListSession": {}, "TestReversedListSession": {}}
    for line in result.stdout.splitlines():
        outcome, _, node = line.partition(" ")
        if outcome in ("PASSED", "FAILED", "SKIPPED", "ERROR") and "::" in node:
            _, test_class, test = node.split(" ")[0].split("::")
            outcomes[test_class][test] = outcome
    assert result.returncode == 1, result.stdout + result.stderr
    correct, reversed_ = outcomes["TestListSession"], outcomes["TestReversedListSession"]
    assert len(correct) == len(reversed_) == 52, result.stdout
    assert set(correct.values()) == {"PASSED"}, result.stdout
    failed = {test.partition("[")[0] for test, outcome in reversed_.items() if outcome == "FAILED"}
    assert {
        "test_items_come_back_oldest_first",
        "test_limit_returns_newest_oldest_first",
        "test_session_settings_limit_is_the_default",
        "test_sdk_items_round_trip",
        "test_odd_items_round_trip",
    } <= failed
    # What it does not break still passes.
    assert reversed_["test_new_session_is_empty"] == "PASSED"
    assert reversed_["test_pop_returns_newest_then_none"] == "PASSED"


class OldListSession(SessionABC):
    """A subclass written before ``replace_items``: the four operations, no ``_replace``."""

    histories: ClassVar[dict[str, list[str]]] = {}

    async def get_items(self, limit: int | None = None) -> list[Any]:
        limit = self._resolve_limit(limit)
        history = self.histories.get(self.session_id, [])
        if limit is not None:
            history = history[len(history) - limit :] if limit else []
        return [decode_item(data) for data in history]

    async def add_items(self, items: list[Any]) -> None:
        encoded = encode_items(items)
        self.histories.setdefault(self.session_id, []).extend(item.json for item in encoded)

    async def pop_item(self) -> Any:
        history = self.histories.get(self.session_id)
        return decode_item(history.pop()) if history else None

    async def clear_session(self) -> None:
        self.histories.pop(self.session_id, None)

    async def _close(self) -> None:
        pass


class NewerListSession(OldListSession):
    """Its subclass that adds replacement."""

    async def _replace(self, items: list[Any], newest: int | None, expected: Any) -> bool:
        self.histories[self.session_id] = [item.json for item in items]
        return True


async def test_a_subclass_without_replace_still_works_and_names_what_replace_needs() -> None:
    async with OldListSession("old") as session:
        await session.add_items([{"n": 1}, {"n": 2}])
        assert await session.get_items() == [{"n": 1}, {"n": 2}]
        with pytest.raises(NotImplementedError, match=r"OldListSession\._replace"):
            await session.replace_items([{"n": 3}])
        assert await session.get_items() == [{"n": 1}, {"n": 2}]
    # No atomic-replacement hooks for the OpenAI Agents SDK's compaction: it clears and adds.
    assert getattr(OldListSession, "_atomic_replace_items", None) is None
    assert getattr(OldListSession("old"), "_get_compaction_snapshot", None) is None
    async with NewerListSession("newer") as newer:
        await newer.add_items([{"n": 1}])
        assert await NewerListSession._atomic_replace_items(newer, [{"n": 9}]) is True
        assert await newer.get_items() == [{"n": 9}]
        assert newer._get_compaction_snapshot is not None


def test_without_pytest_asyncio_the_kit_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['pytest_asyncio'] = None\n"
        "try:\n"
        "    import agentmem.testing\n"
        "except ImportError as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.startswith("MissingDependencyError pytest_asyncio is not installed")
    assert 'pip install "agentmem-sessions[testing]"' in result.stdout


def test_the_kits_sdk_items_are_those_the_sdk_stored(sdk_items: list[Any]) -> None:
    from agentmem.testing import SDK_ITEMS

    assert sdk_items == SDK_ITEMS
