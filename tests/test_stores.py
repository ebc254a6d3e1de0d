"""The store contract: one behaviour suite run against every store.

Each test takes a ``backend`` (memory, file, redis), a ``shared_backend`` (the stores
whose instances share data, as workers do: file, redis) or a ``bounded_backend``
(the stores with ``max_entries``: memory, file) and opens stores on it. Lock TTLs
follow the store's clock (a :class:`~conftest.FakeClock`) except on Redis, which
counts real milliseconds; ``Backend.elapse`` hides the difference. Record TTLs are
kept by the cachelib backends in real seconds, so the one record-TTL test sleeps.
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
import os
import pickle
import struct
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cachelib import FileSystemCache, NullCache, RedisCache, SimpleCache
from helpers import CountingApp
from redis_topologies import ACL_PREFIX
from werkzeug.test import Client

import wsgi_isr.stores.file as file_module
from wsgi_isr import codec
from wsgi_isr.entry import Entry, PassMarker, Record, TagState, VaryMarker
from wsgi_isr.errors import StoreError
from wsgi_isr.middleware import ISRMiddleware
from wsgi_isr.stores import FileStore, MemoryStore, RedisStore, Store, open_store
from wsgi_isr.stores.shelf import FILE_HEAD

ENTRY = Entry(
    status="200 OK",
    headers=(("Content-Type", "text/html; charset=utf-8"), ("X-Thing", "é 1")),
    body=b"<h1>hello</h1>\x00\xff",
    created=1_000_000.25,
    revalidate=60.0,
    expire=None,
    tags=("posts", "post-1", "/blog/hello"),
    etag='"abc123"',
    last_modified="Wed, 21 Oct 2015 07:28:00 GMT",
)
UNTIL_INVALIDATED = dataclasses.replace(
    ENTRY, revalidate=None, expire=86400.0, tags=(), body=b"", headers=()
)

RECORDS = [
    pytest.param(ENTRY, id="entry"),
    pytest.param(UNTIL_INVALIDATED, id="entry-until-invalidated"),
    pytest.param(PassMarker("set-cookie"), id="pass-marker"),
    pytest.param(VaryMarker(("accept-language", "x-variant")), id="vary-marker"),
    pytest.param(VaryMarker(()), id="vary-marker-no-headers"),
]

ALL = [
    pytest.param("memory", id="memory"),
    pytest.param("file", id="file"),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
    # an ACL user allowed exactly the README's commands, over TLS with a client certificate
    pytest.param("redis-tls-acl", id="redis-tls-acl", marks=pytest.mark.redis),
    pytest.param("redis-cluster", id="redis-cluster", marks=pytest.mark.redis),
]
SHARED = ALL[1:]  # two instances on one backend see the same data
BOUNDED = ALL[:2]  # take max_entries


class Backend:
    """One kind of store: opens instances on the same data and moves time for their locks."""

    def __init__(self, kind: str, request: pytest.FixtureRequest, tmp_path: Path, clock: Any):
        self.kind = kind
        self.clock = clock
        self.shared = kind != "memory"
        self._stores: list[Store] = []
        if kind == "memory":
            self.url = "memory://"
        elif kind == "file":
            self.root = tmp_path / "store"
            self.url = f"file://{self.root}"
        elif kind == "redis-tls-acl":
            prefix = f"{ACL_PREFIX}{uuid.uuid4().hex[:8]}:"
            self.url = request.getfixturevalue("redis_tls").url(prefix)
        elif kind == "redis-cluster":
            self.url = request.getfixturevalue("redis_cluster").url(f"c{uuid.uuid4().hex[:8]}:")
        else:
            self.url = request.getfixturevalue("redis_url")

    def open(self, **options: Any) -> Store:
        store: Store
        if self.kind == "memory":
            store = MemoryStore(clock=self.clock, **options)
        elif self.kind == "file":
            store = FileStore(str(self.root), clock=self.clock, **options)
        else:
            store = RedisStore(self.url, clock=self.clock, **options)
        self._stores.append(store)
        return store

    def elapse(self, seconds: float) -> None:
        """Let lock TTLs run: Redis expires keys by its own real clock."""
        if self.kind.startswith("redis"):
            time.sleep(seconds)
        else:
            self.clock.advance(seconds)

    def write_raw(self, store: Store, key: str, data: bytes) -> None:
        """Put ``data`` where the store reads the record for ``key``, bypassing ``put``."""
        if isinstance(store, RedisStore):
            store.client.set(f"{store.prefix}e:{key}", data)
        elif isinstance(store, FileStore):
            Path(store.pages.filename(key)).write_bytes(FILE_HEAD.pack(0.0, 1) + data)
        else:
            store.cache.set(key, data, timeout=0)  # type: ignore[attr-defined]

    def close(self) -> None:
        for store in self._stores:
            store.close()


def _backend(request: pytest.FixtureRequest, tmp_path: Path, clock: Any) -> Iterator[Backend]:
    backend = Backend(request.param, request, tmp_path, clock)
    yield backend
    backend.close()


@pytest.fixture(params=ALL)
def backend(request: pytest.FixtureRequest, tmp_path: Path, clock: Any) -> Iterator[Backend]:
    yield from _backend(request, tmp_path, clock)


@pytest.fixture(params=SHARED)
def shared_backend(request: pytest.FixtureRequest, tmp_path: Path, clock: Any) -> Iterator[Backend]:
    yield from _backend(request, tmp_path, clock)


@pytest.fixture(params=BOUNDED)
def bounded_backend(
    request: pytest.FixtureRequest, tmp_path: Path, clock: Any
) -> Iterator[Backend]:
    yield from _backend(request, tmp_path, clock)


@pytest.fixture
def store(backend: Backend) -> Store:
    return backend.open()


def _merge(old: TagState | None, at: float, hard: bool) -> TagState:
    """The expected tag state, written out independently of the code under test."""
    stale, expired = old or (0.0, 0.0)
    return (max(stale, at), max(expired, at) if hard else expired)


# -- records ------------------------------------------------------------------------------


@pytest.mark.parametrize("record", RECORDS)
def test_put_then_lookup_returns_an_equal_record(store: Store, record: Record) -> None:
    store.put("https://example.com/blog/hello?a=1", record, ttl=None)
    got, _ = store.lookup("https://example.com/blog/hello?a=1")
    assert got == record
    assert type(got) is type(record)


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("https://example.com/", id="url"),
        pytest.param("https://example.com/ключ/ü?q=日本", id="unicode"),
        pytest.param("https://example.com/" + "a" * 2000, id="long"),
        pytest.param("../../etc/passwd", id="path-traversal"),
        pytest.param("e:lock:tagseq", id="looks-like-internal-keys"),
        pytest.param("https://h/p|accept-language=en, fr", id="with-vary-values"),
    ],
)
def test_keys_are_opaque_and_distinct(store: Store, key: str) -> None:
    store.put(key, PassMarker("mine"), ttl=None)
    store.put(key + "/other", PassMarker("other"), ttl=None)
    assert store.lookup(key)[0] == PassMarker("mine")
    assert store.lookup(key + "/other")[0] == PassMarker("other")


def test_lookup_of_a_missing_key_is_none_and_tag_states(store: Store) -> None:
    store.invalidate(["posts"], 1_000_100.0, hard=False)
    record, tags = store.lookup("https://example.com/nothing-here")
    assert record is None
    assert tags.get("posts") == (1_000_100.0, 0.0)


def test_put_replaces_the_previous_record(store: Store) -> None:
    store.put("k", ENTRY, ttl=None)
    newer = dataclasses.replace(ENTRY, body=b"second render", created=ENTRY.created + 60)
    store.put("k", newer, ttl=None)
    assert store.lookup("k")[0] == newer
    store.put("k", VaryMarker(("accept-language",)), ttl=None)
    assert store.lookup("k")[0] == VaryMarker(("accept-language",))


def test_delete_removes_only_that_key(store: Store) -> None:
    store.put("a", ENTRY, ttl=None)
    store.put("b", PassMarker("x"), ttl=None)
    store.delete("a")
    assert store.lookup("a")[0] is None
    assert store.lookup("b")[0] == PassMarker("x")


def test_delete_of_a_missing_key_is_not_an_error(store: Store) -> None:
    store.delete("never-stored")
    store.put("a", ENTRY, ttl=None)
    store.delete("a")
    store.delete("a")
    assert store.lookup("a")[0] is None


def test_count_follows_puts_and_deletes(store: Store) -> None:
    assert store.count() == 0
    for key in ("a", "b", "c"):
        store.put(key, ENTRY, ttl=None)
    store.put("a", PassMarker("again"), ttl=None)
    store.invalidate(["posts"], 1.0, hard=True)  # tag state is not a record
    assert store.acquire("lock", 10)  # nor is a lock
    assert store.count() == 3
    store.delete("b")
    assert store.count() == 2


def test_records_are_shared_between_instances(shared_backend: Backend) -> None:
    one, two = shared_backend.open(), shared_backend.open()
    one.put("k", ENTRY, ttl=None)
    assert two.lookup("k")[0] == ENTRY
    two.delete("k")
    assert one.lookup("k")[0] is None


def test_record_ttl_lets_the_backend_drop_it(store: Store) -> None:
    # the only test that waits for wall-clock record expiry: cachelib and Redis
    # keep record TTLs in real seconds. cachelib expires at int(now) + ttl, so a
    # put just before a whole second would be gone at once: start early in a second.
    if time.time() % 1 > 0.7:
        time.sleep(1.01 - time.time() % 1)
    store.put("short", ENTRY, ttl=1)
    store.put("long", ENTRY, ttl=3600)
    store.put("forever", ENTRY, ttl=None)
    assert store.lookup("short")[0] == ENTRY
    time.sleep(1.1)
    assert store.lookup("short")[0] is None
    assert store.lookup("long")[0] == ENTRY
    assert store.lookup("forever")[0] == ENTRY


def _codec_bytes(kind: int, text: bytes, body: bytes = b"", **changes: Any) -> bytes:
    fields = {"version": codec.VERSION, "nh": 0, "nt": 1, "created": 1.0, **changes}
    return (
        struct.pack(
            ">4sBBHHdddII",
            codec.MAGIC,
            fields["version"],
            kind,
            fields["nh"],
            fields["nt"],
            fields["created"],
            float("nan"),
            float("nan"),
            len(text),
            len(body),
        )
        + text
        + body
    )


class _Planted:
    """Unpickling this creates ``path``: proof that a store ran code from its bytes."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (self.path,))


