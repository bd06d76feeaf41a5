"""The ``agentmem`` command: run the demo, migrate a database, inspect and move conversations,
rotate the keys of encrypted ones.

Every command takes ``--url`` (default: ``$AGENTMEM_DATABASE_URL``, else
``sqlite:///agentmem.db``): ``sqlite:///file.db``, ``postgresql://user@host/db`` or
``redis://host:6379/0``. ``--json`` prints machine-readable output. A user error prints one line
on stderr (with ``--json``: ``{"error": "..."}``) and exits with status 1; a usage error exits
with status 2. Passwords in URLs are masked in everything the command prints.

Example:
    $ agentmem demo
    $ agentmem sessions list
    $ agentmem sessions copy --from sqlite:///agentmem.db --to postgresql://app@db/app
    $ agentmem sessions fork demo demo-2 --upto 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from pathlib import Path
from typing import IO, Any, NoReturn

import orjson
from sqlalchemy.exc import DBAPIError

from agentmem import __version__
from agentmem._deps import missing
from agentmem._redact import mask_credentials
from agentmem.cli._keys import KEYS_ENV, read_keys
from agentmem.cli._stores import (
    DEFAULT_KEY_PREFIX,
    DEFAULT_URL,
    CLIError,
    OpenedStore,
    conversation_json,
    format_time,
    info_json,
    lifecycle_json,
    open_store,
    parse_conversation,
)
from agentmem.errors import MissingDependencyError
from agentmem.forks import ItemCursor
from agentmem.manager import Conversation, SessionInfo
from agentmem.session import validate_session_id
from agentmem.sql import migrate

__all__ = ["main"]

URL_ENV = "AGENTMEM_DATABASE_URL"
DEMO_SESSION_ID = "demo"
COMMANDS = ("demo", "upgrade", "current", "check", "sessions", "purge", "rotate-keys")


# --- output ------------------------------------------------------------------------------------


def emit_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Columns padded to their widest cell; the last column is left unpadded."""
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(headers)]
    for row in [headers, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip())


def short_time(info: SessionInfo, name: str) -> str:
    value = format_time(getattr(info, name))
    return "-" if value is None else value[:19].replace("T", " ")


def one_line(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: max(width - 1, 1)] + "…"


def describe_item(item: Any) -> tuple[str, str]:
    """(kind, summary) of a stored item, for ``sessions show``."""
    if not isinstance(item, dict):
        return "?", json.dumps(item)
    kind = str(item.get("role") or item.get("type") or "item")
    content = item.get("content")
    if isinstance(content, str):
        return kind, content
    if isinstance(content, list):
        parts = [p.get("text") or p.get("refusal") or "" for p in content if isinstance(p, dict)]
        return kind, " ".join(str(part) for part in parts if part)
    if item.get("type") == "function_call":
        return kind, f"{item.get('name')}({item.get('arguments', '')})"
    if "output" in item:
        output = item["output"]
        return kind, output if isinstance(output, str) else json.dumps(output)
    if item.get("type") == "reasoning":
        summary = item.get("summary") or []
        return kind, " ".join(str(s.get("text", "")) for s in summary if isinstance(s, dict))
    rest = {key: value for key, value in item.items() if key not in ("role", "type", "id")}
    return kind, json.dumps(rest, ensure_ascii=False)


