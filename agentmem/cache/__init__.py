"""agentmem's cached mode: a SQL session of record with a Redis read cache in front.

:mod:`agentmem.cache.session` holds ``CachedSession`` and ``CachedSessionManager`` and the cache's
Lua scripts; they compose a SQL session and manager through their public interface
(:class:`agentmem.sql.base.SQLSessionBase`, :class:`agentmem.sql.base.SQLSessionManagerABC`) and
the shared Redis helpers of :mod:`agentmem.redis.client`, and import no concrete backend.
Import them from :mod:`agentmem`.
"""
