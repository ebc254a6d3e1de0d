"""Property-based tests (hypothesis) for every parser the cache layer runs on input
it does not control: the opt-in headers, cache keys, the revalidation endpoint's
body, and whole requests with arbitrary paths, query strings, hosts and cookies.

Each property states what must hold for *any* input: no exception escapes, no 5xx
comes from the cache layer, stored tags obey the tag rules, keys are canonical and
bounded. Inputs that once broke something also have a named example test.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import re
import string
import tempfile
import unicodedata
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import parse_qsl, quote, unquote_to_bytes

import pytest
from helpers import CountingApp, FakeClock
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from werkzeug.test import Client, EnvironBuilder

from wsgi_isr import FileStore, ISRMiddleware, MemoryStore, RedisStore, keys
from wsgi_isr.keys import (
    MAX_KEY,
    MAX_LAYOUT_DEPTH,
    layout_tag,
    normalise_host,
    normalise_query,
    page_tag,
    path_tags,
    quote_path,
    request_key,
    shorten,
    variant_key,
)
from wsgi_isr.policy import (
    MAX_TAG_LENGTH,
    MAX_TAGS,
    RESERVED_TAG_PREFIX,
    UNKEYABLE,
    client_headers,
    decide,
    parse_cache_control,
    parse_seconds,
    stored_headers,
    valid_tags,
)

SECRET = "property-secret-0123456789abcdefghij"
PROPS = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
FEWER = settings(PROPS, max_examples=60)


@pytest.fixture(autouse=True)
def _quiet_logs() -> Iterator[None]:
    # the parsers log every dropped tag and invalid value; thousands of examples
    # would only slow the run down
    logging.disable(logging.CRITICAL)
    yield
    logging.disable(logging.NOTSET)


# -- strategies ------------------------------------------------------------------------------

#: What a WSGI server can put in a header or environ string: latin-1 characters.
latin1 = st.characters(max_codepoint=0xFF)
latin1_text = st.text(latin1, max_size=40)
tag_chars = st.sampled_from(string.printable + "é\u2028\x00\x7f,")
tagish = st.one_of(
    st.text(tag_chars, max_size=12),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=12),
    st.sampled_from(["_isr_page:/", "_isr_layout:/", "_ISR_x", "a" * 256, "a" * 257, " ok "]),
)
numberish = st.one_of(
    st.integers().map(str),
    st.floats().map(repr),
    st.floats(min_value=0, max_value=1e6).map(repr),
    st.sampled_from(
        ["false", "FALSE", " false ", "0", "-0", "0.0", "nan", "inf", "-inf", "1e309", "0x10"]
        + ["1_0", "", " ", "60 ", "\t60", "٣", "10s", "1e-300", "+5"]
    ),
)
header_value = st.one_of(numberish, st.text(max_size=30), latin1_text)
cc_directive = st.one_of(
    st.sampled_from(
        ["public", "private", "no-store", "no-cache", "max-age=60", "must-revalidate"]
        + ["s-maxage", "stale-while-revalidate", 'private="set-cookie"', "="]
    ),
    st.builds(lambda v: f"s-maxage={v}", numberish),
    st.builds(lambda v: f"stale-while-revalidate={v}", numberish),
    st.builds(lambda v: f'S-MaxAge="{v}"', numberish),
    latin1_text,
)
cache_control = st.lists(cc_directive, max_size=4).map(", ".join)
HEADER_NAMES = [
    "X-ISR-Revalidate",
    "x-isr-revalidate",
    "X-ISR-Expire",
    "X-ISR-Tags",
    "Cache-Tag",
    "Surrogate-Key",
    "Cache-Control",
    "cache-control",
    "Vary",
    "Set-Cookie",
    "Content-Type",
    "ETag",
]


@st.composite
def response_headers(draw: Any) -> list[tuple[str, str]]:
    headers = []
    for _ in range(draw(st.integers(0, 7))):
        name = draw(st.sampled_from(HEADER_NAMES) | st.text(latin1, min_size=1, max_size=10))
        if name.lower() == "cache-control":
            value = draw(cache_control)
        elif name.lower() in ("x-isr-tags", "cache-tag"):
            value = draw(st.lists(tagish, max_size=6).map(",".join) | header_value)
        elif name.lower() == "surrogate-key":
            value = draw(st.lists(tagish, max_size=6).map(" ".join) | header_value)
        elif name.lower() == "vary":
            vary_names = ["Accept-Language", "Cookie", "Authorization", "*", "X-Thing", ""]
            value = draw(st.lists(st.sampled_from(vary_names) | latin1_text, max_size=3))
            value = ", ".join(value)
        else:
            value = draw(header_value)
        headers.append((name, value))
    return headers


def is_valid_tag(tag: object) -> bool:
    """The tag rules of DESIGN §2, written independently of the implementation."""
    return (
        isinstance(tag, str)
        and 0 < len(tag) <= MAX_TAG_LENGTH
        and all(0x21 <= ord(c) <= 0x7E and c != "," for c in tag)
        and not tag.startswith(RESERVED_TAG_PREFIX)
    )


def api_form(tag: str) -> str:
    """A tag given through the Python API or the endpoint as it is kept (README, "The
    header contract"): printable characters beyond ASCII percent-encoded as UTF-8."""
    if all(ord(c) < 0x80 for c in tag) or not tag.isprintable():
        return tag
    tag = unicodedata.normalize("NFC", tag)
    form = "".join(c if ord(c) < 0x80 else quote(c.encode("utf-8")) for c in tag)
    if len(form) > MAX_TAG_LENGTH and len(tag) <= MAX_TAG_LENGTH:
        digest = hashlib.sha256(tag.encode()).hexdigest()
        form = form[: MAX_TAG_LENGTH - 65] + "#" + digest
    return form


def assert_tag_invariants(tags: Iterable[object]) -> None:
    tags = list(tags)
    assert len(tags) <= MAX_TAGS
    assert len(set(tags)) == len(tags)
    for tag in tags:
        assert is_valid_tag(tag), repr(tag)


# -- header policy ---------------------------------------------------------------------------


@PROPS
@given(st.lists(st.one_of(tagish, st.text(), st.integers(), st.none(), st.binary()), max_size=30))
def test_valid_tags_keeps_exactly_the_valid_tags_in_order(raw: list[Any]) -> None:
    out = valid_tags(raw)
    assert_tag_invariants(out)
    expected: list[str] = []
    for t in raw:
        t = t.strip() if isinstance(t, str) else t
        if is_valid_tag(t) and t not in expected:
            expected.append(t)
    assert out == expected[:MAX_TAGS]


@PROPS
@given(st.lists(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1)))
def test_valid_tags_caps_the_number_of_tags(raw: list[str]) -> None:
    raw = [f"t{i}-{t}" for i, t in enumerate(raw * 20)]  # often more than MAX_TAGS
    out = valid_tags(raw)
    assert_tag_invariants(out)
    distinct_valid = [t for t in dict.fromkeys(raw) if is_valid_tag(t)]
    assert out == distinct_valid[:MAX_TAGS]