class Progress:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal."""

    def __init__(self, label: str, total: int) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.enabled = sys.stderr.isatty() and total > 0

    def advance(self) -> None:
        self.done += 1
        if self.enabled:
            width = 30
            filled = width * self.done // self.total
            bar = "#" * filled + "." * (width - filled)
            sys.stderr.write(f"\r{self.label} [{bar}] {self.done}/{self.total}")
            sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


# --- commands ----------------------------------------------------------------------------------


async def cmd_demo(args: argparse.Namespace, stack: AsyncExitStack) -> int:
    try:
        from agentmem.cli import _demo
    except ImportError:
        raise missing("agents", "openai-agents") from None

    offline = not os.environ.get("OPENAI_API_KEY")
    store = await opened(stack, args.url, args, writing=True)
    session_id = validate_session_id(args.session)
    session = store.session(session_id)
    stack.push_async_callback(session.close)
    before = len(await session.get_items())
    questions = args.questions or (_demo.DOCS_QUESTIONS if before == 0 else [_demo.RECAP_QUESTION])
    turns = await _demo.run_turns(session, list(questions), offline=offline)
    after = len(await session.get_items())
    model = "offline" if offline else "openai"
    if args.json:
        emit_json(
            {
                "model": model,
                "url": store.display_url,
                "session_id": session_id,
                "items_before": before,
                "items": after,
                "turns": [{"question": t.question, "answer": t.answer} for t in turns],
            }
        )
        return 0
    if offline:
        print("Model: offline scripted demo model (no OPENAI_API_KEY set: no network, no key).")
    else:
        print("Model: OpenAI (OPENAI_API_KEY is set).")
    print(f"Storage: session {session_id!r} in {store.kind} at {store.display_url}")
    if before:
        print(f"Continuing the conversation: {count(before, 'item')} already stored.")
    print()
    for turn in turns:
        print(f"You:       {turn.question}")
        print(f"Assistant: {turn.answer}")
        print()
    options = given_store_options(args)
    again = ["demo", *(["--session", session_id] if session_id != DEMO_SESSION_ID else [])]
    print(f"Stored: {count(after, 'item')} in session {session_id!r} at {store.display_url}")
    print(
        f"Run `{command_line(*again, *options)}` again to continue the conversation, or "
        f"`{command_line('sessions', 'show', session_id, *options)}` to see what is stored."
    )
    return 0


def default_url() -> str:
    return os.environ.get(URL_ENV) or DEFAULT_URL


def given_store_options(args: argparse.Namespace) -> list[str]:
    """The store options of this command line that differ from their defaults, to repeat in a
    suggested command."""
    options = []
    if args.url != default_url():
        options += ["--url", args.url]
    if args.table_prefix:
        options += ["--table-prefix", args.table_prefix]
    if args.key_prefix != DEFAULT_KEY_PREFIX:
        options += ["--key-prefix", args.key_prefix]
    return options


def command_line(*words: str) -> str:
    """An ``agentmem`` command line for the shell, passwords masked."""
    return shlex.join(["agentmem", *(mask_credentials(word) for word in words)])


def sql_store(store: OpenedStore) -> OpenedStore:
    if not store.is_sql:
        raise CLIError(f"{store.kind} has no schema: migrations apply to SQL databases")
    return store


async def cmd_upgrade(args: argparse.Namespace, stack: AsyncExitStack) -> int:
    store = sql_store(await opened(stack, args.url, args, check=False))
    before = await store.current(must_exist=False)
    await store.upgrade()
    head = migrate.head()
    if args.json:
        emit_json({"url": store.display_url, "from": before, "to": head})
    elif before == head:
        print(f"{store.display_url} is already at the head revision {head}.")
    else:
        print(f"Upgraded {store.display_url} from {before or 'an empty schema'} to {head}.")
    return 0


async def cmd_current(args: argparse.Namespace, stack: AsyncExitStack) -> int:
    store = sql_store(await opened(stack, args.url, args, check=False))
    current = await store.current()
    head = migrate.head()
    if args.json:
        emit_json(
            {"url": store.display_url, "current": current, "head": head, "at_head": current == head}
        )
    elif current is None:
        print(f"{store.display_url}: no agentmem schema (head is {head})")
    else:
        state = "head" if current == head else f"behind head {head}"
        print(f"{store.display_url}: {current} ({state})")
    return 0


async def cmd_check(args: argparse.Namespace, stack: AsyncExitStack) -> int:
    store = sql_store(await opened(stack, args.url, args, check=False))
    store.require_head(await store.current())
    if args.json:
        emit_json({"url": store.display_url, "at_head": True, "head": migrate.head()})
    else:
        print(f"{store.display_url} is at the head revision {migrate.head()}.")
    return 0


async def cmd_find(args: argparse.Namespace, stack: AsyncExitStack) -> int:
    """``sessions list --user U`` / ``--cursor C``: one keyset page of ``find_sessions``."""
    if args.offset:
        raise CLIError("--offset does not combine with --user or --cursor (pages use --cursor)")
    if args.limit == 0:
        raise CLIError("--limit must be at least 1 with --user or --cursor")
    store = await opened(stack, args.url, args)
    page = await store.manager.find_sessions(
        user_id=args.user, limit=args.limit, cursor=args.cursor
    )
    if args.json:
        emit_json(
            {"sessions": [lifecycle_json(i) for i in page.items], "next_cursor": page.next_cursor}
        )
        return 0
    if not page.items:
        print(
            f"No sessions in {store.display_url}"
            + (f" of user {args.user!r}." if args.user else ".")
        )
        return 0
    rows = [
        [
            info.session_id,
            info.user_id or "",
            info.title or "",
            str(info.item_count),
            short_time(info, "updated_at"),
        ]
        for info in page.items
    ]
    print_table(["SESSION ID", "USER", "TITLE", "ITEMS", "UPDATED (UTC)"], rows)
    if page.next_cursor is not None:
        print(f"(more with --cursor {page.next_cursor})")
    return 0


async def cmd_info(args: argparse.Namespace, stack: AsyncExitStack) -> int:
    store = await opened(stack, args.url, args)
    info = await store.require(args.session_id)
    if args.json:
        emit_json(lifecycle_json(info))
        return 0
    rows = [
        ["session", info.session_id],
        ["user", info.user_id or "-"],
        ["title", info.title or "-"],
        ["items", str(info.item_count)],
        ["created (UTC)", short_time(info, "created_at")],
        ["updated (UTC)", short_time(info, "updated_at")],
        ["expires (UTC)", short_time(info, "expires_at") if info.expires_at else "never"],
        ["metadata", orjson.dumps(info.metadata).decode()],
    ]
    for name, value in rows:
        print(f"{name:<14} {value}")
    return 0


async def cmd_purge(args: argparse.Namespace, stack: AsyncExitStack) -> int:
    store = await opened(stack, args.url, args)
    progress = PurgeProgress(enabled=args.progress or (not args.json and sys.stderr.isatty()))
    deleted = await store.purge(args.batch_size, progress.advance)
    progress.done()
    if args.json:
        emit_json({"url": store.display_url, "purged": deleted})
    else:
        print(f"Purged {count(deleted, 'expired session')} from {store.display_url}.")
    return 0


class PurgeProgress:
    """The purge's progress bar on stderr: its total is unknown, so the bar fills a step per
    batch (and starts over) beside the running count."""

    WIDTH = 30

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self.total = 0
        self.batches = 0

    def advance(self, deleted: int) -> None:
        self.total += deleted
        self.batches += 1
        if self.enabled:
            filled = self.batches % (self.WIDTH + 1)
            bar = "#" * filled + "-" * (self.WIDTH - filled)
            print(f"\rpurging [{bar}] {self.total:,} deleted", end="", file=sys.stderr, flush=True)

    def done(self) -> None:
        if self.enabled and self.batches:
            print(file=sys.stderr)


async def cmd_list(args: argparse.Namespace, stack: AsyncExitStack) -> int:
    if args.user is not None or args.cursor is not None:
        return await cmd_find(args, stack)
    store = await opened(stack, args.url, args)
    infos = await store.list_sessions(args.limit, args.offset)
    if args.json:
        emit_json([info_json(info) for info in infos])
        return 0
    if args.limit == 0:
        print("No sessions shown: --limit 0.")
        return 0
    if not infos:
        print(f"No sessions in {store.display_url}" + (" at this offset." if args.offset else "."))
        return 0
    rows = [
        [
            info.session_id,
            str(info.item_count),
            short_time(info, "updated_at"),
            short_time(info, "created_at"),
        ]
        for info in infos
    ]
    print_table(["SESSION ID", "ITEMS", "UPDATED (UTC)", "CREATED (UTC)"], rows)
    if args.limit is not None and len(infos) == args.limit:
        print(f"(showing {len(infos)}; more with --offset {args.offset + len(infos)})")
    return 0


async def cmd_show(args: argparse.Namespace, stack: AsyncExitStack) -> int:
    store = await opened(stack, args.url, args)
    info = await store.require(args.session_id)
    session = store.session(info.session_id)
    stack.push_async_callback(session.close)
    items = await session.get_items(args.limit)
    if args.json:
        emit_json({**info_json(info), "shown": len(items), "history": items})
        return 0
    print(
        f"Session {info.session_id!r}: {count(info.item_count, 'item')}, created "
        f"{short_time(info, 'created_at')}, updated {short_time(info, 'updated_at')} (UTC)"
    )
    if not items:
        return 0
    first = info.item_count - len(items) + 1
    width = max(shutil.get_terminal_size().columns - 24, 40)
    rows = []
    for number, item in enumerate(items, first):
        kind, summary = describe_item(item)
        rows.append([str(number), kind, one_line(summary, width)])
    print()
    print_table(["#", "KIND", "CONTENT"], rows)
    return 0


async def cmd_delete(args: argparse.Namespace, stack: AsyncExitStack) -> int:
    store = await opened(stack, args.url, args)
    session_id = validate_session_id(args.session_id)
    removed = await store.delete(session_id)
    if removed is None:
        raise CLIError(f"no session {session_id!r} in {store.display_url}")
    if args.json:
        emit_json({"session_id": session_id, "deleted_items": removed})
    else:
        print(
            f"Deleted session {session_id!r} ({count(removed, 'item')}) from {store.display_url}."
        )
    return 0


async def cmd_fork(args: argparse.Namespace, stack: AsyncExitStack) -> int:
    store = await opened(stack, args.url, args, writing=True)
    origin = await store.fork(args.session_id, args.new_id, args.upto)
    copied = origin.fork_point.count
    report(
        args,
        f"Forked session {origin.parent_id!r} into {args.new_id!r} ({count(copied, 'item')}) "
        f"in {store.display_url}.",
        {
            "session_id": args.new_id,
            "forked_from": origin.parent_id,
            "fork_point": str(origin.fork_point),
            "items": copied,
        },
    )
    return 0


async def selected_ids(store: OpenedStore, requested: Sequence[str]) -> list[str]:
    """The requested sessions (each must exist), or every session, newest first."""
    if not requested:
        return [info.session_id for info in await store.list_sessions()]
    ids = list(dict.fromkeys(validate_session_id(i) for i in requested))
    missing_ids = [i for i in ids if i not in await store.existing(ids)]
    if missing_ids:
        raise CLIError(f"no session {missing_ids[0]!r} in {store.display_url}")
    return ids


async def cmd_export(args: argparse.Namespace, stack: AsyncExitStack) -> int:
    store = await opened(stack, args.url, args)
    ids = await selected_ids(store, args.session_ids)
    output = None if args.output == "-" else args.output
    out = stack.enter_context(output_stream(output))
    sessions = items = 0
    progress = Progress("Exporting", len(ids))
    for session_id in ids:
        conversation = await store.read(session_id)
        progress.advance()
        if conversation is None:  # deleted meanwhile
            continue
        out.write(orjson.dumps(conversation_json(conversation)) + b"\n")
        sessions += 1
        items += len(conversation.items)
    out.flush()
    progress.finish()
    if output:
        summary = {"sessions": sessions, "items": items, "file": output}
        if args.json:
            emit_json(summary)
        else:
            print(f"Exported {count(sessions, 'session')} ({count(items, 'item')}) to {output}.")
    return 0


@contextmanager
def output_stream(path: str | None) -> Iterator[IO[bytes]]:
    """The export's destination: the file ``path``, else stdout."""
    if path is None:
        yield sys.stdout.buffer
        return
    try:
        f = open(path, "wb")  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise CLIError(f"cannot write {path}: {exc.strerror}") from None
    with f:
        yield f


