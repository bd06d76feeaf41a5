"""Every example in examples/ runs, offline (agentmem's demo model stands in for OpenAI's).

The scripts run in a subprocess in ``tmp_path`` (their SQLite files land there); the FastAPI app
is driven through its HTTP API with httpx, on PostgreSQL.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import REDIS_URL, unique_id

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, *args: str, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.sqlite
def test_quickstart_remembers_and_a_second_run_continues(tmp_path: Path) -> None:
    first = run_example("quickstart.py", cwd=tmp_path).splitlines()
    assert first == ["San Francisco.", "California.", "4 items stored", *first[3:]]
    assert "800,000" in first[3]
    assert (tmp_path / "conversations.db").is_file()

    second = run_example("quickstart.py", cwd=tmp_path).splitlines()
    assert second[2] == "10 items stored"  # 6 from the first run (3 turns) + 2 turns


@pytest.mark.sqlite
def test_corrections_with_pop_item(tmp_path: Path) -> None:
    out = run_example("corrections.py", cwd=tmp_path).splitlines()
    assert out == [
        "Agent: 4.",
        'Removed: "What\'s 2 + 2?" and its answer (message)',
        "Agent: 5.",
        'The session holds 2 items; the first is "What\'s 2 + 3?"',
    ]


@pytest.mark.sqlite
def test_multiple_sessions_are_isolated(tmp_path: Path) -> None:
    out = run_example("multiple_sessions.py", cwd=tmp_path).splitlines()
    assert out[1] == "user_123: What state is it in? -> California."
    assert out[2].startswith("user_456: What state is it in? -> Which place do you mean?")


@pytest.mark.redis
def test_redis_session_manager(redis_client: Any, tmp_path: Path) -> None:
    out = run_example("redis_manager.py", REDIS_URL, cwd=tmp_path).splitlines()
    assert out == [
        "What city is the Golden Gate Bridge in? -> San Francisco.",
        "What state is it in? -> California.",
        "user_123 stored: True",
        "4 items, expiring in 1:00:00",
        "user_123 after delete: []",
    ]


# --- the FastAPI app -----------------------------------------------------------------------------


def load_app(database_url: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.syspath_prepend(str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(
        f"fastapi_app_{unique_id()}", EXAMPLES / "fastapi_app.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
async def client(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    """An httpx client on the app, its lifespan (migrations, engine disposal) running."""
    import httpx

    app = load_app(postgres_url, monkeypatch).app
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
            yield http


@pytest.mark.postgres
async def test_fastapi_app_keeps_one_conversation_per_user(client: Any) -> None:
    alice, bob = unique_id("alice"), unique_id("bob")

    first = await client.post(
        f"/users/{alice}/messages", json={"text": "What city is the Golden Gate Bridge in?"}
    )
    assert first.status_code == 200
    assert first.json() == {"reply": "San Francisco.", "items": 2}

    second = await client.post(f"/users/{alice}/messages", json={"text": "What state is it in?"})
    assert second.json() == {"reply": "California.", "items": 4}

    other = await client.post(f"/users/{bob}/messages", json={"text": "What state is it in?"})
    assert other.json()["reply"].startswith("Which place do you mean?")

    history = (await client.get(f"/users/{alice}/messages")).json()
    assert [item.get("role") for item in history] == ["user", "assistant"] * 2
    assert history[2]["content"] == "What state is it in?"
    newest = (await client.get(f"/users/{alice}/messages", params={"limit": 1})).json()
    assert newest == history[-1:]

    assert (await client.delete(f"/users/{alice}/messages")).status_code == 204
    assert (await client.get(f"/users/{alice}/messages")).json() == []
    assert len((await client.get(f"/users/{bob}/messages")).json()) == 2
    await client.delete(f"/users/{bob}/messages")


LONG_ID = "x" * 251  # with the app's "user:" prefix, one past the longest session id


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("method", "path", "body", "where", "says"),
    [
        (
            "GET",
            "/users/{alice}/messages?limit=-1",
            None,
            ["query", "limit"],
            "greater than or equal to 0",
        ),
        ("GET", "/users/{alice}/messages?limit=ten", None, ["query", "limit"], "valid integer"),
        (
            "GET",
            "/users/{alice}/messages?limit=" + "9" * 30,
            None,
            ["query", "limit"],
            "less than or equal",
        ),
        ("GET", f"/users/{LONG_ID}/messages", None, ["path", "user_id"], "at most 250 characters"),
        (
            "DELETE",
            f"/users/{LONG_ID}/messages",
            None,
            ["path", "user_id"],
            "at most 250 characters",
        ),
        ("GET", "/users/a%00b/messages", None, ["path", "user_id"], "NUL"),
        ("POST", f"/users/{LONG_ID}/messages", {"text": "Hi"}, ["path", "user_id"], "at most 250"),
        ("POST", "/users/a%00b/messages", {"text": "Hi"}, ["path", "user_id"], "NUL"),
        ("POST", "/users/{alice}/messages", ["Hi"], ["body"], "valid dictionary"),
        ("POST", "/users/{alice}/messages", "Hi", ["body"], "valid dictionary"),
        ("POST", "/users/{alice}/messages", {"text": 5}, ["body", "text"], "valid string"),
        ("POST", "/users/{alice}/messages", {"text": ""}, ["body", "text"], "at least 1 character"),
        ("POST", "/users/{alice}/messages", {}, ["body", "text"], "Field required"),
    ],
)
async def test_fastapi_app_answers_bad_input_with_422_and_writes_nothing(
    client: Any, method: str, path: str, body: Any, where: list[str], says: str
) -> None:
    alice = unique_id("alice")
    response = await client.request(method, path.format(alice=alice), json=body)
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == where
    assert says in error["msg"]
    assert (await client.get(f"/users/{alice}/messages")).json() == []


@pytest.mark.postgres
async def test_fastapi_app_accepts_the_limits_edges(client: Any) -> None:
    user = unique_id("edge").ljust(250, "u")  # the longest user id the app takes
    await client.post(f"/users/{user}/messages", json={"text": "What's 2 + 2?"})
    for limit, expected in ((0, 0), (1, 1), (10_000, 2)):
        response = await client.get(f"/users/{user}/messages", params={"limit": limit})
        assert response.status_code == 200
        assert len(response.json()) == expected
    assert (await client.delete(f"/users/{user}/messages")).status_code == 204
