"""The token cookie read out of a ``Cookie`` header: as ``SimpleCookie`` reads a token, in
linear time."""

from __future__ import annotations

import time
from http.cookies import SimpleCookie

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clarion.protocol.cookies import MAX_COOKIE_CHARS, cookie_value

from ..conftest import timeout

NAME = "clarion_token"
# A cookie's name and its value as browsers and apps write them (a token: base64url and dots).
names = st.sampled_from(["theme", "sid", NAME, "a", "clarion_token2", "xclarion_token"])
values = st.text("abcXYZ019-_.", max_size=30)


def simple_cookie(header: str) -> str | None:
    jar: SimpleCookie = SimpleCookie()
    jar.load(header)
    morsel = jar.get(NAME)
    return None if morsel is None else morsel.value


@given(st.lists(st.tuples(names, values, st.booleans(), st.sampled_from(["; ", ";", " ; "]))))
def test_reads_a_jar_as_simplecookie_does(pairs: list[tuple[str, str, bool, str]]) -> None:
    header = "".join(
        f"{sep if i else ''}{name}={chr(34) + value + chr(34) if quoted else value}"
        for i, (name, value, quoted, sep) in enumerate(pairs)
    )
    assert cookie_value(header, NAME) == simple_cookie(header)


@pytest.mark.parametrize(
    "header, value",
    [
        ('clarion_token="a\\"b\\\\c\\012d"', 'a"b\\c\nd'),
        (" clarion_token = tok ; b=2", "tok"),
        ("clarion_token", None),
        ("clarion_token=", ""),
        ("xclarion_token=1", None),
        ("clarion_tokenx=1; clarion_token=2", "2"),
    ],
)
def test_quoted_and_unusual_pairs(header: str, value: str | None) -> None:
    assert cookie_value(header, NAME) == value == simple_cookie(header)


@pytest.mark.parametrize(
    "crafted",
    [
        'a="' + "\\" * 16200 + '"',
        'clarion_token="' + "\\" * 16300 + '"',
        'clarion_token="' + "\\012" * 4000 + '"',
        "clarion_token=" * 1150,
        ";" * 16000,
        " " * 16000 + "clarion_token=1",
    ],
)
def test_crafted_headers_take_linear_time(crafted: str) -> None:
    started = time.process_time()
    cookie_value(crafted, NAME)
    assert time.process_time() - started < timeout(0.05)


def test_a_jar_over_the_bound_is_not_read() -> None:
    header = "a=" + "x" * MAX_COOKIE_CHARS + "; clarion_token=t"
    assert cookie_value(header, NAME) is None
    assert cookie_value(header[-2000:], NAME) == "t"