GOOD = codec.dumps(ENTRY)
PLANTED = [
    pytest.param(lambda m: pickle.dumps(_Planted(m)), id="code-running-pickle"),
    pytest.param(lambda m: b"!" + pickle.dumps(_Planted(m)), id="cachelib-redis-pickle"),
    pytest.param(lambda m: struct.pack("I", 0) + pickle.dumps(_Planted(m)), id="cachelib-file"),
    pytest.param(lambda m: _codec_bytes(2, b"x", version=codec.VERSION + 1), id="version"),
    pytest.param(lambda m: _codec_bytes(7, b"what"), id="unknown-kind"),
    pytest.param(lambda m: _codec_bytes(1, b"200 OK\x00e"), id="entry-missing-fields"),
    pytest.param(lambda m: _codec_bytes(1, b"200 OK\x00e\x00", nt=0, nh=1), id="wrong-count"),
    pytest.param(lambda m: _codec_bytes(1, b"a\x00b\x00c", nt=0, created=math.nan), id="nan"),
    pytest.param(lambda m: _codec_bytes(1, b"\xff\xfe\x00\x00", nt=0), id="not-utf8"),
    pytest.param(lambda m: _codec_bytes(2, b"x", body=b"!"), id="marker-with-a-body"),
    pytest.param(lambda m: GOOD[:-3], id="truncated"),
    pytest.param(lambda m: GOOD + b"xx", id="trailing-bytes"),
    pytest.param(lambda m: GOOD[: codec.HEAD_SIZE - 1], id="truncated-header"),
    pytest.param(lambda m: codec.MAGIC + bytes([codec.VERSION]) + b"\xff" * 40, id="huge-length"),
    pytest.param(lambda m: b"", id="empty"),
    pytest.param(lambda m: bytes(range(256)) * 8, id="binary"),
]


