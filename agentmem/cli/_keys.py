"""Where ``agentmem rotate-keys`` reads encryption keys: a file or an environment variable, never
the command line (which other users of the machine can read, and shells keep in history).

Both hold ``KEY_ID=BASE64_KEY`` entries, separated by newlines (a file; ``#`` starts a comment
line), commas or spaces. No message ever shows a key.
"""

from __future__ import annotations

import os
from pathlib import Path

from agentmem.cli._stores import CLIError

__all__ = ["KEYS_ENV", "read_keys"]

KEYS_ENV = "AGENTMEM_ENCRYPTION_KEYS"
"""The environment variable ``rotate-keys`` reads its keys from when no file is given."""


def parse_key_entries(text: str, source: str) -> dict[str, str]:
    """``{key id: key}`` from ``KEY_ID=KEY`` entries; the keys are validated later.

    Raises:
        CLIError: an entry is not ``KEY_ID=KEY``, or a key id appears twice.
    """
    keys: dict[str, str] = {}
    entries = (
        entry
        for line in text.splitlines()
        if not line.lstrip().startswith("#")
        for entry in line.replace(",", " ").split()
    )
    for number, entry in enumerate(entries, 1):
        key_id, equals, key = entry.partition("=")
        if not equals or not key_id or not key:
            raise CLIError(f"entry {number} of {source} is not KEY_ID=BASE64_KEY")
        if key_id in keys:
            raise CLIError(f"key id {key_id!r} appears twice in {source}")
        keys[key_id] = key
    if not keys:
        raise CLIError(f"{source} holds no KEY_ID=BASE64_KEY entry")
    return keys


def read_keys(keys_file: str | None, keys_env: str = KEYS_ENV) -> dict[str, str]:
    """The keys of ``keys_file`` if given, else of the environment variable ``keys_env``.

    Raises:
        CLIError: the file cannot be read, the variable is not set, or an entry is malformed.
    """
    if keys_file is not None:
        try:
            text = Path(keys_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise CLIError(f"cannot read the keys file {keys_file}: {exc.strerror}") from None
        return parse_key_entries(text, f"the keys file {keys_file}")
    value = os.environ.get(keys_env)
    if not value:
        raise CLIError(
            f"no encryption keys: set ${keys_env} (KEY_ID=BASE64_KEY entries) or pass --keys-file"
        )
    return parse_key_entries(value, f"${keys_env}")
