"""Credentials out of messages: every URL agentmem prints, raises or logs goes through here."""

from __future__ import annotations

import re

__all__ = ["mask_credentials"]

MASK = "***"

# scheme://user:password@host: the password runs to the last "@" of the word (an unencoded
# password may hold "/", "@" or quotes); "scheme://:password@host" (Redis) has an empty user.
_USERINFO = re.compile(r"([a-zA-Z][a-zA-Z0-9+.\-]*://[^\s:/@'\"]*):\S*@")
# password=... as a URL query parameter (?password=, &pass=) or a key=value connection string.
_SECRET_PARAMETER = re.compile(
    r"(?:(?<=[?&;\s])|^)"
    r"((?:password|passwd|pass|pwd|secret|token|access_token|auth|api_key|apikey)=)"
    # (a ":" that ends a word is the message's, as in "at redis://h/0?password=***: ...")
    r"[^&;#\s'\"]*?(?=[&;#\s'\"]|:(?:\s|$)|$)",
    re.IGNORECASE,
)


def mask_credentials(text: object) -> str:
    """``text`` (a URL, or a message that holds URLs) with every password replaced by ``***``.

    Covers ``scheme://user:password@host``, ``redis://:password@host``, and ``password=``,
    ``pass=``, ``token=``-style query parameters and connection-string keys.

    Args:
        text: A string, or an object whose ``str`` is masked (e.g. a SQLAlchemy ``URL`` renders
            its password as ``***`` already; its query parameters are masked here).
    """
    rendered = str(text)
    rendered = _USERINFO.sub(lambda m: f"{m.group(1)}:{MASK}@", rendered)
    return _SECRET_PARAMETER.sub(lambda m: f"{m.group(1)}{MASK}", rendered)
