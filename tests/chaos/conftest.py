"""Chaos tests: real hub processes and a real ``redis-server``, faults injected between them."""

from __future__ import annotations

from ..multinode.conftest import cluster, redis_server

__all__ = ["cluster", "redis_server"]
