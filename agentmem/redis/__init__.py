"""agentmem's Redis backend: a hash and a list per conversation, sharing one hash tag.

Where each concept lives:

- :mod:`agentmem.redis.client`: what every Redis user in agentmem shares: hash-tagged keys, TTLs,
  the Lua script runner and expiry function, the connection options, the clients agentmem owns
  (one pool per URL, options and event loop) and the redis-py errors agentmem lets through.
- :mod:`agentmem.redis.session`: ``RedisSession`` and ``RedisSessionManager``, with their Lua
  scripts (named constants, each with a KEYS/ARGV header).

Import the session and manager from :mod:`agentmem`. Importing this package does not need
redis-py; building a client does (``pip install "agentmem-sessions[redis]"``).
"""