@contextmanager
def input_stream(name: str) -> Iterator[IO[bytes]]:
    """The import's source: the file ``name``, or stdin for ``-``."""
    if name == "-":
        yield sys.stdin.buffer
        return
    try:
        f = Path(name).open("rb")  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise CLIError(f"cannot read {name}: {exc.strerror}") from None
    with f:
        yield f


def read_export(source: IO[bytes], name: str) -> Iterator[tuple[int, bytes, Conversation]]:
    """(line number, line, conversation) for each non-blank line of an export, read once."""
    try:
        for number, line in enumerate(source, 1):
            if not line.strip():
                continue
            try:
                yield number, line, parse_conversation(orjson.loads(line))
            except orjson.JSONDecodeError as exc:
                raise CLIError(f"{name}:{number}: not JSON ({exc})") from None
            except CLIError as exc:
                raise CLIError(f"{name}:{number}: {exc}") from None
    except OSError as exc:
        raise CLIError(f"cannot read {name}: {exc.strerror}") from None


async def write_all(
    target: OpenedStore,
    ids: list[str],
    load: Callable[[str], Awaitable[Conversation | None]],
    label: str,
    replace: bool,
) -> tuple[int, int]:
    """Write the conversations ``load`` returns for ``ids`` into ``target``, refusing to
    overwrite existing sessions unless ``replace``; returns (sessions, items)."""
    taken = await target.existing(ids)
    if taken and not replace:
        example = next(i for i in ids if i in taken)
        raise CLIError(
            f"{count(len(taken), 'session')} already in {target.display_url} "
            f"(e.g. {example!r}): pass --replace to overwrite them"
        )
    sessions = items = 0
    progress = Progress(label, len(ids))
    for session_id in ids:
        conversation = await load(session_id)
        if conversation is not None:
            await target.write(conversation)
            sessions += 1
            items += len(conversation.items)
        progress.advance()
    progress.finish()
    return sessions, items