@PROPS
@given(st.one_of(header_value, st.text()))
def test_parse_seconds_never_raises_and_returns_a_finite_non_negative_number(value: str) -> None:
    n = parse_seconds(value)
    assert n is None or (isinstance(n, float) and math.isfinite(n) and n >= 0)


@PROPS
@given(st.floats(min_value=0, allow_infinity=False), st.sampled_from(["", " ", "\t", "  "]))
def test_parse_seconds_round_trips_every_finite_non_negative_number(x: float, pad: str) -> None:
    assert parse_seconds(f"{pad}{x!r}{pad}") == x


@PROPS
@given(st.one_of(cache_control, st.text(), latin1_text))
def test_parse_cache_control_never_raises_and_names_are_canonical(value: str) -> None:
    cc = parse_cache_control(value)
    for name, arg in cc.items():
        assert name and name == name.strip().lower() and "," not in name
        assert arg is None or isinstance(arg, str)


@PROPS
@given(
    st.dictionaries(
        st.text(st.sampled_from(string.ascii_lowercase + "-"), min_size=1, max_size=8),
        st.none() | st.text(st.sampled_from(string.ascii_letters + string.digits), max_size=6),
        max_size=5,
    )
)
def test_parse_cache_control_round_trips_directives(directives: dict[str, str | None]) -> None:
    value = ", ".join(k if v is None else f'{k.upper()}="{v}"' for k, v in directives.items())
    assert parse_cache_control(value) == directives


@PROPS
@given(
    response_headers(),
    st.sampled_from(["200 OK", "201 Created", "203 X", "206 Partial", "301 Moved", "304 NM"])
    | st.sampled_from(["404 Not Found", "410 Gone", "500 Error", "503 Unavailable", "199 X"]),
    st.integers(0, 2000),
    st.lists(st.one_of(tagish, st.text(), st.integers(), st.none()), max_size=5),
)
def test_decide_never_raises_and_what_it_stores_obeys_the_rules(
    headers: list[tuple[str, str]], status: str, size: int, extra: list[Any]
) -> None:
    d = decide(status, headers, size, extra_tags=extra, max_entry_bytes=1000)
    assert_tag_invariants(d.tags)
    if not d.store:
        return
    assert d.opted_in
    code = int(status[:3])
    assert 200 <= code < 500 and code not in (206, 304)
    assert size <= 1000
    names = {k.lower() for k, _ in headers}
    assert "set-cookie" not in names
    assert d.revalidate is None or (math.isfinite(d.revalidate) and d.revalidate > 0)
    assert d.expire is None or (math.isfinite(d.expire) and d.expire > 0)
    assert "*" not in d.vary
    assert not UNKEYABLE.intersection(d.vary)
    assert all(v == v.lower() and v for v in d.vary)
    refused = parse_cache_control(", ".join(v for k, v in headers if k.lower() == "cache-control"))
    assert not {"private", "no-store", "no-cache"}.intersection(refused)


