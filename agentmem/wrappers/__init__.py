"""Sessions that wrap any agentmem session and are sessions themselves."""

from agentmem.wrappers.encrypted import EncryptedSession, generate_key

__all__ = ["EncryptedSession", "generate_key"]
