"""The ``agentmem`` command, run for real in a subprocess against SQLite, PostgreSQL and Redis.

Isolation: SQLite files live in ``tmp_path``; each PostgreSQL test gets a database of its own
(created and dropped here); Redis tests use a key prefix under this run's prefix, whose keys the
``redis_client`` fixture deletes.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import pty
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests._backends import Backend, new_postgres_database
from tests.conftest import POSTGRES_URL, REDIS_PREFIX, REDIS_URL, unique_id

SCRIPT = Path(sys.executable).with_name("agentmem")
REPO = Path(__file__).resolve().parent.parent


def agentmem(
    *args: str, cwd: Path, env: dict[str, str] | None = None, ok: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m agentmem.cli ARGS`` (offline: no OpenAI key, no database URL set)."""
    environment = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OPENAI_API_KEY", "AGENTMEM_DATABASE_URL", "COLUMNS")
    }
    environment.update(env or {})
    result = subprocess.run(
        [sys.executable, "-m", "agentmem.cli", *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if ok:
        assert result.returncode == 0, result.stderr
    return result


def assert_user_error(result: subprocess.CompletedProcess[str], *phrases: str) -> None:
    """Exit status 1, one line on stderr naming the problem, no traceback, nothing on stdout."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("agentmem: error: ")
    assert "Traceback" not in result.stderr
    for phrase in phrases:
        assert phrase in lines[0]
    assert result.stdout == ""


# --- stores --------------------------------------------------------------------------------------


Store = Backend
"""One isolated store, named on the command line by ``store.args`` (the registry's
:class:`~tests._backends.Backend`: "sqlite-file", "postgres" or "redis")."""


def sqlite_file(path: Path) -> Store:
    return Store("sqlite-file", str(path))


@pytest.fixture
def empty_postgres() -> Iterator[str]:
    """A new PostgreSQL database without agentmem's schema: its plain ``postgresql://`` URL."""
    from sqlalchemy.engine import make_url

    with new_postgres_database(POSTGRES_URL, f"agentmem_cli_{uuid.uuid4().hex[:12]}") as url:
        yield make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
def postgres_store(empty_postgres: str, tmp_path: Path) -> Store:
    agentmem("upgrade", "--url", empty_postgres, cwd=tmp_path)
    return Store("postgres", empty_postgres)


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Store:
    return sqlite_file(tmp_path / "store.db")


@pytest.fixture
def redis_store(redis_client: Any) -> Store:
    return Store("redis", redis_url=REDIS_URL, prefix=f"{REDIS_PREFIX}:cli-{uuid.uuid4().hex}")


STORES = [
    pytest.param("sqlite_store", marks=pytest.mark.sqlite, id="sqlite"),
    pytest.param("postgres_store", marks=pytest.mark.postgres, id="postgres"),
    pytest.param("redis_store", marks=pytest.mark.redis, id="redis"),
]


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest) -> Store:
    """Each kind of store in turn, empty and ready."""
    value: Store = request.getfixturevalue(request.param)
    return value


def write_export(path: Path, conversations: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(c) + "\n" for c in conversations), encoding="utf-8")
    return path


def conversation(session_id: str, updated: str, items: list[Any]) -> dict[str, Any]:
    """An exported conversation, timestamps in the export's form (UTC, microseconds)."""
    return {
        "session_id": session_id,
        "created_at": "2024-12-01T03:04:05.123456+00:00",
        "updated_at": datetime.fromisoformat(updated).isoformat(timespec="microseconds"),
        "items": items,
    }


def seed(store: Store, tmp_path: Path, conversations: list[dict[str, Any]]) -> None:
    export = write_export(tmp_path / f"seed-{uuid.uuid4().hex}.jsonl", conversations)
    agentmem("sessions", "import", str(export), *store.args, cwd=tmp_path)


def jsonl(text: str) -> list[Any]:
    """The objects of JSON Lines text (split on newlines only: U+2028 may appear raw)."""
    return [json.loads(line) for line in text.split("\n") if line]


def listed(store: Store, tmp_path: Path, *options: str) -> list[dict[str, Any]]:
    result = agentmem("sessions", "list", "--json", *options, *store.args, cwd=tmp_path)
    value: list[dict[str, Any]] = json.loads(result.stdout)
    return value


# --- the demo ------------------------------------------------------------------------------------


def test_demo_on_the_default_sqlite_file_and_a_second_run_continues(tmp_path: Path) -> None:
    first = agentmem("demo", cwd=tmp_path)

    assert "offline" in first.stdout
    assert (tmp_path / "agentmem.db").is_file()
    assert str(tmp_path / "agentmem.db") in first.stdout
    transcript = first.stdout
    for question, answer in [
        ("What city is the Golden Gate Bridge in?", "San Francisco"),
        ("What state is it in?", "California"),
        ("What's the population?", "800,000"),
    ]:
        assert f"You:       {question}\nAssistant: " in transcript
        assert answer in transcript.split(question, 1)[1].split("\n", 2)[1]

    second = agentmem("demo", cwd=tmp_path)
    assert "Continuing the conversation: 6 items already stored." in second.stdout
    assert "You asked 3 question(s): 1. What city is the Golden Gate Bridge in?" in second.stdout
    shown = json.loads(agentmem("sessions", "show", "demo", "--json", cwd=tmp_path).stdout)
    assert shown["items"] == 8