@PROPS
@given(st.text(max_size=12))
@example("200-OK")
@example("\u00b2\u2070\u2070 OK")
def test_decide_never_raises_for_any_status_line(status: str) -> None:
    d = decide(status, [("X-ISR-Revalidate", "60")], 0, max_entry_bytes=10)
    assert not d.store or status[:3].isascii()


@PROPS
@given(
    st.lists(tagish.filter(is_valid_tag), max_size=40),
    st.sampled_from(["X-ISR-Tags", "Cache-Tag", "Surrogate-Key", "helper"]),
)
def test_every_tag_source_carries_valid_tags_unchanged(tags: list[str], source: str) -> None:
    headers = [("X-ISR-Revalidate", "60")]
    extra: list[str] = []
    if source == "helper":
        extra = tags
    else:
        headers.append((source, (" " if source == "Surrogate-Key" else ", ").join(tags)))
    d = decide("200 OK", headers, 0, extra_tags=extra, max_entry_bytes=10)
    assert d.store
    assert list(d.tags) == list(dict.fromkeys(tags))[:MAX_TAGS]


@PROPS
@given(st.floats(min_value=0, exclude_min=True, allow_infinity=False), cache_control)
def test_x_isr_revalidate_number_is_used_and_wins_over_cache_control(
    seconds: float, cc: str
) -> None:
    assume(not {"private", "no-store", "no-cache"}.intersection(parse_cache_control(cc)))
    headers = [("Cache-Control", cc), ("X-ISR-Revalidate", repr(seconds))]
    d = decide("200 OK", headers, 0, max_entry_bytes=10)
    assert d.store and d.revalidate == seconds


@PROPS
@given(st.sampled_from(["false", "False", " FALSE ", "\tfalse"]))
def test_x_isr_revalidate_false_caches_until_invalidated(value: str) -> None:
    d = decide("200 OK", [("X-ISR-Revalidate", value)], 0, max_entry_bytes=10)
    assert d.store and d.revalidate is None and d.expire is None


@PROPS
@given(numberish | st.text())
def test_x_isr_revalidate_that_is_not_a_positive_number_is_not_cached(value: str) -> None:
    n = parse_seconds(value)
    assume(value.strip().lower() != "false" and not n)
    assert not decide("200 OK", [("X-ISR-Revalidate", value)], 0, max_entry_bytes=10).store


@PROPS
@given(st.floats(min_value=0, exclude_min=True, allow_infinity=False))
def test_s_maxage_alone_is_fresh_then_expired_like_a_cdn(seconds: float) -> None:
    d = decide("200 OK", [("Cache-Control", f"public, s-maxage={seconds!r}")], 0, max_entry_bytes=1)
    assert d.store and d.revalidate == seconds and d.expire == seconds


@PROPS
@given(st.sampled_from(["", "=", "=abc", "=-5", "=nan", '=""']))
@example("=abc")
def test_invalid_stale_while_revalidate_is_ignored(swr: str) -> None:
    d = decide(
        "200 OK",
        [("Cache-Control", f"s-maxage=10, stale-while-revalidate{swr}")],
        0,
        max_entry_bytes=1,
    )
    assert d.store and d.expire == 10.0  # as without the directive: no stale window


@PROPS
@given(st.lists(st.tuples(st.text(latin1, min_size=1, max_size=12), latin1_text), max_size=8))
def test_internal_headers_never_reach_the_client(headers: list[tuple[str, str]]) -> None:
    headers = headers + [("X-ISR-Tags", "a"), ("x-Isr-Revalidate", "5"), ("X-ISR-Cache", "HIT")]
    for out in (client_headers(headers), stored_headers(headers)):
        assert not [k for k, _ in out if k.lower().startswith("x-isr-")]
        assert [h for h in headers if h in out] == list(out)  # a filter, never an edit


# -- cache keys ------------------------------------------------------------------------------


def environ(path: str = "/p", query: str = "", host: str = "example.com", **extra: Any) -> dict:
    env = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "HTTP_HOST": host,
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "wsgi.url_scheme": "http",
    }
    env.update(extra)
    return env


def key_of(query: str, allow: Any = None, **kw: Any) -> str:
    rk = request_key(environ(query=query, **kw), query_params=allow)
    assert rk is not None
    return rk.key


#: Characters of a URL with a fast path of their own (plain) and every one that takes
#: a request off it (quoting, '+', '=', '&', latin-1, a separator, control characters).
url_chars = st.sampled_from(
    list(string.ascii_letters[:6] + string.digits[:3] + "/:@!$&'()*+,;=._~-?")
    + ["%", "%41", "%2F", "+", " ", "#", "|", "é", "\xff", "\x00", "\n"]
)
url_text = st.lists(url_chars, max_size=12).map("".join)
query_name = st.sampled_from(["", "a", "b", "c", "utm_source", "A", "a b", "é", "x%41"])
plain_query = st.lists(st.tuples(query_name, url_text), max_size=4).map(
    lambda ps: "&".join(f"{k}={v}" for k, v in ps)
)
hostish = st.one_of(
    st.sampled_from(
        ["example.com", "Example.COM", "example.com:80", "example.com:443", "a.b.", "[::1]:8080"]
        + ["", " x.com ", "bad host", "x.com:99999", "x.com:8080", "..", "h_1.local:0"]
    ),
    st.text(st.sampled_from("abc.-:[]19 _"), max_size=12),
)


