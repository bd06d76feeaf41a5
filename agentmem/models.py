"""``agentmem.models``: the public path of :mod:`agentmem.sql.schema`, kept for existing imports."""

from agentmem.sql.schema import *  # noqa: F403
from agentmem.sql.schema import __all__ as __all__