def spool_export(name: str, spool: IO[bytes]) -> list[str]:
    """Read the export ``name`` (``-``: stdin) once, checking every line, into ``spool``; the
    session ids in file order. Nothing is written anywhere else, so a bad file writes nothing."""
    first_line: dict[str, int] = {}
    label = "<stdin>" if name == "-" else name
    with input_stream(name) as source:
        for number, line, conversation in read_export(source, label):
            if conversation.session_id in first_line:
                raise CLIError(
                    f"{label}:{number}: session {conversation.session_id!r} appears twice "
                    f"(also on line {first_line[conversation.session_id]})"
                )
            first_line[conversation.session_id] = number
            spool.write(line if line.endswith(b"\n") else line + b"\n")
    spool.seek(0)
    return list(first_line)


async def cmd_import(args: argparse.Namespace, stack: AsyncExitStack) -> int:
    if args.sdk is not None:
        if args.file is not None:
            raise CLIError("give an export FILE or --sdk URL, not both")
        return await import_from_sdk(args, stack)
    if args.file is None:
        raise CLIError("give an export FILE (- for stdin) or --sdk URL")
    # The input is read once (it may be a pipe) into a temporary file, and written from there:
    # the sessions checked against the store are the sessions written.
    with tempfile.TemporaryFile() as spool:
        ids = spool_export(args.file, spool)
        store = await opened(stack, args.url, args, writing=True)
        conversations = (parse_conversation(orjson.loads(line)) for line in spool)

        async def load(session_id: str) -> Conversation:
            return next(conversations)  # the same order as ``ids``

        sessions, items = await write_all(store, ids, load, "Importing", args.replace)
    report(
        args,
        f"Imported {count(sessions, 'session')} ({count(items, 'item')}) into {store.display_url}.",
        {"sessions": sessions, "items": items, "url": store.display_url},
    )
    return 0