@PROPS
@given(
    scheme=st.sampled_from(["http", "https", "HTTPS", "ftp", ""]),
    host=st.one_of(st.none(), hostish),
    server=st.tuples(hostish, st.sampled_from(["", "80", "443", "8000"])),
    script_name=st.one_of(st.just(""), st.sampled_from(["/mnt", "/a/b", "mnt", "/"]), url_text),
    path=st.one_of(url_text, url_text.map(lambda p: "/" + p)),
    query=st.one_of(plain_query, url_text),
    allow=st.one_of(st.none(), st.sets(query_name, max_size=3)),
)
@example(scheme="http", host="Example.com:80", server=("", ""), script_name="", path="/p/1",
         query="b=2&a=1", allow=None)  # fmt: skip
def test_fast_request_key_is_the_general_one(
    scheme: str,
    host: str | None,
    server: tuple[str, str],
    script_name: str,
    path: str,
    query: str,
    allow: set[str] | None,
) -> None:
    """Plain requests skip parsing and quoting: the key they get is the one the general
    path computes, for every request."""
    env = {
        "wsgi.url_scheme": scheme,
        "SERVER_NAME": server[0],
        "SERVER_PORT": server[1],
        "SCRIPT_NAME": script_name,
        "PATH_INFO": path,
        "QUERY_STRING": query,
    }
    if host is not None:
        env["HTTP_HOST"] = host
    assert request_key(env, query_params=allow) == keys._request_key(env, allow)
    assert request_key(env, query_params=allow) == keys._request_key(env, allow)  # memos too


pair = st.tuples(st.text(latin1, max_size=6), st.text(latin1, max_size=6))
pairs = st.lists(pair, max_size=6)


@st.composite
def encoded(draw: Any, items: list[tuple[str, str]]) -> str:
    """One of the many ways a client may spell the same parameters."""
    rnd = draw(st.randoms(use_true_random=False))

    def enc(s: str) -> str:
        out = []
        for c in s:
            if c == " ":
                out.append(rnd.choice((" ", "+", "%20")))
            elif c in "&=+%#" or rnd.random() < 0.5:
                hexed = f"%{ord(c):02X}"
                out.append(hexed if rnd.random() < 0.5 else hexed.lower())
            else:
                out.append(c)
        return "".join(out)

    return "&".join(f"{enc(k)}={enc(v)}" for k, v in items)


def canonical(items: list[tuple[str, str]], allow: Any = None) -> list[tuple[str, str]]:
    """The parameters as the application reads them, names in order, repeated names
    keeping their relative order."""
    kept = [p for p in items if allow is None or p[0] in allow]
    return sorted(kept, key=lambda p: p[0])


@PROPS
@given(st.data(), pairs)
def test_query_order_and_spelling_do_not_change_the_key(data: Any, items: list) -> None:
    shuffled = data.draw(st.permutations(items))
    q1, q2 = data.draw(encoded(items)), data.draw(encoded(shuffled))
    same_meaning = canonical(items) == canonical(shuffled)
    assert (key_of(q1) == key_of(q2)) is same_meaning


@PROPS
@given(st.data(), pairs, pairs)
def test_distinct_queries_give_distinct_keys(data: Any, a: list, b: list) -> None:
    ka, kb = key_of(data.draw(encoded(a))), key_of(data.draw(encoded(b)))
    assert (ka == kb) is (canonical(a) == canonical(b))


@PROPS
@given(st.data(), pairs, pairs, st.sets(st.sampled_from(["a", "b", "page", ""]), max_size=3))
def test_allow_list_drops_exactly_the_other_params(
    data: Any, a: list, b: list, allow: set[str]
) -> None:
    names = st.sampled_from(["a", "b", "page", "", "utm"])
    a = [(data.draw(names), v) for _, v in a]
    b = [(data.draw(names), v) for _, v in b]
    ka, kb = (key_of(data.draw(encoded(x)), allow) for x in (a, b))
    assert (ka == kb) is (canonical(a, allow) == canonical(b, allow))


@PROPS
@given(st.data(), st.lists(st.text(latin1, max_size=6), min_size=2, max_size=5))
def test_repeated_params_keep_their_value_order(data: Any, values: list[str]) -> None:
    query = data.draw(encoded([("x", v) for v in values] + [("a", "1")]))
    rk = request_key(environ(query=query))
    assert rk is not None
    decoded = parse_qsl(rk.query, keep_blank_values=True, encoding="latin-1")
    assert decoded == [("a", "1")] + [("x", v) for v in values]


@PROPS
@given(st.data(), pairs)
def test_normalised_query_round_trips_the_bytes_the_app_reads(data: Any, items: list) -> None:
    query = data.draw(encoded(items))
    norm = normalise_query(query)
    assert normalise_query(norm) == norm  # idempotent
    # latin-1 stands for bytes: the render reads the very bytes the client sent,
    # whatever charset the application decodes them with
    assert parse_qsl(norm, keep_blank_values=True, encoding="latin-1") == canonical(items)


