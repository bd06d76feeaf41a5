"""A forked child never uses, nor closes, the connections it inherited from its parent.

Each registry of connections (SQLite databases, SQLAlchemy engines, Redis clients) registers
itself with :func:`reset_in_child`. In a forked child its ``after_fork()`` runs: it takes new
locks and hands the parent's connections to :func:`keep`, which holds them referenced for the
child's lifetime, so that no finalizer closes them from the child (closing a SQLite connection
could checkpoint or remove the parent's WAL; closing a socket could end the parent's session),
and they are never used.
"""

from __future__ import annotations

import os
import weakref
from typing import Any, Protocol


class ForkAware(Protocol):
    """A registry that makes itself usable again in a forked child."""

    def after_fork(self) -> None: ...


_registered: weakref.WeakSet[Any] = weakref.WeakSet()
_inherited: list[Any] = []


def reset_in_child(registry: ForkAware) -> None:
    """Run ``registry.after_fork()`` in every child forked while ``registry`` lives."""
    _registered.add(registry)


def keep(parents: Any) -> None:
    """In a forked child: keep the parent's connections referenced, never to be used."""
    _inherited.append(parents)


def _after_fork_in_child() -> None:
    for registry in list(_registered):
        registry.after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
