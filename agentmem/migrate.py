"""``agentmem.migrate``: the public path of :mod:`agentmem.sql.migrate`, for existing imports."""

from agentmem.sql.migrate import *  # noqa: F403
from agentmem.sql.migrate import __all__ as __all__