@pytest.mark.parametrize("planted", PLANTED)
def test_planted_bytes_under_a_key_are_a_miss_and_never_run_code(
    backend: Backend, tmp_path: Path, planted: Any
) -> None:
    marker = str(tmp_path / "code-ran")
    store = backend.open(cache=SimpleCache()) if backend.kind == "memory" else backend.open()
    store.put("k", ENTRY, ttl=None)
    backend.write_raw(store, "k", planted(marker))
    assert store.lookup("k")[0] is None
    assert not os.path.exists(marker)
    store.put("k", ENTRY, ttl=None)  # and it can be overwritten
    assert store.lookup("k")[0] == ENTRY


def test_the_record_format_round_trips_without_pickle() -> None:
    for record in (ENTRY, UNTIL_INVALIDATED, PassMarker("p"), VaryMarker(("a", "b"))):
        data = codec.dumps(record)
        assert data.startswith(codec.MAGIC) and b"\x80" not in data[:2]  # no pickle opcode
        assert codec.loads(data) == record
    assert codec.loads(bytearray(GOOD)) is None  # only bytes
    assert codec.loads(None) is None
    # a record after a header of its own (a file store's), decoded in place
    head = b"sixteen bytes..."
    for record in (ENTRY, PassMarker("p")):
        assert codec.loads(head + codec.dumps(record), len(head)) == record
    for bad in (GOOD[:-3], GOOD + b"xx", GOOD[: codec.HEAD_SIZE - 1], b""):
        assert codec.loads(head + bad, len(head)) is None
    assert codec.loads(head + GOOD, len(head) - 1) is None
    assert codec.loads(head + GOOD, len(head) + 1) is None


def test_tag_state_survives_a_flood_of_records(bounded_backend: Backend) -> None:
    store = bounded_backend.open(max_entries=10)
    expected: dict[str, TagState] = {}
    for i in range(50):
        tag = f"tag-{i}"
        store.invalidate([tag], 1_000.0 + i, hard=i % 2 == 0)
        expected[tag] = (1_000.0 + i, 1_000.0 + i if i % 2 == 0 else 0.0)
        store.put(f"page-{i}", dataclasses.replace(ENTRY, tags=(tag,)), ttl=None)
    kept = [i for i in range(50) if store.lookup(f"page-{i}")[0] is not None]
    assert len(kept) <= 11, "the flood did not evict records; the test proves nothing"
    assert store.tag_states(expected) == expected
    mapping = store.lookup("page-0")[1]
    assert {t: mapping.get(t) for t in expected} == expected
    if bounded_backend.shared:
        assert bounded_backend.open(max_entries=10).tag_states(expected) == expected


# -- bounds -------------------------------------------------------------------------------


def _page(i: int, size: int = 1024) -> Entry:
    return dataclasses.replace(ENTRY, body=bytes([i % 256]) * size, created=ENTRY.created + i)


def _held_bytes(store: Store) -> int:
    if isinstance(store, FileStore):
        return sum(p.stat().st_size for p in Path(store.pages.path).glob("?" * 64))
    assert isinstance(store, MemoryStore)
    return store.pages.bytes


def test_max_bytes_bounds_the_pages_and_keeps_the_newest(bounded_backend: Backend) -> None:
    store = bounded_backend.open(max_entries=1000, max_bytes="20KB")
    for i in range(100):
        store.put(f"page-{i}", _page(i), ttl=None)
        assert _held_bytes(store) <= 20_000
    kept = [i for i in range(100) if store.lookup(f"page-{i}")[0] is not None]
    assert 5 <= len(kept) < 20 and kept == list(range(100 - len(kept), 100))
    assert store.count() == len(kept)
    assert store.lookup("page-99")[0] == _page(99)


