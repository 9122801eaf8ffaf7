"""The core: the hub, fan-out, sessions, resume, presence and permission checks.

Transport-agnostic: it knows no HTTP. Adapters hand it a :class:`~clarion.core.transport.Transport`
per connection and it pushes encoded bytes back through it.
"""
