"""agentmem's cached mode: a SQL session of record with a Redis read cache in front.

:mod:`agentmem.cache.session` holds ``CachedSession`` and ``CachedSessionManager``; they compose
a SQL session through its public interface (:class:`agentmem.sql.base.SQLSessionBase`) and the
shared Redis client helpers of :mod:`agentmem.redis.client`. Import them from :mod:`agentmem`.
"""