def test_a_record_larger_than_max_bytes_is_not_stored(bounded_backend: Backend) -> None:
    store = bounded_backend.open(max_bytes=5000)
    store.put("k", _page(1, 100), ttl=None)
    store.put("small", _page(2, 100), ttl=None)
    store.put("k", _page(3, 10_000), ttl=None)  # the new render is too large: no old copy
    assert store.lookup("k")[0] is None
    assert store.lookup("small")[0] == _page(2, 100)  # and nothing else was evicted for it


def test_hit_for_pass_markers_never_evict_pages(bounded_backend: Backend) -> None:
    store = bounded_backend.open(max_entries=10, max_markers=3)
    for i in range(10):
        store.put(f"page-{i}", _page(i, 100), ttl=None)
    for i in range(200):  # every URL that does not opt in, a 404 flood
        store.put(f"junk-{i}", PassMarker("no opt-in"), ttl=None)
    assert all(store.lookup(f"page-{i}")[0] == _page(i, 100) for i in range(10))
    markers = [i for i in range(200) if store.lookup(f"junk-{i}")[0] is not None]
    assert markers == [197, 198, 199]
    assert store.count() == 13
    store.put("page-0", PassMarker("now private"), ttl=None)  # a page becomes a marker
    assert store.lookup("page-0")[0] == PassMarker("now private") and store.count() == 12
    store.put("page-0", _page(0, 100), ttl=None)  # and back
    assert store.lookup("page-0")[0] == _page(0, 100) and store.count() == 12


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        pytest.param("max_entries=5", (5, 0, None), id="entries"),
        pytest.param("max_bytes=2GB", (None, 2_000_000_000, None), id="gigabytes"),
        pytest.param("max_bytes=512MiB&max_markers=7", (None, 512 << 20, 7), id="mebibytes"),
        pytest.param("max_bytes=1048576", (None, 1 << 20, None), id="plain-bytes"),
    ],
)
def test_bounds_from_the_store_url(tmp_path: Path, query: str, expected: tuple[Any, ...]) -> None:
    for url in (f"memory://?{query}", f"file://{tmp_path}/s?{query}"):
        store = open_store(url)
        assert isinstance(store, MemoryStore | FileStore)
        entries, size, markers = expected
        assert store.pages.max_entries == (entries or store.pages.max_entries)
        assert store.pages.max_bytes == size
        if markers is not None:
            assert store.passes.max_entries == markers


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("memory://?max_bytes=lots", id="bad-size"),
        pytest.param("memory://?max_entries=-1", id="negative-entries"),
        pytest.param("memory://?max_entrys=5", id="misspelt"),
        pytest.param("file:///tmp/x?max_bytes=2XB", id="bad-unit"),
    ],
)
def test_bad_bounds_in_the_store_url_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        open_store(url)


WRITERS = 4


def _write_and_delete(path: str, n: int, max_entries: int, barrier: Any) -> None:
    store = FileStore(path, max_entries=max_entries)
    barrier.wait(timeout=60)
    for i in range(60):  # the same keys from every process: replacements, not new records
        store.put(f"shared-{i}", _page(i, 200), ttl=None)
    for i in range(40):
        store.put(f"own-{n}-{i}", _page(i, 200 + n), ttl=None)
    for i in range(0, 40, 4):
        store.delete(f"own-{n}-{i}")
    store.put("shared-0", PassMarker("a marker replaces the page"), ttl=None)


@pytest.mark.parametrize("max_entries", [0, 100], ids=["unbounded", "full"])
def test_file_store_count_is_right_with_several_writer_processes(
    tmp_path: Path, max_entries: int
) -> None:
    path = str(tmp_path / "store")
    FileStore(path)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(WRITERS)
    procs = [
        ctx.Process(target=_write_and_delete, args=(path, n, max_entries, barrier))
        for n in range(WRITERS)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * WRITERS
    store = FileStore(path, max_entries=max_entries)
    files = len(list(Path(store.pages.path).glob("?" * 64)))
    assert store.pages.count() == files
    assert store.passes.count() == 1 and store.count() == files + 1
    if max_entries:
        # full, evicted down to the bound and no further (the deletes came last)
        assert max_entries - WRITERS * 10 - 1 <= files <= max_entries
    else:
        assert files == 59 + WRITERS * 30


# -- tag state ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("invalidations", "expected"),
    [
        pytest.param([(100.0, False)], (100.0, 0.0), id="soft-sets-stale-at"),
        pytest.param([(100.0, True)], (100.0, 100.0), id="hard-sets-both"),
        pytest.param([(100.0, False), (50.0, False)], (100.0, 0.0), id="soft-never-goes-back"),
        pytest.param([(100.0, True), (50.0, True)], (100.0, 100.0), id="hard-never-goes-back"),
        pytest.param([(100.0, False), (200.0, True)], (200.0, 200.0), id="soft-then-hard"),
        pytest.param([(100.0, True), (200.0, False)], (200.0, 100.0), id="hard-then-soft"),
        pytest.param([(100.0, False), (50.0, True)], (100.0, 50.0), id="late-hard-keeps-stale"),
        pytest.param(
            [(1_700_000_000.125, False), (1_700_000_000.5, True)],
            (1_700_000_000.5, 1_700_000_000.5),
            id="sub-second-precision",
        ),
    ],
)
def test_invalidate_records_tag_state(
    store: Store, invalidations: list[tuple[float, bool]], expected: TagState
) -> None:
    for at, hard in invalidations:
        store.invalidate(["posts"], at, hard=hard)
    assert store.tag_states(["posts"]) == {"posts": expected}
    assert store.lookup("any-key")[1].get("posts") == expected


