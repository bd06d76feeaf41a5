"""Optional dependencies: the error for a missing one, and the driver each database URL needs.

Every ``pip install`` line agentmem prints is built here, so the distribution's name lives in one
place.
"""

from __future__ import annotations

from importlib import import_module
from typing import Final

from agentmem.errors import MissingDependencyError

DISTRIBUTION: Final = "agentmem-sessions"
"""The name agentmem is installed by (``pip install agentmem-sessions``)."""


def pip_install(extra: str) -> str:
    """The command that installs agentmem with its optional dependencies ``extra``."""
    return f'pip install "{DISTRIBUTION}[{extra}]"'


def missing(extra: str, package: str) -> MissingDependencyError:
    """The error for a missing optional ``package`` that agentmem's ``extra`` installs."""
    return _missing(package, pip_install(extra))


def _missing(package: str, command: str) -> MissingDependencyError:
    return MissingDependencyError(f"{package} is not installed: {command}")


# URL scheme (``backend`` or ``backend+driver``) -> (driver module, the command installing it)
_DRIVERS: Final = {
    "postgresql": ("asyncpg", pip_install("postgres")),
    "postgresql+asyncpg": ("asyncpg", pip_install("postgres")),
    "postgresql+psycopg": ("psycopg", pip_install("psycopg")),
    "postgresql+psycopg_async": ("psycopg", pip_install("psycopg")),
    "redis": ("redis", pip_install("redis")),
    "rediss": ("redis", pip_install("redis")),
    "unix": ("redis", pip_install("redis")),
}


def require_driver(url: str) -> None:
    """Import the driver that ``url`` needs, if agentmem knows it.

    ``postgresql://`` needs asyncpg, ``postgresql+psycopg://`` psycopg, ``redis://``,
    ``rediss://`` and ``unix://`` redis. Other URLs are left to the caller.

    Raises:
        MissingDependencyError: that driver is not installed; the message names the
            ``pip install`` line.
    """
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    backend, plus, driver = scheme.partition("+")
    if backend == "postgres":
        scheme = f"postgresql{plus}{driver}"
    known = _DRIVERS.get(scheme)
    if known is None:
        return
    module, command = known
    try:
        import_module(module)
    except ImportError as exc:
        raise _missing(module, command) from exc