@PROPS
@given(st.text(latin1, max_size=60), st.text(latin1, max_size=60))
def test_paths_are_quoted_injectively_and_round_trip(a: str, b: str) -> None:
    qa, qb = quote_path(a), quote_path(b)
    assert unquote_to_bytes(qa) == a.encode("latin-1")
    assert (qa == qb) is (a == b)
    assert "?" not in qa and "#" not in qa


@PROPS
@given(
    st.text(latin1, min_size=1, max_size=30),
    st.text(latin1, min_size=1, max_size=20),
    st.integers(0, 1500),
    st.integers(0, 1500),
    st.text(latin1, max_size=3),
)
def test_long_keys_are_capped_and_hashed(
    path: str, seed: str, n: int, at: int, change: str
) -> None:
    v1 = (seed * (n // len(seed) + 1))[:n]  # often far longer than MAX_KEY
    v2 = v1[:at] + change + v1[at:]  # the same but for a change anywhere, often past the cut
    keys = []
    for v in (v1, v2):
        rk = request_key(environ(path="/" + path, query="q=" + quote(v, encoding="latin-1")))
        assert rk is not None
        full = f"{rk.scheme}://{rk.host}{rk.path}?{rk.query}"
        assert len(rk.key) <= MAX_KEY
        # a '#' never appears in an unhashed key, so hashed and plain keys cannot meet
        assert ("#" in rk.key) is (len(full) > MAX_KEY)
        assert rk.key == (full if len(full) <= MAX_KEY else shorten(full))
        keys.append(rk.key)
    assert (keys[0] == keys[1]) is (v1 == v2)


@PROPS
@given(
    st.text(latin1, max_size=700),
    st.text(latin1, max_size=700),
    st.sampled_from(["#", "#vary:", "\n", " ", ""]),
    st.integers(0, 400),
)
def test_variant_keys_differ_exactly_when_the_header_values_do(
    a: str, b: str, trick: str, at: int
) -> None:
    base = key_of("q=1")
    b = b[:at] + trick + b[at:]  # separators an attacker would use to imitate other keys
    ka, kb = (variant_key(base, ["x-variant"], {"HTTP_X_VARIANT": v}) for v in (a, b))
    assert len(ka) <= MAX_KEY + 100 and len(kb) <= MAX_KEY + 100
    same = " ".join(a.split()) == " ".join(b.split())  # whitespace runs are folded
    assert (ka == kb) is same
    assert ka != base and ka != shorten(base + "\nx-variant=" + a)


@PROPS
@given(st.text(max_size=40) | latin1_text, st.sampled_from(["http", "https"]))
def test_any_host_header_gives_a_canonical_host_or_none(host: str, scheme: str) -> None:
    got = normalise_host({"HTTP_HOST": host, "wsgi.url_scheme": scheme})
    if got is None:
        return
    assert got == got.lower() and got and not got.endswith(".")
    assert re.fullmatch(r"[a-z0-9_.\-\[\]:]+", got)
    assert not got.endswith(":80" if scheme == "http" else ":443")
    # normalising is idempotent: the render's Host maps to the same key
    assert normalise_host({"HTTP_HOST": got, "wsgi.url_scheme": scheme}) == got


segment = st.text(
    st.characters(codec="utf-8", exclude_characters="/%?#"), min_size=1, max_size=10
).filter(lambda s: s not in (".", ".."))


@PROPS
@given(st.lists(segment, min_size=1, max_size=MAX_LAYOUT_DEPTH + 3), st.booleans())
def test_revalidate_path_reaches_the_page_written_any_way(segs: list[str], quoted: bool) -> None:
    user_path = "/" + "/".join(segs)  # as a user writes it: /blog/héllo
    path_info = user_path.encode("utf-8").decode("latin-1")  # as WSGI passes it
    tags = path_tags(quote_path(path_info))
    spelled = quote(user_path, safe="/") if quoted else user_path
    assert page_tag(spelled) in tags
    for depth in range(0, min(len(segs), MAX_LAYOUT_DEPTH) + 1):
        ancestor = "/" + "/".join(segs[:depth])
        assert layout_tag(quote(ancestor, safe="/") if quoted else ancestor) in tags
    if len(segs) > 1:
        assert page_tag("/" + "/".join(segs[:-1])) not in tags  # a page is not its parent


# -- the revalidation endpoint ---------------------------------------------------------------

json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=12),
    st.text(st.characters(exclude_categories=()), max_size=6),  # with lone surrogates
)
json_value = st.recursive(
    json_scalar,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=12,
)
good_tag = tagish.filter(is_valid_tag)
good_path = st.builds(lambda s: "/" + s, st.text(max_size=20))
strings_or_lists = {
    "tag": st.one_of(
        good_tag, tagish, st.lists(good_tag, max_size=4), st.lists(tagish, max_size=4), json_value
    ),
    "path": st.one_of(good_path, st.text(max_size=8), st.lists(good_path, max_size=4), json_value)
    | st.just("/" + "x" * 2048)
    | st.just("/" + "x" * 2047),
}
body_secret = st.text(st.characters(exclude_categories=()), max_size=3) | st.sampled_from(
    [SECRET, "wrong", SECRET + "x", SECRET.upper(), "", 0, None, [SECRET]]
)
shaped_body = st.fixed_dictionaries(
    {},
    optional={
        "tag": strings_or_lists["tag"],
        "tags": strings_or_lists["tag"],
        "path": strings_or_lists["path"],
        "paths": strings_or_lists["path"],
        "type": st.sampled_from(["page", "layout", "site", "", None, 1]),
        "mode": st.sampled_from(["soft", "hard", "nuke", "", None, ["soft"]]),
        "secret": body_secret,
        "extra": json_value,
    },
)
bearer = st.sampled_from(
    [None, f"Bearer {SECRET}", f"bearer {SECRET}", f"Bearer  {SECRET} ", "Bearer wrong"]
    + [f"Bearer {SECRET}x", "Bearer ", "Bearer", f"Basic {SECRET}", SECRET, f"Token {SECRET}"]
)