def test_demo_answers_from_the_stored_history(store: Store, tmp_path: Path) -> None:
    agentmem("demo", "What city is the Golden Gate Bridge in?", *store.args, cwd=tmp_path)
    # A new process: "it" can only be resolved from what the store remembered.
    result = agentmem("demo", "--json", "What state is it in?", *store.args, cwd=tmp_path)
    data = json.loads(result.stdout)

    assert data["model"] == "offline"
    assert data["turns"] == [{"question": "What state is it in?", "answer": "California."}]
    assert (data["items_before"], data["items"]) == (2, 4)

    other = agentmem(
        "demo", "--json", "--session", "fresh", "What state is it in?", *store.args, cwd=tmp_path
    )
    assert "Which place do you mean?" in json.loads(other.stdout)["turns"][0]["answer"]


def test_demo_uses_agentmem_database_url(sqlite_store: Store, tmp_path: Path) -> None:
    agentmem("demo", "--json", cwd=tmp_path, env={"AGENTMEM_DATABASE_URL": sqlite_store.url})

    assert not (tmp_path / "agentmem.db").exists()
    assert [s["session_id"] for s in listed(sqlite_store, tmp_path)] == ["demo"]


# --- migrations ----------------------------------------------------------------------------------


@pytest.mark.postgres
def test_upgrade_current_check_on_postgres(empty_postgres: str, tmp_path: Path) -> None:
    from agentmem import migrate

    before = agentmem("current", "--json", "--url", empty_postgres, cwd=tmp_path)
    assert json.loads(before.stdout)["current"] is None
    assert_user_error(
        agentmem("check", "--url", empty_postgres, cwd=tmp_path, ok=False), "agentmem upgrade"
    )

    upgraded = agentmem("upgrade", "--url", empty_postgres, cwd=tmp_path)
    assert f"to {migrate.head()}" in upgraded.stdout
    after = json.loads(agentmem("current", "--json", "--url", empty_postgres, cwd=tmp_path).stdout)
    assert (after["current"], after["at_head"]) == (migrate.head(), True)
    assert "head revision" in agentmem("check", "--url", empty_postgres, cwd=tmp_path).stdout
    again = agentmem("upgrade", "--url", empty_postgres, cwd=tmp_path)
    assert "already at the head revision" in again.stdout


@pytest.mark.sqlite
def test_upgrade_creates_a_sqlite_file_with_a_table_prefix(tmp_path: Path) -> None:
    import sqlite3

    url = f"sqlite:///{tmp_path / 'new.db'}"
    agentmem("upgrade", "--url", url, "--table-prefix", "am_", cwd=tmp_path)

    with sqlite3.connect(tmp_path / "new.db") as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert {"am_sessions", "am_messages", "am_agentmem_alembic_version"} <= tables
    agentmem("check", "--url", url, "--table-prefix", "am_", cwd=tmp_path)
    assert_user_error(agentmem("check", "--url", url, cwd=tmp_path, ok=False), "do not exist")


# --- sessions list / show / delete ---------------------------------------------------------------


def test_list_is_newest_first_with_limit_and_offset(store: Store, tmp_path: Path) -> None:
    seed(
        store,
        tmp_path,
        [
            conversation("old", "2025-01-01T00:00:00+00:00", [{"role": "user", "content": "a"}]),
            conversation("newest", "2025-03-01T00:00:00+00:00", []),
            conversation("middle", "2025-02-01T00:00:00+00:00", [{"n": 1}, {"n": 2}]),
        ],
    )

    everything = listed(store, tmp_path)
    assert [(s["session_id"], s["items"]) for s in everything] == [
        ("newest", 0),
        ("middle", 2),
        ("old", 1),
    ]
    assert everything[1]["updated_at"] == "2025-02-01T00:00:00.000000+00:00"
    page = listed(store, tmp_path, "--limit", "1", "--offset", "1")
    assert [s["session_id"] for s in page] == ["middle"]

    table = agentmem("sessions", "list", "--limit", "2", *store.args, cwd=tmp_path).stdout
    lines = table.splitlines()
    assert lines[0].split() == ["SESSION", "ID", "ITEMS", "UPDATED", "(UTC)", "CREATED", "(UTC)"]
    assert lines[1].split()[:3] == ["newest", "0", "2025-03-01"]
    assert "more with --offset 2" in lines[-1]


def test_show_prints_the_history(store: Store, tmp_path: Path, sdk_items: list[Any]) -> None:
    seed(store, tmp_path, [conversation("chat", "2025-01-01T00:00:00+00:00", sdk_items)])

    table = agentmem("sessions", "show", "chat", *store.args, cwd=tmp_path).stdout
    assert f"Session 'chat': {len(sdk_items)} items" in table
    assert "What's the weather in Paris?" in table
    assert 'get_weather({"city":"Paris"})' in table

    newest = agentmem("sessions", "show", "chat", "--limit", "2", *store.args, cwd=tmp_path)
    numbers = [line.split()[0] for line in newest.stdout.splitlines()[3:]]
    assert numbers == [str(len(sdk_items) - 1), str(len(sdk_items))]

    data = json.loads(
        agentmem("sessions", "show", "chat", "--json", *store.args, cwd=tmp_path).stdout
    )
    assert data["history"] == sdk_items


