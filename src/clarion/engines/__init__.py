"""Engines: where publications, history and presence live, and how they reach other nodes."""

from clarion.engines.base import Engine, EngineSink, History, PresenceEntry

__all__ = ["Engine", "EngineSink", "History", "PresenceEntry"]