def authorised(auth: str | None, body: Any) -> bool:
    scheme, _, given_secret = (auth or "").partition(" ")
    if scheme.lower() == "bearer" and given_secret:
        return given_secret.strip() == SECRET
    return isinstance(body, dict) and body.get("secret") == SECRET


def expected(body: Any) -> str:
    """``"ok"``, ``"bad"`` or ``"either"`` for an authorised request, from DESIGN §6."""
    if not isinstance(body, dict):
        return "bad"
    verdict = "ok"

    def strings(field: str) -> list[str] | None:
        value = body[field]
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return value
        return None

    tags: list[str] = []
    paths: list[str] = []
    for field, into in (("tag", tags), ("tags", tags), ("path", paths), ("paths", paths)):
        if field in body:
            got = strings(field)
            if got is None:
                return "bad"
            into.extend(got)
    if (not tags and not paths) or len(tags) + len(paths) > 1024:
        return "bad"
    if body.get("mode", "soft") not in ("soft", "hard"):
        return "bad"
    for tag in map(api_form, tags):
        if not is_valid_tag(tag):
            if is_valid_tag(tag.strip()):
                verdict = "either"  # surrounding whitespace: stripped or refused, both fine
            else:
                return "bad"
    if len({t.strip() for t in tags}) != len(set(tags)):
        verdict = "either"
    for path in paths:
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:
            return "bad"
        if not path.startswith("/") or len(path) > 2048 or "?" in path or "#" in path:
            return "bad"  # a path carries no query (DESIGN 4: all its variants are meant)
    if paths and body.get("type", "page") not in ("page", "layout"):
        return "bad"
    return verdict


def post(mw: ISRMiddleware, data: bytes, auth: str | None, **environ: Any) -> Any:
    headers = {"Content-Type": "application/json"}
    if auth is not None:
        headers["Authorization"] = auth
    return Client(mw).post(
        "/_isr/revalidate", data=data, headers=headers, environ_overrides=environ
    )


def endpoint_mw(**options: Any) -> ISRMiddleware:
    return ISRMiddleware(
        CountingApp(), store=MemoryStore(), secret=SECRET, clock=FakeClock(), **options
    )


def check_endpoint_answer(r: Any, auth: str | None, body: Any) -> None:
    assert r.status_code < 500
    assert r.mimetype == "application/json"
    data = r.json
    if not authorised(auth, body):
        assert r.status_code == 401 and isinstance(data["error"], str) and data["error"]
        return
    verdict = expected(body)
    if verdict == "ok":
        assert r.status_code == 200, data
    elif verdict == "bad":
        assert r.status_code == 400, data
    else:
        assert r.status_code in (200, 400), data
    if r.status_code == 200:
        assert data["revalidated"] is True
        assert isinstance(data["tags"], list) and isinstance(data["paths"], list)
    else:
        assert isinstance(data["error"], str) and data["error"]


@PROPS
@given(st.one_of(shaped_body, json_value), bearer)
def test_endpoint_answers_any_json_value_with_200_or_a_clear_4xx(
    body: Any, auth: str | None
) -> None:
    mw = endpoint_mw()
    r = post(mw, json.dumps(body).encode(), auth)
    check_endpoint_answer(r, auth, body)
    if r.status_code == 200:  # and it did invalidate
        tags = r.json["tags"]
        if tags:
            assert mw.store.tag_states(api_form(t.strip()) for t in tags)


@PROPS
@given(st.binary(max_size=300) | st.text(max_size=100).map(str.encode), bearer)
def test_endpoint_answers_any_bytes_with_a_clear_4xx(data: bytes, auth: str | None) -> None:
    try:
        body = json.loads(data) if data.strip() else {}
    except ValueError:
        body = None
    r = post(endpoint_mw(), data, auth)
    check_endpoint_answer(r, auth, body)