def test_invalidate_several_tags_at_once(store: Store) -> None:
    store.invalidate(["a", "b", "/blog/hello"], 10.0, hard=True)
    store.invalidate([], 20.0, hard=True)  # nothing to do, not an error
    assert store.tag_states(["a", "b", "/blog/hello"]) == {
        "a": (10.0, 10.0),
        "b": (10.0, 10.0),
        "/blog/hello": (10.0, 10.0),
    }


def test_tag_states_leaves_out_tags_never_invalidated(store: Store) -> None:
    assert store.tag_states([]) == {}
    assert store.tag_states(["never"]) == {}
    store.invalidate(["known"], 5.0, hard=False)
    assert store.tag_states(["never", "known"]) == {"known": (5.0, 0.0)}
    assert "never" not in store.lookup("k")[1]


def test_lookup_reflects_invalidations_made_after_an_earlier_lookup(store: Store) -> None:
    store.put("k", ENTRY, ttl=None)
    assert "posts" not in store.lookup("k")[1]
    store.invalidate(["posts"], 10.0, hard=False)
    assert store.lookup("k")[1].get("posts") == (10.0, 0.0)
    store.invalidate(["posts"], 20.0, hard=True)
    assert store.lookup("k")[1].get("posts") == (20.0, 20.0)


def test_invalidations_are_shared_between_instances(shared_backend: Backend) -> None:
    one, two = shared_backend.open(), shared_backend.open()
    one.put("k", ENTRY, ttl=None)
    assert two.lookup("k")[1].get("posts") is None  # two has read (and cached) the state
    one.invalidate(["posts"], 10.0, hard=False)
    assert two.lookup("k")[1].get("posts") == (10.0, 0.0)
    assert two.tag_states(["posts"]) == {"posts": (10.0, 0.0)}
    one.invalidate(["posts", "post-1"], 20.0, hard=True)
    assert two.lookup("k")[1].get("posts") == (20.0, 20.0)
    assert two.lookup("k")[1].get("post-1") == (20.0, 20.0)
    two.invalidate(["posts"], 15.0, hard=False)  # older than what one wrote: no effect
    two.invalidate(["/blog/hello"], 30.0, hard=False)
    assert one.tag_states(["posts", "/blog/hello"]) == {
        "posts": (20.0, 20.0),
        "/blog/hello": (30.0, 0.0),
    }
    assert one.lookup("k")[1].get("/blog/hello") == (30.0, 0.0)


REDIS_GARBAGE = [
    pytest.param("tagstate", b"posts", b"not two numbers", id="state-not-numbers"),
    pytest.param("tagstate", b"posts", b"inf nan", id="state-not-finite"),
    pytest.param("tagstate", b"posts", b"cos\nsystem\n(S'x'\ntR.", id="state-a-pickle"),
    pytest.param("tagstate", b"\xff\xfe", b"1.0 2.0", id="tag-name-not-utf8"),
    pytest.param("tagseq", None, b"not a number", id="sequence-not-a-number"),
    pytest.param("tagseq", None, b"-5", id="sequence-negative"),
]


@pytest.mark.parametrize(("key", "field", "garbage"), REDIS_GARBAGE)
def test_redis_garbage_tag_state_is_a_store_error_never_a_500(
    redis_url: str, key: str, field: bytes | None, garbage: bytes
) -> None:
    writer = RedisStore(redis_url)
    try:
        writer.put("https://example.com/p", ENTRY, ttl=None)
        writer.invalidate(["posts"], 10.0, hard=False)  # the sequence moves: readers sync
        if field is None:
            writer.client.set(writer.prefix + key, garbage)
        else:
            writer.client.hset(writer.prefix + key, field, garbage)
            writer.client.zadd(writer.prefix + "tagchanges", {field: 10**15})
            writer.client.set(writer.prefix + "tagseq", 10**15)
        reader = RedisStore(redis_url)
        with pytest.raises(StoreError):
            reader.lookup("https://example.com/p")
        if key == "tagstate" and field == b"posts":
            with pytest.raises(StoreError):
                reader.tag_states(["posts"])
        app = CountingApp()
        client = Client(ISRMiddleware(app, store=reader), use_cookies=False)
        r = client.get("/p")
        assert r.status_code == 200 and b"/p? render 1" in r.data  # failed open to the app
        reader.close()
    finally:
        writer.close()


