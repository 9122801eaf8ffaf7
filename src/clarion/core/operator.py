"""The operator's session: the admin page connects with the API key and reads the hub's own
figures on the internal metrics channel, which no token opens.

With ``admin = true`` the hub's :class:`OperatorAuth` takes an API key given as a connection
token in the connection's own first message (the ``connect`` op, STOMP's ``CONNECT``) for
:data:`OPERATOR`, whose only channel is
:data:`METRICS_CHANNEL`. The ``_clarion`` namespace is the hub's: no token's pattern reaches it,
and no client publishes there. The key given with the HTTP request instead (a ``token``
query parameter, an ``Authorization`` header, the token cookie) is refused as a token.
"""

from __future__ import annotations

import hmac

from clarion.core.auth import RESERVED_NAMESPACE, Authenticator, Credentials
from clarion.errors import Unauthorized
from clarion.settings import Settings

METRICS_CHANNEL = f"{RESERVED_NAMESPACE}:metrics"

# One object: an operator session is recognised by identity, which no token can forge.
OPERATOR = Credentials(user=None, channels=(METRICS_CHANNEL,))


def is_operator(credentials: Credentials) -> bool:
    return credentials is OPERATOR


class OperatorAuth(Authenticator):
    """The hub's authenticator, plus operator sessions and the reserved namespace."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._keys = [key.encode() for key in settings.api_keys]

    def _is_key(self, token: str) -> bool:
        given = token.encode()
        matched = False
        for key in self._keys:  # every key compared, in constant time each
            matched |= hmac.compare_digest(given, key)
        return matched

    def verify(self, token: str) -> Credentials:
        if self._is_key(token):
            return OPERATOR
        return super().verify(token)

    def verify_request(self, token: str) -> Credentials:
        # A URL lands in access logs, proxies and browser history, and a cookie or header is
        # sent by whatever the browser holds: the key opens an operator session only when the
        # connection itself presents it.
        if self._is_key(token):
            raise Unauthorized(
                "an API key opens an operator session only in the connection's own connect "
                "message (the connect op, STOMP's CONNECT), not in a request's URL, header "
                "or cookie"
            )
        return super().verify(token)

    def reads_reserved(self, creds: Credentials) -> bool:
        return creds is OPERATOR or creds.trusted
