"""The ``agentmem`` command: wiring and printing over the session managers.

- :mod:`agentmem.cli.main`: argument parsing and the commands.
- :mod:`agentmem.cli._stores`: a ``--url`` opened as its backend's session manager.
- :mod:`agentmem.cli._demo`: ``agentmem demo``.

``python -m agentmem.cli`` runs the command as the ``agentmem`` script does.
"""

from agentmem.cli.main import main, run

__all__ = ["main", "run"]
