"""Sessions that wrap any agentmem session and are sessions themselves."""

from agentmem.wrappers.compacting import CompactingSession
from agentmem.wrappers.encrypted import EncryptedSession, generate_key

__all__ = ["CompactingSession", "EncryptedSession", "generate_key"]