@FEWER
@given(st.integers(1025, 20_000), st.binary(min_size=1, max_size=1), bearer)
def test_endpoint_bodies_over_the_cap_are_413(size: int, byte: bytes, auth: str | None) -> None:
    r = post(endpoint_mw(max_request_bytes=1024), byte * size, auth)
    assert r.status_code == 413 and "error" in r.json


@PROPS
@given(st.text(latin1, max_size=12) | st.integers(-(10**20), 10**20).map(str), bearer)
def test_endpoint_any_content_length_is_a_4xx(length: str, auth: str | None) -> None:
    env = EnvironBuilder(path="/_isr/revalidate", method="POST").get_environ()
    env.update(CONTENT_LENGTH=length, CONTENT_TYPE="application/json")
    env["wsgi.input"] = io.BytesIO(b'{"nothing": 1}')
    if auth is not None:
        env["HTTP_AUTHORIZATION"] = auth
    status: list[str] = []
    body = b"".join(endpoint_mw(max_request_bytes=1024)(env, lambda s, h, e=None: status.append(s)))
    assert 400 <= int(status[0][:3]) < 500
    assert json.loads(body)["error"]


def test_endpoint_secret_with_lone_surrogate_is_401() -> None:
    r = post(endpoint_mw(), b'{"tag": "x", "secret": "\\ud800"}', None)
    assert r.status_code == 401