@pytest.mark.parametrize(
    "place",
    [
        pytest.param("tags.log", id="tag-log"),
        pytest.param("pages", id="every-page-file-index-and-journal"),
        pytest.param("passes", id="every-marker-file"),
        pytest.param("locks", id="lock-files"),
        pytest.param("entries", id="cachelib-files-of-an-older-release"),
    ],
)
def test_planted_files_anywhere_in_the_cache_dir_never_run_code_nor_fail_a_request(
    tmp_path: Path, place: str
) -> None:
    marker = tmp_path / "code-ran"
    root = tmp_path / "store"
    store = FileStore(str(root), max_entries=3)
    app = CountingApp(
        pages={"/plain": []}, default=[("X-ISR-Revalidate", "60"), ("X-ISR-Tags", "t")]
    )
    client = Client(ISRMiddleware(app, store=store), use_cookies=False)
    for i in range(5):
        client.get(f"/p{i}")
    client.get("/plain")
    store.invalidate(["t"], 1.0, hard=False)
    assert store.acquire("held", 60)
    (root / "entries").mkdir()  # what cachelib's FileSystemCache kept before
    for name in ("__wz_cache_count", "0123456789abcdef0123456789abcdef"):
        (root / "entries" / name).write_bytes(b"")
    planted = pickle.dumps(_Planted(str(marker)))
    target = root / place
    paths = [target] if target.is_file() else list(target.iterdir())
    assert paths
    for path in paths:
        path.write_bytes(planted)
    again = FileStore(str(root), max_entries=3)
    client = Client(ISRMiddleware(app, store=again), use_cookies=False)
    for path in [f"/p{i}" for i in range(8)] + ["/plain"]:
        assert client.get(path).status_code == 200
    assert client.get("/p7").headers["X-ISR-Cache"] == "HIT"  # caching again
    assert again.pages.count() <= 3 and again.acquire("another", 60)
    again.invalidate(["t"], 2.0, hard=False)
    assert again.tag_states(["t"]) == {"t": (2.0, 0.0)}
    assert not marker.exists()


# -- locks --------------------------------------------------------------------------------


def test_acquire_returns_a_token_and_excludes_others(store: Store) -> None:
    token = store.acquire("regen:k", 10)
    assert isinstance(token, str) and token
    assert store.acquire("regen:k", 10) is None


def test_locks_are_independent_per_name(store: Store) -> None:
    first, second = store.acquire("a", 10), store.acquire("b", 10)
    assert first and second and first != second


def test_release_with_the_wrong_token_keeps_the_lock(store: Store) -> None:
    token = store.acquire("k", 10)
    assert token
    assert store.release("k", "not-" + token) is False
    assert store.acquire("k", 10) is None


def test_release_with_the_right_token_frees_the_lock(store: Store) -> None:
    token = store.acquire("k", 10)
    assert token
    assert store.release("k", token) is True
    assert store.release("k", token) is False  # already released
    again = store.acquire("k", 10)
    assert again and again != token


def test_extend_keeps_the_lock_past_its_first_ttl(backend: Backend, store: Store) -> None:
    token = store.acquire("k", 0.5)
    assert token
    backend.elapse(0.1)
    assert store.extend("k", "not-" + token, 5) is False
    assert store.extend("k", token, 1.0) is True  # now held until 1.1
    backend.elapse(0.6)  # past the first TTL
    assert store.acquire("k", 10) is None
    backend.elapse(0.6)  # past the extension
    assert store.acquire("k", 10)


def test_lock_expires_after_its_ttl(backend: Backend, store: Store) -> None:
    old = store.acquire("k", 0.2)
    assert old
    backend.elapse(0.3)
    new = store.acquire("k", 10)
    assert new and new != old
    # the holder whose lock ran out can no longer release or extend the new holder's lock
    assert store.release("k", old) is False
    assert store.extend("k", old, 10) is False
    assert store.acquire("k", 10) is None
    assert store.release("k", new) is True


def test_an_expired_lock_cannot_be_extended(backend: Backend, store: Store) -> None:
    token = store.acquire("k", 0.2)
    assert token
    backend.elapse(0.3)
    assert store.extend("k", token, 10) is False
    assert store.acquire("k", 10)


def test_records_without_ttl_survive_pruning_in_order(bounded_backend: Backend) -> None:
    store = bounded_backend.open(max_entries=10)
    for i in range(15):
        store.put(f"page-{i}", ENTRY, ttl=None)
    kept = [i for i in range(15) if store.lookup(f"page-{i}")[0] is not None]
    assert len(kept) >= 9 and 14 in kept  # pruned down to the bound, not all dropped at once


def test_locks_are_shared_between_instances(shared_backend: Backend) -> None:
    one, two = shared_backend.open(), shared_backend.open()
    token = one.acquire("k", 10)
    assert token
    assert two.acquire("k", 10) is None
    assert two.release("k", "not-" + token) is False
    assert two.release("k", token) is True  # the token, not the instance, owns the lock
    assert one.acquire("k", 10)


PROCESSES = 8
LOCK_NAMES = [f"page-{i}" for i in range(40)]


def _race_for_locks(url: str, barrier: Any, results: Any) -> None:
    store = open_store(url)
    try:
        barrier.wait(timeout=60)
        results.put([(name, store.acquire(name, 30)) for name in LOCK_NAMES])
    finally:
        store.close()