def test_delete_removes_one_session(store: Store, tmp_path: Path) -> None:
    seed(
        store,
        tmp_path,
        [
            conversation("keep", "2025-01-01T00:00:00+00:00", [{"n": 1}]),
            conversation("drop", "2025-01-01T00:00:00+00:00", [{"n": 1}, {"n": 2}]),
        ],
    )

    result = agentmem("sessions", "delete", "drop", *store.args, cwd=tmp_path)

    assert "Deleted session 'drop' (2 items)" in result.stdout
    assert [s["session_id"] for s in listed(store, tmp_path)] == ["keep"]
    again = agentmem("sessions", "delete", "drop", *store.args, cwd=tmp_path, ok=False)
    assert_user_error(again, "no session 'drop'")


# --- export / import / copy ----------------------------------------------------------------------


def odd_items(sdk_items: list[Any]) -> list[Any]:
    return [
        *sdk_items,
        {"role": "user", "content": 'héllo 🌍 \u2028 \\ "quoted"\n', "n": 2**63 - 1},
        {"nested": [[[{"deep": None, "f": 1.5e-300, "t": True}]]], "empty": {}, "list": []},
        {"type": "big", "text": "x" * 200_000},
    ]


def test_export_then_import_restores_everything(
    store: Store, tmp_path: Path, sdk_items: list[Any]
) -> None:
    originals = [
        conversation("a/b {tag} %", "2025-01-01T10:00:00.250000+00:00", odd_items(sdk_items)),
        conversation("empty", "2025-01-01T09:00:00+00:00", []),
    ]
    seed(store, tmp_path, originals)

    exported = agentmem("sessions", "export", *store.args, cwd=tmp_path).stdout
    assert jsonl(exported) == originals

    agentmem("sessions", "export", "empty", "-o", "one.jsonl", *store.args, cwd=tmp_path)
    assert json.loads((tmp_path / "one.jsonl").read_text()) == originals[1]

    target = sqlite_file(tmp_path / "restored.db")
    (tmp_path / "all.jsonl").write_text(exported, encoding="utf-8")
    agentmem("sessions", "import", "all.jsonl", *target.args, cwd=tmp_path)
    restored = agentmem("sessions", "export", *target.args, cwd=tmp_path).stdout
    assert restored == exported


@pytest.mark.postgres
@pytest.mark.redis
def test_copy_round_trip_through_every_backend(
    sqlite_store: Store,
    postgres_store: Store,
    redis_store: Store,
    tmp_path: Path,
    sdk_items: list[Any],
) -> None:
    originals = [
        conversation(
            f"user-{n}", f"2025-01-{n + 1:02d}T12:00:00.{n:06d}+00:00", odd_items(sdk_items)
        )
        for n in range(5)
    ] + [conversation("empty", "2024-12-31T00:00:00+00:00", [])]
    seed(sqlite_store, tmp_path, originals)
    final = sqlite_file(tmp_path / "final.db")

    chain = [sqlite_store, redis_store, postgres_store, final]  # includes Redis -> PostgreSQL
    for source, target in itertools.pairwise(chain):
        result = agentmem(
            "sessions",
            "copy",
            "--from",
            source.url,
            "--to",
            target.url,
            *source.extra,
            *target.extra,
            cwd=tmp_path,
        )
        assert "Copied 6 sessions" in result.stdout

    exports = [agentmem("sessions", "export", *store.args, cwd=tmp_path).stdout for store in chain]
    assert exports[0] == exports[1] == exports[2] == exports[3]
    by_id = {c["session_id"]: c for c in jsonl(exports[3])}
    assert sorted(by_id) == sorted(c["session_id"] for c in originals)
    assert all(by_id[c["session_id"]] == c for c in originals)


def with_lifecycle(session_id: str, updated: str, items: list[Any]) -> dict[str, Any]:
    """An exported conversation with an owner, title, metadata, expiry (in an hour) and fork
    origin, in the export's order of fields."""
    expires = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=125000)
    plain = conversation(session_id, updated, items)
    return {
        **{key: plain[key] for key in ("session_id", "created_at", "updated_at")},
        "user_id": f"owner-of-{session_id}",
        "title": "A title ✓",
        "metadata": {"topic": "billing", "tags": ["a", "b"], "n": 1.5},
        "expires_at": expires.isoformat(timespec="microseconds"),
        "forked_from": "the-parent",
        "fork_point": 2,
        "items": items,
    }


