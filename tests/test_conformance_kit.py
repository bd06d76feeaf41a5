"""The conformance kit (``agentmem.testing``) as a user runs it: pytest, in a project of its own
(no agentmem configuration, so pytest-asyncio's strict mode), on toy Session classes kept in a
list in memory. The README's example passes every test; one that breaks the contract fails the
tests that name what it breaks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

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
