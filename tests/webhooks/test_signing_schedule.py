"""Signatures agree with the standardwebhooks package; the retry schedule keeps its bounds."""

from __future__ import annotations

import base64
import random
import time
from email.utils import formatdate

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from clarion.errors import BadRequest
from clarion.webhooks import RetrySchedule, generate_secret
from clarion.webhooks.sender import retry_after
from clarion.webhooks.signing import headers, publication_msg_id, secret_key


def test_signature_verifies_with_standardwebhooks() -> None:
    secret = generate_secret()
    body = b'{"channel":"a","offset":1,"epoch":"e","data":{"x":"\xc3\xa9"},"time":1}'
    now = int(time.time())
    signed = headers(secret_key(secret), "msg_1", now, body)
    assert signed["webhook-signature"].startswith("v1,")
    assert Webhook(secret).verify(body, signed)["data"] == {"x": "é"}
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace(b"a", b"b", 1), signed)
    with pytest.raises(WebhookVerificationError):
        Webhook(generate_secret()).verify(body, signed)


def test_secrets() -> None:
    secret = generate_secret()
    assert secret.startswith("whsec_") and len(secret_key(secret)) == 24
    assert generate_secret() != secret
    secret_key("whsec_" + base64.b64encode(b"k" * 64).decode())
    for bad in (
        "plain",
        "whsec_",
        "whsec_!!!",
        "whsec_" + base64.b64encode(b"k" * 23).decode(),
        "whsec_" + base64.b64encode(b"k" * 65).decode(),
    ):
        with pytest.raises(BadRequest):
            secret_key(bad)


def test_message_ids_are_stable_and_header_safe() -> None:
    one = publication_msg_id("wh_1", "chat:room/1", "ab12", 7)
    assert one == publication_msg_id("wh_1", "chat:room/1", "ab12", 7)
    assert one != publication_msg_id("wh_2", "chat:room/1", "ab12", 7)
    assert one != publication_msg_id("wh_1", "chat:room/2", "ab12", 7)
    assert one.startswith("msg_wh_1_") and one.endswith("_ab12_7")
    assert all(c.isalnum() or c == "_" for c in one)


def test_backoff_is_exponential_capped_and_fully_jittered() -> None:
    schedule = RetrySchedule(base=1, cap=8, window=100)
    assert [schedule.ceiling(n) for n in range(1, 7)] == [1, 2, 4, 8, 8, 8]
    assert schedule.ceiling(10_000) == 8
    rng = random.Random(1)
    waits = [schedule.next_attempt(3, 0.0, 10.0, rng) for _ in range(200)]
    assert all(w is not None and 10.0 <= w <= 14.0 for w in waits)
    spread = [w for w in waits if w is not None]
    assert min(spread) < 10.5 and max(spread) > 13.5  # full jitter: the whole range is used


def test_window_ends_retries_and_bounds_the_last_wait() -> None:
    schedule = RetrySchedule(base=10, cap=3600, window=60)
    assert schedule.next_attempt(9, first_failure=0.0, now=60.0) is None
    last = schedule.next_attempt(9, first_failure=0.0, now=59.0, rng=random.Random(3))
    assert last is not None and 59.0 <= last <= 60.0
    default = RetrySchedule()
    assert default.window == 86400 and default.cap == 3600


RETRY_AFTER_READINGS: list[tuple[str | None, float | None]] = [
    (None, None),
    ("2", 2.0),
    (" 7 ", 7.0),
    ("0", 0.0),
    ("0120", 120.0),
    ("9999999999", 9999999999.0),
    ("Thu, 01 Jan 1970 00:00:00 GMT", 0.0),  # in the past: no wait
    ("Mon, 01 Jan 2024 00:00:00 GMT" + " " * 100, 0.0),
    # Not delta-seconds: other scripts' digits, signs, fractions, exponents, too long.
    ("\u00b2", None),
    ("1\u00b9", None),
    ("\u0663", None),
    ("\uff13", None),
    ("+5", None),
    ("-5", None),
    ("1.5", None),
    ("1e3", None),
    ("1_0", None),
    ("inf", None),
    ("nan", None),
    ("", None),
    ("9" * 11, None),
    ("9" * 5000, None),
    # Not an HTTP date a datetime holds, or without a zone, or too long for one.
    ("Mon, 01 Jan 99999999999 00:00:00 GMT", None),
    ("Mon, 01 Jan 10000 00:00:00 GMT", None),
    ("Mon, 01 Jan 2024 00:00:00 -0000", None),
    ("Mon, 99 Jan 2024 00:00:00 GMT", None),
    ("Mon, 01 Jan 2024 00:00:00 GMT x" + "x" * 100, None),
]


def test_retry_after_reads_ascii_seconds_and_real_dates_only() -> None:
    """What a receiver writes is read as RFC 9110 has it, and anything else is no wait at all:
    never an exception, never another script's digits."""
    wrong = []
    for value, expected in RETRY_AFTER_READINGS:
        try:
            got: object = retry_after(value)
        except Exception as exc:
            got = exc
        if got != expected:
            wrong.append((value if value is None else value[:40], got, expected))
    assert wrong == []
    wait = retry_after(formatdate(time.time() + 100, usegmt=True))
    assert wait is not None and 95 <= wait <= 100