def same_lifecycle(exported: list[dict[str, Any]], originals: list[dict[str, Any]]) -> None:
    """``exported`` holds ``originals`` (any order), expiries within a second (Redis keeps a
    time to live, not a time)."""
    by_id = {c["session_id"]: c for c in exported}
    assert sorted(by_id) == sorted(c["session_id"] for c in originals)
    for original in originals:
        got = dict(by_id[original["session_id"]])
        expected = dict(original)
        got_expiry, expected_expiry = got.pop("expires_at", None), expected.pop("expires_at", None)
        assert got == expected
        assert (got_expiry is None) == (expected_expiry is None)
        if got_expiry is not None:
            drift = datetime.fromisoformat(got_expiry) - datetime.fromisoformat(expected_expiry)
            assert abs(drift) < timedelta(seconds=1)


def test_export_import_and_copy_keep_the_lifecycle(
    store: Store, sqlite_store: Store, tmp_path: Path
) -> None:
    originals = [
        with_lifecycle("kept", "2025-01-01T10:00:00.250000+00:00", [{"n": 1}, {"n": 2}]),
        conversation("old-format", "2025-01-01T09:00:00+00:00", [{"n": 3}]),
    ]
    seed(store, tmp_path, originals)
    exported = jsonl(agentmem("sessions", "export", *store.args, cwd=tmp_path).stdout)
    same_lifecycle(exported, originals)
    shown = agentmem("sessions", "info", "kept", "--json", *store.args, cwd=tmp_path).stdout
    assert json.loads(shown)["user_id"] == "owner-of-kept"

    target = sqlite_file(tmp_path / "copied.db")
    agentmem(
        "sessions", "copy", "--from", store.url, "--to", target.url, *store.extra, cwd=tmp_path
    )
    same_lifecycle(
        jsonl(agentmem("sessions", "export", *target.args, cwd=tmp_path).stdout), originals
    )
    mine = agentmem(
        "sessions", "list", "--user", "owner-of-kept", "--json", *target.args, cwd=tmp_path
    ).stdout
    assert [s["session_id"] for s in json.loads(mine)["sessions"]] == ["kept"]


def test_copy_selected_sessions_refuses_to_overwrite_unless_replace(
    store: Store, sqlite_store: Store, tmp_path: Path
) -> None:
    source = sqlite_file(tmp_path / "source.db")
    seed(
        source,
        tmp_path,
        [
            conversation("one", "2025-01-01T00:00:00+00:00", [{"v": "new"}]),
            conversation("two", "2025-01-01T00:00:00+00:00", [{"v": "two"}]),
        ],
    )
    seed(store, tmp_path, [conversation("one", "2024-01-01T00:00:00+00:00", [{"v": "old"}])])
    copy = ["sessions", "copy", "--from", source.url, "--to", store.url, *store.extra, "one"]

    refused = agentmem(*copy, cwd=tmp_path, ok=False)
    assert_user_error(refused, "already in", "--replace")
    old = json.loads(
        agentmem("sessions", "show", "one", "--json", *store.args, cwd=tmp_path).stdout
    )
    assert old["history"] == [{"v": "old"}]

    agentmem(*copy, "--replace", cwd=tmp_path)
    new = json.loads(
        agentmem("sessions", "show", "one", "--json", *store.args, cwd=tmp_path).stdout
    )
    assert new["history"] == [{"v": "new"}]
    assert [s["session_id"] for s in listed(store, tmp_path)] == ["one"]  # "two" not selected


def test_import_of_a_bad_file_writes_nothing(store: Store, tmp_path: Path) -> None:
    good = json.dumps(conversation("fine", "2025-01-01T00:00:00+00:00", [{"n": 1}]))
    for name, bad_line, phrase in [
        ("garbage.jsonl", "{not json", "not JSON"),
        ("item.jsonl", json.dumps({"session_id": "x", "items": [[1]]}), "not a dict"),
        ("id.jsonl", json.dumps({"session_id": "", "items": []}), "session_id"),
        ("dup.jsonl", good, "appears twice"),
        ("owner.jsonl", json.dumps({"session_id": "x", "items": [], "user_id": ""}), "user_id"),
        ("meta.jsonl", json.dumps({"session_id": "x", "items": [], "metadata": [1]}), "metadata"),
        ("fork.jsonl", json.dumps({"session_id": "x", "items": [], "forked_from": "p"}), "fork"),
    ]:
        (tmp_path / name).write_text(f"{good}\n{bad_line}\n", encoding="utf-8")
        result = agentmem("sessions", "import", name, *store.args, cwd=tmp_path, ok=False)
        assert_user_error(result, phrase)
        if phrase != "appears twice":
            assert f"{name}:2:" in result.stderr
    assert_user_error(
        agentmem("sessions", "import", "missing.jsonl", *store.args, cwd=tmp_path, ok=False),
        "cannot read missing.jsonl",
    )
    if store.kind != "sqlite-file":  # a SQLite file that was never written does not exist
        assert listed(store, tmp_path) == []


# --- progress ------------------------------------------------------------------------------------