async def import_from_sdk(args: argparse.Namespace, stack: AsyncExitStack) -> int:
    """``sessions import --sdk URL``: the OpenAI Agents SDK's sessions, one whole conversation
    at a time. Sessions already in the target are skipped (unless ``--replace``), so a run that
    was interrupted continues where it stopped when run again."""
    from agentmem.cli._sdk import open_sdk_source

    source = open_sdk_source(
        args.sdk,
        sessions_table=args.sdk_sessions_table,
        messages_table=args.sdk_messages_table,
        key_prefix=args.sdk_key_prefix,
    )
    stack.push_async_callback(source.close)
    target = await opened(stack, args.url, args, writing=True)
    async with reading_sdk(source.display_url):
        ids = await source.session_ids()
    present = sorted(await target.existing([i for i in ids if valid_id(i)]))
    wanted = [i for i in ids if args.replace or i not in set(present)]
    skipped: list[str] = []
    sessions = items = 0
    progress = Progress("Importing", len(wanted))
    for session_id in wanted:
        async with reading_sdk(source.display_url):
            read = await source.read(session_id)
        skipped.extend(read.skipped)
        if read.conversation is not None:
            await target.write(read.conversation)
            sessions += 1
            items += len(read.conversation.items)
        progress.advance()
    progress.finish()
    if args.replace:
        present = []
    text = (
        f"Imported {count(sessions, 'session')} ({count(items, 'item')}) from the OpenAI "
        f"Agents SDK's store at {source.display_url} into {target.display_url}."
    )
    if present:
        text += (
            f"\nSkipped {count(len(present), 'session')} already in {target.display_url} "
            "(imported before; --replace overwrites them)."
        )
    if skipped:
        text += f"\nLeft out {len(skipped)}:" + "".join(f"\n  {line}" for line in skipped)
    report(
        args,
        text,
        {
            "sessions": sessions,
            "items": items,
            "from": source.display_url,
            "url": target.display_url,
            "already_present": present,
            "skipped": skipped,
        },
    )
    return 0


def valid_id(session_id: str) -> bool:
    try:
        validate_session_id(session_id)
    except (TypeError, ValueError):
        return False
    return True


@asynccontextmanager
async def reading_sdk(display_url: str) -> AsyncIterator[None]:
    """Turn a failure to read the SDK's storage into a :class:`CLIError` naming it."""
    try:
        yield
    except Exception as exc:
        # redis-py's errors by module: redis is an optional dependency.
        if not isinstance(exc, DBAPIError | OSError) and not type(exc).__module__.startswith(
            "redis."
        ):
            raise
        reason = mask_credentials(str(getattr(exc, "orig", None) or exc).splitlines()[0])
        raise CLIError(
            f"cannot read the OpenAI Agents SDK's sessions at {display_url}: {reason} "
            "(--sdk-sessions-table, --sdk-messages-table and --sdk-key-prefix name them)"
        ) from None