def test_acquire_is_atomic_across_processes(shared_backend: Backend) -> None:
    shared_backend.open()  # create the directory before the race
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(PROCESSES), ctx.Queue()
    procs = [
        ctx.Process(target=_race_for_locks, args=(shared_backend.url, barrier, results))
        for _ in range(PROCESSES)
    ]
    for p in procs:
        p.start()
    try:
        outcomes = [results.get(timeout=60) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
    for p in procs:
        assert p.exitcode == 0
    for name in LOCK_NAMES:
        tokens = [token for outcome in outcomes for n, token in outcome if n == name]
        assert len(tokens) == PROCESSES
        assert sum(token is not None for token in tokens) == 1, name


# -- open_store ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "kind", "detail"),
    [
        pytest.param("memory://", MemoryStore, None, id="memory"),
        pytest.param("file://{tmp}/cache", FileStore, "{tmp}/cache", id="file"),
        pytest.param("file://localhost{tmp}/x", FileStore, "{tmp}/x", id="file-localhost"),
        pytest.param("file://{tmp}/with%20space", FileStore, "{tmp}/with space", id="file-quoted"),
        pytest.param("redis://127.0.0.1:1/0", RedisStore, "isr:", id="redis"),
        pytest.param("redis://127.0.0.1:1/2?prefix=app:", RedisStore, "app:", id="redis-prefix"),
        pytest.param("rediss://example.com:1/0?prefix=s:", RedisStore, "s:", id="rediss"),
        pytest.param("unix:///tmp/redis.sock?db=1&prefix=u:", RedisStore, "u:", id="unix-socket"),
    ],
)
def test_open_store_url(tmp_path: Path, url: str, kind: type[Store], detail: str | None) -> None:
    # Redis clients connect lazily: nothing here talks to port 1 (or any server)
    store = open_store(url.format(tmp=tmp_path))
    try:
        assert type(store) is kind
        if isinstance(store, FileStore):
            assert store.path == detail.format(tmp=tmp_path)  # type: ignore[union-attr]
            assert os.path.isdir(store.path)
        if isinstance(store, RedisStore):
            assert store.prefix == detail
    finally:
        store.close()


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("ftp://x", id="ftp"),
        pytest.param("http://example.com/", id="http"),
        pytest.param("file://", id="file-without-path"),
        pytest.param("file:relative/dir", id="file-relative"),
        pytest.param("file:///", id="file-root"),
        pytest.param("file://otherhost/tmp/x", id="file-remote-host"),
        pytest.param("bogus", id="no-scheme"),
        pytest.param("", id="empty"),
        pytest.param("redis://127.0.0.1:notaport/0", id="redis-bad-port"),
    ],
)
def test_open_store_rejects_bad_urls(url: str) -> None:
    with pytest.raises(ValueError):
        open_store(url)


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param(42, id="int"),
        pytest.param(object(), id="object"),
        pytest.param(NullCache(), id="cachelib-cache-without-atomic-locks"),
    ],
)
def test_open_store_rejects_other_values(spec: Any) -> None:
    with pytest.raises(ValueError):
        open_store(spec)


def test_open_store_passes_a_store_through(clock: Any) -> None:
    store = MemoryStore(clock=clock)
    assert open_store(store) is store


def test_open_store_default_is_a_file_store_in_the_cache_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WSGI_ISR_CACHE_DIR", str(tmp_path / "isr"))
    store = open_store(None)
    assert isinstance(store, FileStore)
    assert store.path == str(tmp_path / "isr")


def test_open_store_uses_the_given_clock(tmp_path: Path, clock: Any) -> None:
    for url in ("memory://", f"file://{tmp_path}"):
        store = open_store(url, clock=clock)
        assert store.now() == clock.now
        clock.advance(5)
        assert store.now() == clock.now


def test_open_store_wraps_a_simple_cache() -> None:
    cache = SimpleCache()
    store = open_store(cache)
    assert isinstance(store, MemoryStore)
    store.put("k", ENTRY, ttl=None)
    assert cache.get("k") is not None  # the record lives in the user's cache
    assert store.lookup("k")[0] == ENTRY


def test_open_store_wraps_a_filesystem_cache(tmp_path: Path) -> None:
    cache = FileSystemCache(str(tmp_path / "cache"), threshold=7)
    store = open_store(cache)
    assert isinstance(store, FileStore)
    assert store.path == str(tmp_path / "cache") and store.pages.max_entries == 7
    store.put("k", ENTRY, ttl=None)
    assert cache.get("k") is None  # its directory, not its pickling serializer
    store.invalidate(["posts"], 10.0, hard=False)
    again = open_store(FileSystemCache(str(tmp_path / "cache")))
    assert again.lookup("k") == (ENTRY, {"posts": (10.0, 0.0)})
    assert again.acquire("k", 10) is not None and store.acquire("k", 10) is None


@pytest.mark.redis
def test_open_store_wraps_a_redis_cache(redis_server: Any, redis_url: str) -> None:
    prefix = redis_url.partition("prefix=")[2] + "rc:"
    cache = RedisCache(host="127.0.0.1", port=redis_server.port, key_prefix=prefix)
    store = open_store(cache)
    try:
        assert isinstance(store, RedisStore)
        assert store.prefix == prefix
        store.put("k", ENTRY, ttl=None)
        assert cache._write_client.exists(prefix + "e:k") == 1
        assert store.lookup("k")[0] == ENTRY
    finally:
        store.close()