@pytest.mark.sqlite
def test_progress_bar_on_a_terminal_and_quiet_when_piped(tmp_path: Path) -> None:
    store = sqlite_file(tmp_path / "many.db")
    seed(
        store,
        tmp_path,
        [conversation(f"s{n}", "2025-01-01T00:00:00+00:00", [{"n": n}]) for n in range(40)],
    )

    piped = agentmem("sessions", "export", "-o", "out.jsonl", *store.args, cwd=tmp_path)
    assert piped.stderr == ""

    controller, terminal = pty.openpty()
    try:
        process = subprocess.run(
            [
                sys.executable,
                "-m",
                "agentmem.cli",
                "sessions",
                "export",
                "-o",
                "tty.jsonl",
                *store.args,
            ],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=terminal,
            timeout=120,
            check=True,
        )
        os.close(terminal)
        drawn = b""
        while chunk := _read(controller):
            drawn += chunk
    finally:
        os.close(controller)
    assert b"Exporting [" in drawn
    assert b"40/40" in drawn
    assert b"Exported 40 sessions" in process.stdout


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:  # the terminal's other end is closed
        return b""


# --- user errors: one line, no traceback -------------------------------------------------------


@pytest.mark.sqlite
@pytest.mark.parametrize(
    ("args", "phrases"),
    [
        (["sessions", "list", "--url", "mysql://db/x"], ["unsupported URL"]),
        (["sessions", "list", "--url", "sqlite://"], ["in-memory"]),
        (["sessions", "list", "--url", "sqlite:///nowhere.db"], ["no SQLite database at"]),
        (["sessions", "show", "x", "--url", "sqlite:///no/such/dir.db"], ["does not exist"]),
        (["upgrade", "--url", "sqlite:///no/such/dir.db"], ["does not exist"]),
        (["upgrade", "--url", "sqlite:///x.db", "--table-prefix", "Bad-"], ["table_prefix"]),
        (["sessions", "import", "nothing.jsonl"], ["cannot read"]),
    ],
)
def test_user_errors_on_sqlite(tmp_path: Path, args: list[str], phrases: list[str]) -> None:
    assert_user_error(agentmem(*args, cwd=tmp_path, ok=False), *phrases)


def test_unknown_session_is_one_line(store: Store, tmp_path: Path) -> None:
    seed(store, tmp_path, [conversation("there", "2025-01-01T00:00:00+00:00", [])])
    for command in (["show", "missing"], ["delete", "missing"], ["export", "there", "missing"]):
        result = agentmem("sessions", *command, *store.args, cwd=tmp_path, ok=False)
        assert_user_error(result, "no session 'missing'")


@pytest.mark.parametrize(
    ("url", "name"),
    [
        pytest.param("postgresql://postgres@127.0.0.1:1/x", "PostgreSQL", id="postgres"),
        pytest.param("redis://127.0.0.1:1/0", "Redis", id="redis"),
    ],
)
def test_unreachable_server_is_one_line(url: str, name: str, tmp_path: Path) -> None:
    for command in (["sessions", "list"], ["demo"], ["sessions", "export"]):
        result = agentmem(*command, "--url", url, cwd=tmp_path, ok=False)
        assert_user_error(result, f"cannot use {name} at", "127.0.0.1:1")


@pytest.mark.postgres
def test_database_behind_head_is_one_line_naming_the_fix(
    empty_postgres: str, tmp_path: Path
) -> None:
    for command in (["sessions", "list"], ["demo"], ["sessions", "show", "x"]):
        result = agentmem(*command, "--url", empty_postgres, cwd=tmp_path, ok=False)
        assert_user_error(result, "do not exist", "agentmem upgrade --url")


@pytest.mark.redis
def test_migrations_on_redis_are_a_user_error(redis_store: Store, tmp_path: Path) -> None:
    for command in ("upgrade", "current", "check"):
        result = agentmem(command, *redis_store.args, cwd=tmp_path, ok=False)
        assert_user_error(result, "Redis has no schema")


@pytest.mark.sqlite
def test_console_script_is_installed(tmp_path: Path) -> None:
    from agentmem import __version__

    result = subprocess.run(
        [str(SCRIPT), "--version"], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == f"agentmem {__version__}"
    usage = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert "demo" in usage.stdout
    assert "sessions" in usage.stdout


@pytest.mark.postgres
def test_plain_postgresql_url_with_the_default_tables(postgres_url: str, tmp_path: Path) -> None:
    plain = postgres_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    session_id = unique_id("cli")
    agentmem("demo", "--session", session_id, "--url", plain, "Hello", cwd=tmp_path)

    shown = json.loads(
        agentmem("sessions", "show", session_id, "--json", "--url", plain, cwd=tmp_path).stdout
    )
    assert [item.get("role") for item in shown["history"]] == ["user", "assistant"]
    agentmem("sessions", "delete", session_id, "--url", plain, cwd=tmp_path)


@pytest.mark.slow
@pytest.mark.sqlite
def test_readme_main_job_runs_the_demo_from_a_fresh_clone(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    (command,) = [
        line.split("#")[0].strip()
        for line in readme.splitlines()
        if line.startswith("bash scripts/") and "demo" in line
    ]
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "VIRTUAL_ENV")}
    env["PYTHON"] = sys.executable

    runs = [
        subprocess.run(
            command.split(), cwd=clone, env=env, capture_output=True, text=True, timeout=900
        )
        for _ in range(2)
    ]

    for run in runs:
        assert run.returncode == 0, run.stderr
    assert "Assistant: California." in runs[0].stdout
    assert f"at sqlite:///{clone / 'agentmem.db'}" in runs[0].stdout
    assert "Continuing the conversation: 6 items already stored." in runs[1].stdout


