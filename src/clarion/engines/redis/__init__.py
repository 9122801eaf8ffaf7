"""The Redis engine: several hub nodes sharing channels, history and presence through Redis.

Needs the ``redis`` extra (``pip install 'clarion[redis]'``) and Redis 7.0 or later.
"""

from clarion.engines.redis.engine import RedisEngine

__all__ = ["RedisEngine"]