@pytest.mark.redis
def test_redis_store_url_round_trip_and_prefix_isolation(redis_url: str) -> None:
    store = open_store(redis_url)
    other = open_store(redis_url + "other:")
    try:
        assert isinstance(store, RedisStore)
        store.put("k", ENTRY, ttl=None)
        store.invalidate(["posts"], 10.0, hard=False)
        assert store.lookup("k") == (ENTRY, {"posts": (10.0, 0.0)})
        assert other.lookup("k") == (None, {})
        assert other.acquire("lock", 10) and store.acquire("lock", 10)
    finally:
        store.close()
        other.close()


def test_redis_description_hides_the_password() -> None:
    store = RedisStore("redis://user:s3cret@127.0.0.1:1/0")
    try:
        assert "s3cret" not in store.description
        assert "127.0.0.1" in store.description
    finally:
        store.close()


# -- file store -----------------------------------------------------------------------------


def test_file_tag_log_compaction_keeps_every_tags_latest_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(file_module, "COMPACT_BYTES", 512)
    store = FileStore(str(tmp_path))
    expected: dict[str, TagState] = {}
    written = 0
    at = 1_000.0
    for rnd in range(40):
        for i in range(8):
            tag, hard = f"tag-{i}", (rnd + i) % 3 == 0
            at += 1.5
            # every fifth one comes late: it must not move the state back
            when = at - 500 if (rnd + i) % 5 == 0 else at
            store.invalidate([tag], when, hard=hard)
            expected[tag] = _merge(expected.get(tag), when, hard)
            written += 30
    log = tmp_path / "tags.log"
    assert log.stat().st_size < written / 3, "the log was never compacted"
    assert store.tag_states(expected) == expected
    fresh = FileStore(str(tmp_path))
    assert fresh.tag_states(expected) == expected
    assert dict(fresh.lookup("k")[1]) == expected


def test_file_tag_log_compaction_is_seen_by_a_worker_that_read_it_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A worker keeps its position in the log between requests; other workers may
    # compact (replace) the log several times in between.
    monkeypatch.setattr(file_module, "COMPACT_BYTES", 512)
    writer, worker = FileStore(str(tmp_path)), FileStore(str(tmp_path))
    log = tmp_path / "tags.log"
    expected: dict[str, TagState] = {}
    at = 1_000.0
    for rnd in range(6):
        worker.lookup("k")
        compactions, size, i = 0, log.stat().st_size if log.exists() else 0, 0
        while compactions < 2 or i % 3:
            tag, hard = f"tag-{i % 8}", i % 4 == 0
            at += 1
            writer.invalidate([tag], at, hard=hard)
            expected[tag] = _merge(expected.get(tag), at, hard)
            compactions += log.stat().st_size < size
            size = log.stat().st_size
            i += 1
        assert dict(worker.lookup("k")[1]) == expected, f"round {rnd}"
        assert worker.tag_states(expected) == expected


def test_file_tag_log_malformed_lines_are_skipped(tmp_path: Path) -> None:
    store = FileStore(str(tmp_path))
    store.invalidate(["before"], 10.0, hard=False)
    with open(tmp_path / "tags.log", "ab") as f:
        f.write(b"garbage\n")
        f.write(b'["half", "not-a-number", 0]\n')
        f.write(b"\xff\xfe\n")
    store.invalidate(["after"], 20.0, hard=True)
    for reader in (store, FileStore(str(tmp_path))):
        assert reader.tag_states(["before", "after", "half"]) == {
            "before": (10.0, 0.0),
            "after": (20.0, 20.0),
        }


# -- redis store ----------------------------------------------------------------------------


@pytest.mark.redis
def test_redis_records_always_expire_and_tag_state_never(redis_url: str) -> None:
    store = RedisStore(redis_url)
    try:
        store.put("k", ENTRY, ttl=None)
        store.invalidate(["posts"], 10.0, hard=False)
        # so a volatile-* eviction policy can reclaim records and never tag state
        assert 3600_000 < store.client.pttl(store.prefix + "e:k") < 10**12
        assert store.client.pttl(store.prefix + "tagstate") == -1
    finally:
        store.close()


@pytest.mark.redis
@pytest.mark.parametrize(
    "reader_looks_after_restart",
    [
        pytest.param(False, id="reader-idle-through-restart"),
        pytest.param(True, id="reader-reads-after-restart"),
    ],
)
def test_redis_store_sees_invalidations_after_a_restart_that_lost_data(
    redis_server: Any, redis_url: str, reader_looks_after_restart: bool
) -> None:
    reader, writer = RedisStore(redis_url), RedisStore(redis_url)
    try:
        writer.invalidate(["before"], 100.0, hard=False)
        assert reader.lookup("k")[1].get("before") == (100.0, 0.0)  # reader holds a sequence
        redis_server.stop()
        redis_server.start()
        assert writer.tag_states(["before"]) == {}, "the restart did not lose the data"
        if reader_looks_after_restart:
            assert reader.lookup("k")[1].get("before") is None
        # more invalidations than before the restart: a sequence that restarted from
        # zero would overtake the reader's and hide the first ones
        for n in range(3):
            writer.invalidate([f"after-{n}"], 200.0 + n, hard=True)
        expected = {f"after-{n}": (200.0 + n, 200.0 + n) for n in range(3)}
        mapping = reader.lookup("k")[1]
        assert {t: mapping.get(t) for t in expected} == expected
        assert reader.tag_states(expected) == expected
    finally:
        reader.close()
        writer.close()