# --- hints repeat what was given -----------------------------------------------------------------


def hinted_commands(output: str) -> list[list[str]]:
    """The ``agentmem ...`` command lines an output suggests (between backticks), as argv."""
    import shlex

    return [
        shlex.split(part)[1:] for part in output.split("`")[1::2] if part.startswith("agentmem")
    ]


def test_demo_hints_repeat_every_option_given(store: Store, tmp_path: Path) -> None:
    options = [*store.args, "--session", "hinted"]
    if store.kind == "sqlite-file":
        options += ["--table-prefix", "am_"]  # the demo creates its tables on SQLite
    first = agentmem("demo", *options, "What city is the Golden Gate Bridge in?", cwd=tmp_path)

    again, show = hinted_commands(first.stdout.splitlines()[-1])
    assert again[0] == "demo"
    assert show[:3] == ["sessions", "show", "hinted"]
    continued = agentmem(*again, "What state is it in?", cwd=tmp_path)
    assert "Continuing the conversation: 2 items already stored." in continued.stdout
    assert "Assistant: California." in continued.stdout
    shown = agentmem(*show, cwd=tmp_path)
    assert "Session 'hinted': 4 items" in shown.stdout


@pytest.mark.postgres
def test_schema_hint_names_the_url_masked_and_the_table_prefix(
    empty_postgres: str, tmp_path: Path
) -> None:
    from sqlalchemy.engine import make_url

    secret_url = make_url(empty_postgres).set(password="s3cret-pw")  # trust auth ignores it
    url = secret_url.render_as_string(hide_password=False)
    result = agentmem(
        "sessions", "list", "--url", url, "--table-prefix", "am_", cwd=tmp_path, ok=False
    )

    assert_user_error(result, "do not exist")
    assert "s3cret-pw" not in result.stderr
    (upgrade,) = hinted_commands(result.stderr)
    masked = secret_url.render_as_string(hide_password=True)
    assert upgrade == ["upgrade", "--url", masked, "--table-prefix", "am_"]
    agentmem(*[url if word == masked else word for word in upgrade], cwd=tmp_path)
    assert agentmem("sessions", "list", "--url", url, "--table-prefix", "am_", cwd=tmp_path)


# --- --json errors, stdin, --limit 0, URL mistakes, help ---------------------------------------


def assert_json_error(
    result: subprocess.CompletedProcess[str], *phrases: str, code: int = 1
) -> None:
    """``{"error": "..."}`` as the one line on stderr, nothing on stdout, exit status ``code``."""
    assert result.returncode == code, (result.stdout, result.stderr)
    assert result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    error = json.loads(line)
    assert list(error) == ["error"]
    for phrase in phrases:
        assert phrase in error["error"]


@pytest.mark.sqlite
def test_json_errors_on_stderr(sqlite_store: Store, tmp_path: Path) -> None:
    seed(sqlite_store, tmp_path, [conversation("there", "2025-01-01T00:00:00+00:00", [])])
    (tmp_path / "bad.jsonl").write_text("{nope\n", encoding="utf-8")
    for command, phrase in [
        (["sessions", "show", "missing"], "no session 'missing'"),
        (["sessions", "delete", "missing"], "no session 'missing'"),
        (["sessions", "export", "missing"], "no session 'missing'"),
        (["sessions", "import", "bad.jsonl"], "bad.jsonl:1: not JSON"),
        (["check", "--table-prefix", "zz_"], "agentmem upgrade --url"),
        (["sessions", "copy", "--from", sqlite_store.url, "--to", sqlite_store.url], "same store"),
    ]:
        url = [] if command[1] == "copy" else ["--url", sqlite_store.url]
        assert_json_error(agentmem(*command, *url, "--json", cwd=tmp_path, ok=False), phrase)
    for usage in (["sessions", "list", "--limit", "-1"], ["sessions", "show"], ["nothing"]):
        assert_json_error(agentmem(*usage, "--json", cwd=tmp_path, ok=False), code=2)
    plain = agentmem("sessions", "show", "--url", sqlite_store.url, cwd=tmp_path, ok=False)
    assert plain.returncode == 2
    assert plain.stderr.startswith("usage: ")


