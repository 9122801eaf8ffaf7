"""Standard Webhooks signatures: secrets, message ids and the ``webhook-*`` headers.

A secret is ``whsec_`` followed by the base64 of 24 to 64 random bytes. A message is signed with
HMAC-SHA256, keyed with those bytes, over ``"<webhook-id>.<webhook-timestamp>.<body>"``; the
``webhook-signature`` header carries ``v1,<base64 digest>``. The ``webhook-id`` is stable for one
payload and one endpoint across retries, restarts and replays, so receivers deduplicate on it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os

from clarion.errors import BadRequest
from clarion.protocol.cursor import channel_tag

SECRET_PREFIX = "whsec_"
MIN_SECRET_BYTES = 24
MAX_SECRET_BYTES = 64
# Any Python will do: the secret is the prefix and the base64 of random bytes.
MAKE_SECRET = (
    "make one with: python3 -c 'import base64, os; "
    f'print("{SECRET_PREFIX}" + '
    f"base64.b64encode(os.urandom({MIN_SECRET_BYTES})).decode())'"
)


def generate_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(os.urandom(MIN_SECRET_BYTES)).decode("ascii")


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_`` secret; :class:`BadRequest` if it is not one."""
    if not isinstance(secret, str) or not secret.startswith(SECRET_PREFIX):
        raise BadRequest("'secret' must look like whsec_<base64 of 24 to 64 random bytes>")
    encoded = secret[len(SECRET_PREFIX) :]
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("'secret' is not valid base64 after whsec_") from None
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise BadRequest(
            f"'secret' must hold {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes, not {len(key)}"
        )
    return key


def signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = b"%s.%d.%s" % (msg_id.encode("ascii"), timestamp, body)
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def headers(key: bytes, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(key, msg_id, timestamp, body),
    }


def publication_msg_id(endpoint: str, channel: str, epoch: str, offset: int) -> str:
    # The channel goes in as its cursor tag: ids stay short and free of ':' or '/'.
    return f"msg_{endpoint}_{channel_tag(channel).hex()}_{epoch}_{offset}"


def event_msg_id(endpoint: str, version: int) -> str:
    return f"msg_{endpoint}_evt_{version}"