@pytest.mark.parametrize("opening", [b"[", b'{"a":'])
def test_endpoint_deeply_nested_json_is_400(opening: bytes) -> None:
    r = post(endpoint_mw(), opening * (60_000 // len(opening)), f"Bearer {SECRET}")  # < cap
    assert r.status_code == 400


def test_endpoint_accepts_up_to_max_items_valid_tags() -> None:
    tags = [f"post-{i}" for i in range(200)]
    r = post(endpoint_mw(), json.dumps({"tags": tags}).encode(), f"Bearer {SECRET}")
    assert r.status_code == 200, r.json
    assert r.json["tags"] == tags


# -- the whole middleware --------------------------------------------------------------------


class InlineRunner:
    """Runs regenerations at once, so a property sees their effects deterministically."""

    def submit(self, task: Any) -> bool:
        task()
        return True

    def join(self, timeout: float | None = None) -> bool:
        return True


def serve(mw: ISRMiddleware, **environ: Any) -> tuple[int, dict[str, str], bytes]:
    env = EnvironBuilder(path="/").get_environ()
    env.update(environ)
    seen: list[Any] = []
    body = b"".join(mw(env, lambda s, h, e=None: seen.append((s, h))))
    status, headers = seen[-1]
    return int(status[:3]), dict(headers), body


#: What a server passes for UTF-8 cookie bytes (the common case), besides any latin-1.
utf8_as_wsgi = st.text(max_size=30).map(lambda s: s.encode("utf-8").decode("latin-1"))
cookie_header = st.one_of(
    utf8_as_wsgi,
    latin1_text,
    st.lists(
        st.tuples(
            st.sampled_from(["session", "theme", "__isr_bypass", "a b", ""]),
            utf8_as_wsgi | latin1_text,
        ),
        max_size=3,
    ).map(lambda kv: "; ".join(f"{k}={v}" for k, v in kv)),
)
request_parts = st.fixed_dictionaries(
    {
        "PATH_INFO": st.text(latin1, max_size=30) | st.builds(lambda s: "/" + s, latin1_text),
        "QUERY_STRING": latin1_text | st.text(latin1, min_size=500, max_size=700),
    },
    optional={
        "HTTP_HOST": st.one_of(
            latin1_text,
            st.sampled_from(["example.com", "EXAMPLE.com.:80", "[::1]:8080", "a:99999", ":80"]),
        ),
        "HTTP_COOKIE": cookie_header,
        "HTTP_AUTHORIZATION": latin1_text,
        "HTTP_X_ISR_BYPASS": latin1_text,
        "HTTP_ACCEPT_LANGUAGE": latin1_text,
        "HTTP_IF_NONE_MATCH": latin1_text,
        "HTTP_IF_MODIFIED_SINCE": latin1_text,
        "REQUEST_METHOD": st.sampled_from(["GET", "HEAD"]),
        "wsgi.url_scheme": st.sampled_from(["http", "https"]),
    },
)


def varying_app() -> CountingApp:
    # some pages vary on a header, some do not opt in, the rest are cached
    def headers(environ: dict, n: int) -> list[tuple[str, str]]:
        h = len(environ.get("PATH_INFO", "")) % 3
        if h == 0:
            return [("X-ISR-Revalidate", "60"), ("Vary", "Accept-Language, Cookie")]
        if h == 1:
            return []
        return [("X-ISR-Revalidate", "false"), ("X-ISR-Tags", "t")]

    return CountingApp(default=headers)


def cookie_names(header: str) -> dict[str, str]:
    """RFC 6265 in a few lines: ``name=value`` pairs split on ';', first one wins."""
    out: dict[str, str] = {}
    for part in header.split(";"):
        name, _, value = part.partition("=")
        out.setdefault(name.strip(), value.strip().strip('"'))
    return out


def check_request_sequence(mw: ISRMiddleware, requests: list[dict[str, str]]) -> None:
    for req in requests + requests:  # twice: misses, then hits
        status, headers, body = serve(mw, **req)
        conditional = "HTTP_IF_NONE_MATCH" in req or "HTTP_IF_MODIFIED_SINCE" in req
        assert status == 200 or (conditional and status == 304), (status, req)
        assert headers["X-ISR-Cache"] in ("HIT", "STALE", "MISS", "BYPASS")
        assert not [k for k in headers if k.lower().startswith("x-isr-") and k != "X-ISR-Cache"]
        if req.get("REQUEST_METHOD") != "HEAD" and status == 200:
            assert b" render " in body  # the app's page, not something else
        cookies = cookie_names(req.get("HTTP_COOKIE", ""))
        token = mw.bypass_token
        if mw.bypass_cookies.intersection(cookies) or (
            token and cookies.get("__isr_bypass") == token
        ):
            assert headers["X-ISR-Cache"] == "BYPASS"  # logged in or previewing: never cached


@PROPS
@given(
    st.lists(request_parts, min_size=1, max_size=4),
    st.sampled_from([None, ["a", "q", ""]]),
    st.sampled_from([None, 1.0]),
)
def test_any_request_is_answered_by_the_app_never_a_5xx(
    requests: list[dict], query_params: list[str] | None, local_ttl: float | None
) -> None:
    mw = ISRMiddleware(
        varying_app(),
        store=MemoryStore(),
        clock=FakeClock(),
        runner=InlineRunner(),
        bypass_cookies=("session",),
        bypass_token="draft-token",
        query_params=query_params,
        local_ttl=local_ttl,
    )
    check_request_sequence(mw, requests)


@pytest.mark.parametrize("cookie", ["\x80", "theme=\xe9t\xe9", "session=\xff"])
def test_non_utf8_cookie_bytes_do_not_break_the_bypass_check(cookie: str) -> None:
    app = CountingApp()
    mw = ISRMiddleware(app, store=MemoryStore(), clock=FakeClock(), bypass_cookies=("session",))
    status, headers, body = serve(mw, PATH_INFO="/p", HTTP_COOKIE=cookie)
    assert status == 200 and b"/p? render 1" in body


@pytest.fixture(scope="module")
def file_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("props"))


@FEWER
@given(requests=st.lists(request_parts, min_size=1, max_size=3))
def test_any_request_is_answered_through_a_file_store(file_root: str, requests: list[dict]) -> None:
    clock = FakeClock()
    store = FileStore(tempfile.mkdtemp(dir=file_root), clock=clock)
    mw = ISRMiddleware(
        varying_app(),
        store=store,
        clock=clock,
        runner=InlineRunner(),
        trusted_hosts=[".example.com", "localhost"],
    )
    check_request_sequence(mw, requests)


opt_in_headers = st.lists(
    st.tuples(
        st.sampled_from(["X-ISR-Revalidate", "X-ISR-Expire", "Cache-Control", "X-ISR-Tags"]),
        numberish | cache_control,
    ),
    max_size=4,
)


def headers_app(headers: list[tuple[str, str]]) -> Any:
    def app(environ: dict, start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain"), *headers])
        return [b"page"]

    return app


def check_any_opt_in_values(store: Any, clock: FakeClock, headers: list[tuple[str, str]]) -> None:
    mw = ISRMiddleware(headers_app(headers), store=store, clock=clock, runner=InlineRunner())
    for advance in (0, 30, 10**6):
        clock.advance(advance)
        status, got, body = serve(mw, PATH_INFO="/p")
        assert status == 200 and body == b"page"


@PROPS
@given(opt_in_headers)
@example([("X-ISR-Revalidate", "60"), ("X-ISR-Expire", "1e10")])
@example([("X-ISR-Revalidate", "60"), ("X-ISR-Expire", "1e306")])
@example([("Cache-Control", "s-maxage=1e306")])
def test_any_opt_in_header_values_are_served_with_a_memory_store(
    headers: list[tuple[str, str]],
) -> None:
    clock = FakeClock()
    check_any_opt_in_values(MemoryStore(clock=clock), clock, headers)


@FEWER
@given(headers=opt_in_headers)
@example(headers=[("X-ISR-Revalidate", "60"), ("X-ISR-Expire", "1e10")])
@example(headers=[("Cache-Control", "s-maxage=99999999999")])
def test_any_opt_in_header_values_are_served_with_a_file_store(
    file_root: str, headers: list[tuple[str, str]]
) -> None:
    clock = FakeClock()
    store = FileStore(tempfile.mkdtemp(dir=file_root), clock=clock)
    check_any_opt_in_values(store, clock, headers)


@pytest.mark.parametrize("value", ["1e306", "1.7e308"])
def test_huge_x_isr_expire_is_served_with_a_redis_store(redis_url: str, value: str) -> None:
    clock = FakeClock()
    store = RedisStore(redis_url, clock=clock)
    try:
        check_any_opt_in_values(store, clock, [("X-ISR-Revalidate", "60"), ("X-ISR-Expire", value)])
    finally:
        store.close()