@pytest.mark.sqlite
def test_import_dash_reads_stdin(sqlite_store: Store, tmp_path: Path) -> None:
    lines = [conversation("piped", "2025-01-01T00:00:00+00:00", [{"n": 1}])]
    result = subprocess.run(
        [sys.executable, "-m", "agentmem.cli", "sessions", "import", "-", *sqlite_store.args],
        input="".join(json.dumps(c) + "\n" for c in lines),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stderr
    assert "Imported 1 session (1 item)" in result.stdout
    exported = agentmem("sessions", "export", "-o", "-", *sqlite_store.args, cwd=tmp_path).stdout
    assert jsonl(exported) == lines


def test_export_piped_into_import_of_dev_stdin(store: Store, tmp_path: Path) -> None:
    originals = [
        conversation("p1", "2025-01-02T00:00:00+00:00", [{"n": 1}]),
        conversation("p2", "2025-01-01T00:00:00+00:00", [{"n": 2}, {"n": 3}]),
    ]
    seed(store, tmp_path, originals)
    target = sqlite_file(tmp_path / "piped.db")
    command = [sys.executable, "-m", "agentmem.cli", "sessions"]

    exporter = subprocess.Popen(
        [*command, "export", *store.args], cwd=tmp_path, stdout=subprocess.PIPE
    )
    importer = subprocess.run(
        [*command, "import", "/dev/stdin", *target.args],
        stdin=exporter.stdout,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert exporter.stdout is not None
    exporter.stdout.close()
    assert exporter.wait(timeout=120) == 0

    assert importer.returncode == 0, importer.stderr
    assert "Imported 2 sessions (3 items)" in importer.stdout
    assert jsonl(agentmem("sessions", "export", *target.args, cwd=tmp_path).stdout) == originals


def test_list_with_limit_zero_does_not_claim_no_sessions(store: Store, tmp_path: Path) -> None:
    seed(store, tmp_path, [conversation("one", "2025-01-01T00:00:00+00:00", [])])

    result = agentmem("sessions", "list", "--limit", "0", *store.args, cwd=tmp_path)

    assert "No sessions in" not in result.stdout
    assert "--limit 0" in result.stdout
    assert listed(store, tmp_path, "--limit", "0") == []


@pytest.mark.sqlite
@pytest.mark.parametrize(
    ("url", "phrases"),
    [
        ("sqlite://rel.db", ["names a host 'rel.db'", "use sqlite:///rel.db"]),
        ("rel.db", ["is not a URL", "use sqlite:///rel.db"]),
        ("/srv/data/app.db", ["is not a URL", "use sqlite:////srv/data/app.db"]),
        (
            "postgresql+pg8000://app:pw@db/app",
            ["postgresql+pg8000 needs a driver that is not installed", "postgresql://app:***@db"],
        ),
    ],
)
def test_url_mistakes_get_a_hint(tmp_path: Path, url: str, phrases: list[str]) -> None:
    # pg8000 is in no extra of agentmem: it is never installed in its test environment.
    assert "pg8000" not in url or importlib.util.find_spec("pg8000") is None
    result = agentmem("sessions", "list", "--url", url, cwd=tmp_path, ok=False)
    assert_user_error(result, *phrases)


@pytest.mark.sqlite
def test_options_before_the_command_get_a_hint(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    result = agentmem("--url", url, "--json", "sessions", "list", cwd=tmp_path, ok=False)

    assert_json_error(result, "options go after the command", code=2)
    (fixed,) = hinted_commands(json.loads(result.stderr)["error"])
    assert fixed == ["sessions", "list", "--url", url, "--json"]
    plain = agentmem("--url", url, "upgrade", cwd=tmp_path, ok=False)
    assert plain.returncode == 2
    assert f"`agentmem upgrade --url {url}`" in plain.stderr


@pytest.mark.sqlite
def test_schema_commands_do_not_list_redis_options(tmp_path: Path) -> None:
    for command in ("upgrade", "current", "check"):
        assert "--key-prefix" not in agentmem(command, "--help", cwd=tmp_path).stdout
    assert "--key-prefix" in agentmem("sessions", "list", "--help", cwd=tmp_path).stdout


# --- a SQLite file in use, credentials, timestamps ---------------------------------------------

HOLD_WRITE_LOCK = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA journal_mode=WAL")
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
"""


def wait_until_open(process: subprocess.Popen[str], path: Path) -> None:
    """Return once ``process`` has ``path`` open (Linux: its /proc/PID/fd links)."""
    import time

    fds = Path(f"/proc/{process.pid}/fd")
    deadline = time.monotonic() + 120  # a safety net only
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if any(os.path.realpath(fd) == str(path) for fd in fds.iterdir()):
                return
        except OSError:  # a descriptor closed while listed
            pass
        time.sleep(0.05)
    raise AssertionError(f"{process.args} never opened {path} (exit status {process.poll()})")


@pytest.mark.slow
@pytest.mark.sqlite
@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux's /proc")
def test_writes_wait_for_a_sqlite_file_in_use(tmp_path: Path) -> None:
    import time

    store = sqlite_file(tmp_path / "busy.db")
    seed(store, tmp_path, [conversation(n, "2025-01-01T00:00:00+00:00", []) for n in ("a", "b")])
    source = sqlite_file(tmp_path / "source.db")
    seed(source, tmp_path, [conversation("copied", "2025-01-01T00:00:00+00:00", [{"n": 1}])])
    export = write_export(
        tmp_path / "in.jsonl", [conversation("imported", "2025-01-01T00:00:00+00:00", [])]
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_WRITE_LOCK, str(tmp_path / "busy.db")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdin is not None
    command = [sys.executable, "-m", "agentmem.cli", "sessions"]
    try:
        assert holder.stdout.readline() == "locked\n"
        writers = [
            subprocess.Popen(
                [*command, *args],
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for args in (
                ["delete", "a", *store.args],
                ["import", str(export), *store.args],
                ["copy", "--from", source.url, "--to", store.url],
            )
        ]
        for writer in writers:  # each has reached the database
            wait_until_open(writer, tmp_path / "busy.db")
        # Well beyond the 5 s a connection without agentmem's settings waits, well within its
        # 30 s: the commands cannot finish while the lock is held, and must not give up.
        time.sleep(10)
        assert [writer.poll() for writer in writers] == [None, None, None]
    finally:
        holder.stdin.write("\n")
        holder.stdin.close()
        holder.wait(timeout=60)
    for writer in writers:
        _, stderr = writer.communicate(timeout=120)
        assert writer.returncode == 0, stderr
    assert sorted(s["session_id"] for s in listed(store, tmp_path)) == ["b", "copied", "imported"]


@pytest.mark.parametrize(
    "url",
    [
        "mysql://root:SECRET@db/app",
        "postgresql://postgres:SECRET@127.0.0.1:1/x",
        "redis://:SECRET@127.0.0.1:1/0",
        "rediss://user:SECRET@127.0.0.1:1/0",
        "redis://127.0.0.1:1/0?password=SECRET",
        "redis://127.0.0.1:1/0?password=SECRET&db=0",
        "unix:///no/such/redis.sock?password=SECRET",
        "unix://user:SECRET@/no/such/redis.sock",
        "postgresql://u:SECRET@[bad",
    ],
)
def test_passwords_are_never_printed(url: str, tmp_path: Path) -> None:
    result = agentmem("sessions", "list", "--url", url, cwd=tmp_path, ok=False)
    assert_user_error(result)
    assert "SECRET" not in result.stderr
    assert "***" in result.stderr
    misplaced = agentmem("--url", url, "demo", "--json", cwd=tmp_path, ok=False)
    assert misplaced.returncode == 2
    assert "SECRET" not in misplaced.stderr
    assert "***" in json.loads(misplaced.stderr)["error"]


@pytest.mark.postgres
def test_password_masked_in_output(empty_postgres: str, tmp_path: Path) -> None:
    from sqlalchemy.engine import make_url

    url = make_url(empty_postgres).set(password="SECRET").render_as_string(hide_password=False)
    upgraded = agentmem("upgrade", "--url", url, cwd=tmp_path)
    listed_text = agentmem("sessions", "list", "--url", url, cwd=tmp_path)
    demo = agentmem("demo", "--url", url, "Hello", cwd=tmp_path)

    for result in (upgraded, listed_text, demo):
        assert "SECRET" not in result.stdout + result.stderr
        assert ":***@" in result.stdout


def test_timestamp_out_of_range_fails_the_import_naming_the_line(
    store: Store, tmp_path: Path
) -> None:
    good = conversation("fine", "2025-01-01T00:00:00+00:00", [])
    for value in ("9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"):
        bad = {**good, "session_id": "bad", "created_at": value}
        write_export(tmp_path / "range.jsonl", [good, bad])
        result = agentmem("sessions", "import", "range.jsonl", *store.args, cwd=tmp_path, ok=False)
        assert_user_error(result, "range.jsonl:2:", "created_at", "out of range")
    if store.kind != "sqlite-file":  # a SQLite file that was never written does not exist
        assert listed(store, tmp_path) == []
    else:
        assert not (tmp_path / "store.db").exists()


# --- fork ----------------------------------------------------------------------------------------


def test_fork_copies_a_session_and_records_its_origin(store: Store, tmp_path: Path) -> None:
    items = [{"role": "user", "content": "one"}, {"role": "assistant", "content": "two"}]
    seed(store, tmp_path, [conversation("src", "2025-01-01T00:00:00+00:00", items)])

    result = agentmem("sessions", "fork", "src", "all", *store.args, cwd=tmp_path)
    assert "Forked session 'src' into 'all' (2 items)" in result.stdout
    result = agentmem(
        "sessions", "fork", "src", "first", "--upto", "1", "--json", *store.args, cwd=tmp_path
    )
    forked = json.loads(result.stdout)
    assert (forked["session_id"], forked["forked_from"], forked["items"]) == ("first", "src", 1)

    shown = agentmem("sessions", "show", "first", "--json", *store.args, cwd=tmp_path)
    assert json.loads(shown.stdout)["history"] == items[:1]
    shown = agentmem("sessions", "show", "all", "--json", *store.args, cwd=tmp_path)
    assert json.loads(shown.stdout)["history"] == items

    taken = agentmem("sessions", "fork", "src", "all", *store.args, cwd=tmp_path, ok=False)
    assert_user_error(taken, "'all' already holds items")
    missing = agentmem("sessions", "fork", "nope", "x", *store.args, cwd=tmp_path, ok=False)
    assert_user_error(missing, "no session 'nope'")
    bad = agentmem(
        "sessions", "fork", "src", "y", "--upto", "?", *store.args, cwd=tmp_path, ok=False
    )
    assert bad.returncode == 2 and "not an item cursor" in bad.stderr