async def cmd_copy(args: argparse.Namespace, stack: AsyncExitStack) -> int:
    source = await opened(stack, args.source, args)
    target = await opened(stack, args.target, args, writing=True)
    if source.display_url == target.display_url:
        raise CLIError("--from and --to name the same store")
    ids = await selected_ids(source, args.session_ids)
    sessions, items = await write_all(target, ids, source.read, "Copying", args.replace)
    report(
        args,
        f"Copied {count(sessions, 'session')} ({count(items, 'item')}) "
        f"from {source.display_url} to {target.display_url}.",
        {
            "sessions": sessions,
            "items": items,
            "from": source.display_url,
            "to": target.display_url,
        },
    )
    return 0


async def cmd_rotate_keys(args: argparse.Namespace, stack: AsyncExitStack) -> int:
    from agentmem.wrappers.encrypted import require_cryptography, rotate_store, rotation_keys

    require_cryptography()  # the missing package is reported before anything is read
    keys = rotation_keys(read_keys(args.keys_file, args.keys_env), args.from_key, args.to_key)
    store = await opened(stack, args.url, args)
    progress = Progress("Rotating", len(await store.manager.list_sessions()))
    async with store.reaching():
        result = await rotate_store(
            store.manager,
            keys=keys,
            from_key=args.from_key,
            to_key=args.to_key,
            page_size=args.batch_size,
            on_session=lambda _: progress.advance(),
        )
    progress.finish()
    for session_id, error in result.failed:
        print(f"agentmem: session {session_id!r} left as it was: {error}", file=sys.stderr)
    report(
        args,
        f"Rotated {count(result.items_rotated, 'item')} in "
        f"{count(result.sessions_rotated, 'session')} from key {args.from_key!r} to "
        f"{args.to_key!r} ({count(result.sessions_checked, 'session')} checked, "
        f"{len(result.failed)} failed).",
        {
            "from": args.from_key,
            "to": args.to_key,
            "sessions_checked": result.sessions_checked,
            "sessions_rotated": result.sessions_rotated,
            "items_rotated": result.items_rotated,
            "failed": [{"session_id": i, "error": e} for i, e in result.failed],
        },
    )
    return 1 if result.failed else 0


def positive(text: str) -> int:
    value = non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be >= 1, got 0")
    return value


def count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def report(args: argparse.Namespace, text: str, data: dict[str, Any]) -> None:
    if args.json:
        emit_json(data)
    else:
        print(text)


async def opened(
    stack: AsyncExitStack,
    url: str,
    args: argparse.Namespace,
    *,
    writing: bool = False,
    check: bool = True,
) -> OpenedStore:
    """The store for ``url``, closed when the command ends; with ``check``, checked usable for
    reading (or ``writing``)."""
    store = open_store(url, table_prefix=args.table_prefix, key_prefix=args.key_prefix)
    stack.push_async_callback(store.close)
    if check:
        await store.check(writing=writing)
    return store


# --- arguments ---------------------------------------------------------------------------------

Command = Callable[[argparse.Namespace, AsyncExitStack], Awaitable[int]]


def non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def item_cursor(text: str) -> ItemCursor:
    """``--upto``: an item cursor's text form, or N for the first N items."""
    if text.isdecimal():
        return ItemCursor.first(int(text))
    try:
        return ItemCursor.parse(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an item cursor or a number of items: {text!r}"
        ) from None


