"""agentmem's logging: messages go to the ``agentmem`` loggers, quiet unless the application
turns them up."""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterator
from contextlib import contextmanager

logger = logging.getLogger("agentmem.migrate")

_migrating: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "agentmem_migrating", default=False
)


class _AlembicToDebug(logging.Filter):
    """Alembic's messages during agentmem's own migrations go to agentmem's logger at DEBUG,
    not into the application's log at INFO; an application's own Alembic runs are untouched."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _migrating.get():
            return True
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s: %s", record.name, record.getMessage())
        return False


_alembic_to_debug = _AlembicToDebug()


@contextmanager
def quiet_alembic(*names: str) -> Iterator[None]:
    """Within the block, Alembic's log records (of every Alembic logger there is, and of
    ``names``) go to agentmem's logger at DEBUG."""
    # A filter applies to the records of the logger it is on, not to its children's.
    existing = [n for n in list(logging.Logger.manager.loggerDict) if n.split(".")[0] == "alembic"]
    for name in {*existing, *names}:
        alembic_logger = logging.getLogger(name)
        if _alembic_to_debug not in alembic_logger.filters:
            alembic_logger.addFilter(_alembic_to_debug)
    token = _migrating.set(True)
    try:
        yield
    finally:
        _migrating.reset(token)
