"""What a webhook delivery carries: a publication, or one of the hub's lifecycle events.

A module of its own, importing nothing: ``clarion webhooks add --event`` offers these choices,
and every ``clarion`` command builds that parser without loading the webhooks.
"""

# Lifecycle events an endpoint may ask for, as the hub reports them.
EVENT_KINDS = ("connect", "disconnect", "subscribe", "unsubscribe", "join", "leave")
PUBLICATION = "publication"