class UsageError(Exception):
    """A command line argparse rejects, raised instead of exiting so that :func:`run` can
    report it (as JSON with ``--json``)."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors raise :class:`UsageError` (subparsers too)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(self, message)


def build_parser() -> argparse.ArgumentParser:
    output = Parser(add_help=False)
    output.add_argument("--json", action="store_true", help="print JSON for scripts")
    output.add_argument(
        "--traceback", action="store_true", help="show the full traceback of an error"
    )
    url_help = (
        f"sqlite:///FILE.db, postgresql://… or redis://… (default ${URL_ENV}, else {DEFAULT_URL})"
    )

    def store_options(*, redis: bool, url: bool = True) -> Parser:
        """--url and the prefixes; without ``redis`` the Redis key prefix is accepted (the
        command then says Redis has no schema) but not listed."""
        options = Parser(add_help=False, parents=[output])
        if url:
            options.add_argument("--url", default=default_url(), help=url_help)
        options.add_argument(
            "--table-prefix", default="", help="prefix of agentmem's SQL table names (e.g. am_)"
        )
        options.add_argument(
            "--key-prefix",
            default=DEFAULT_KEY_PREFIX,
            help=f"Redis key prefix (default {DEFAULT_KEY_PREFIX}: {DEFAULT_KEY_PREFIX}:session:…)"
            if redis
            else argparse.SUPPRESS,
        )
        return options

    store = store_options(redis=True)

    parser = Parser(
        prog="agentmem",
        description="Conversation memory for LLM agents: run the demo, migrate, inspect and move "
        "stored conversations, rotate encryption keys.",
    )
    parser.add_argument("--version", action="version", version=f"agentmem {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        parents=[store],
        help="a three-turn agent conversation, stored (run it again to continue)",
        description="Run the documentation's conversation through the OpenAI Agents SDK Runner "
        "and store it. Uses OpenAI when OPENAI_API_KEY is set, else an offline scripted model.",
    )
    demo.add_argument("questions", nargs="*", metavar="QUESTION", help="ask these instead")
    demo.add_argument("--session", default=DEMO_SESSION_ID, help="session id (default: demo)")
    demo.set_defaults(run=cmd_demo)

    for name, run, text in [
        ("upgrade", cmd_upgrade, "bring the database to agentmem's current schema"),
        ("current", cmd_current, "show the database's schema revision"),
        ("check", cmd_check, "exit non-zero unless the database is at the current schema"),
    ]:
        commands.add_parser(
            name, parents=[store_options(redis=False)], help=text, description=text
        ).set_defaults(run=run)

    sessions = commands.add_parser(
        "sessions", help="list, show, delete, fork, export, import, copy"
    )
    actions = sessions.add_subparsers(dest="action", required=True, metavar="ACTION")

    listing = actions.add_parser("list", parents=[store], help="sessions, newest first")
    listing.add_argument("--limit", type=non_negative, default=50, help="at most N (default 50)")
    listing.add_argument("--offset", type=non_negative, default=0, help="skip the first N")
    listing.add_argument("--user", help="only this user's sessions (one page; see --cursor)")
    listing.add_argument("--cursor", help="the next page: the cursor the previous page printed")
    listing.set_defaults(run=cmd_list)

    about = actions.add_parser(
        "info", parents=[store], help="one session's owner, title, metadata and expiry"
    )
    about.add_argument("session_id", metavar="ID")
    about.set_defaults(run=cmd_info)

    show = actions.add_parser("show", parents=[store], help="one session's items")
    show.add_argument("session_id", metavar="ID")
    show.add_argument("--limit", type=non_negative, help="only the newest N items")
    show.set_defaults(run=cmd_show)

    remove = actions.add_parser("delete", parents=[store], help="delete one session")
    remove.add_argument("session_id", metavar="ID")
    remove.set_defaults(run=cmd_delete)

    export = actions.add_parser("export", parents=[store], help="sessions as JSON Lines")
    export.add_argument("session_ids", nargs="*", metavar="ID", help="default: every session")
    export.add_argument("-o", "--output", help="write to this file instead of stdout (-)")
    export.set_defaults(run=cmd_export)

    load = actions.add_parser(
        "import",
        parents=[store],
        help="sessions from a JSON Lines file, or from the OpenAI Agents SDK's own storage",
    )
    load.add_argument("file", nargs="?", metavar="FILE", help="an export file, or - for stdin")
    load.add_argument("--replace", action="store_true", help="overwrite existing sessions")
    load.add_argument(
        "--sdk",
        metavar="URL",
        help="read the SDK's sessions instead: sqlite:///FILE.db, postgresql://… or redis://… "
        "(sessions already imported are skipped: run it again to resume)",
    )
    load.add_argument(
        "--sdk-sessions-table", default="agent_sessions", metavar="NAME", help="(agent_sessions)"
    )
    load.add_argument(
        "--sdk-messages-table", default="agent_messages", metavar="NAME", help="(agent_messages)"
    )
    load.add_argument(
        "--sdk-key-prefix", default="agents:session", metavar="PREFIX", help="(agents:session)"
    )
    load.set_defaults(run=cmd_import)

    fork = actions.add_parser(
        "fork", parents=[store], help="copy one session into a new one, recording its origin"
    )
    fork.add_argument("session_id", metavar="SRC")
    fork.add_argument("new_id", metavar="NEW")
    fork.add_argument(
        "--upto",
        type=item_cursor,
        metavar="CURSOR",
        help="copy only the first N items (or the items before an item cursor)",
    )
    fork.set_defaults(run=cmd_fork)

    copy = actions.add_parser(
        "copy",
        parents=[store_options(redis=True, url=False)],
        help="copy sessions between two stores",
    )
    copy.add_argument("--from", dest="source", required=True, metavar="URL")
    copy.add_argument("--to", dest="target", required=True, metavar="URL")
    copy.add_argument("session_ids", nargs="*", metavar="ID", help="default: every session")
    copy.add_argument("--replace", action="store_true", help="overwrite existing sessions")
    copy.set_defaults(run=cmd_copy)

    rotate = commands.add_parser(
        "rotate-keys",
        parents=[store],
        help="re-encrypt the items of encrypted sessions under a new key",
        description="Move every item encrypted under key id FROM to key id TO, one session at "
        "a time (each atomically). Keys are read from --keys-file or from "
        f"${KEYS_ENV}, never from the command line: KEY_ID=BASE64_KEY entries separated by "
        "newlines, commas or spaces. Re-running it finishes an interrupted rotation.",
    )
    rotate.add_argument("--from", dest="from_key", required=True, metavar="FROM", help="key id")
    rotate.add_argument("--to", dest="to_key", required=True, metavar="TO", help="key id")
    rotate.add_argument("--keys-file", metavar="FILE", help="read the keys from this file")
    rotate.add_argument(
        "--keys-env",
        default=KEYS_ENV,
        metavar="NAME",
        help=f"read the keys from this environment variable (default {KEYS_ENV})",
    )
    rotate.add_argument(
        "--batch-size", type=positive, default=500, help="sessions listed per page (default 500)"
    )
    rotate.set_defaults(run=cmd_rotate_keys)
    purge = commands.add_parser(
        "purge",
        parents=[store],
        help="delete expired sessions with their items",
        description="Delete the expired sessions and their items in batches (short "
        "transactions; safe to run from several processes at once).",
    )
    purge.add_argument(
        "--batch-size", type=positive, default=1000, help="sessions per batch (default 1000)"
    )
    purge.add_argument(
        "--progress", action="store_true", help="show the progress bar even when not a terminal"
    )
    purge.set_defaults(run=cmd_purge)
    return parser


# --- entry point -------------------------------------------------------------------------------


def error_message(exc: BaseException) -> str:
    """One line for a failed command."""
    if isinstance(exc, CLIError | migrate.SchemaError | MissingDependencyError):
        return str(exc)
    if isinstance(exc, TypeError | ValueError):  # bad ids and items are validated with these
        return str(exc)
    return f"{type(exc).__name__}: {exc} (run with --traceback for details)"


async def dispatch(args: argparse.Namespace) -> int:
    command: Command = args.run
    async with AsyncExitStack() as stack:
        return await command(args, stack)


def misplaced_options(argv: Sequence[str]) -> str | None:
    """The corrected command line when options come before the command (``agentmem --url X
    sessions list``), else ``None``."""
    for index, word in enumerate(argv):
        if word in COMMANDS:
            leading = argv[:index]
            if any(w.startswith("-") and w not in ("-h", "--help", "--version") for w in leading):
                return command_line(*argv[index:], *leading)
            return None
    return None


def report_error(message: str, *, as_json: bool) -> None:
    """One line on stderr: ``agentmem: error: ...``, or ``{"error": "..."}`` for ``--json``."""
    line = mask_credentials((message.strip().splitlines() or ["error"])[0])
    if as_json:
        print(json.dumps({"error": line}, ensure_ascii=False), file=sys.stderr)
    else:
        print(f"agentmem: error: {line}", file=sys.stderr)


def run(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv``; returns the exit status (1: error, 2: usage error)."""
    words = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in (words[: words.index("--")] if "--" in words else words)
    try:
        args = build_parser().parse_args(words)
    except UsageError as exc:
        message = str(exc)
        fixed = misplaced_options(words)
        if fixed is not None:
            message = f"options go after the command: `{fixed}`"
        if not as_json:
            exc.parser.print_usage(sys.stderr)
        report_error(message, as_json=as_json)
        return 2
    try:
        return asyncio.run(dispatch(args))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if args.traceback:
            raise
        report_error(error_message(exc) or type(exc).__name__, as_json=args.json)
        return 1


def main() -> None:
    """The ``agentmem`` console script."""
    sys.exit(run())
