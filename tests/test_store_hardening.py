"""Issue 10 beyond the contract suite: who may own the cache directory, what the Redis
store says about the server's eviction settings, and the in-process bounds in bytes
(local layer, per-key memos)."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import shutil
import stat
import subprocess
import tempfile
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from helpers import CountingApp, make
from werkzeug.test import EnvironBuilder

from wsgi_isr import ISRMiddleware, keys, responses
from wsgi_isr.bounded import ByteLRU, Memo, parse_size
from wsgi_isr.entry import Entry, PassMarker
from wsgi_isr.stores import FileStore, LocalLayer, MemoryStore, RedisStore, open_store, shelf
from wsgi_isr.stores.redis import config_warnings

NOBODY = 65534
ENTRY = Entry("200 OK", (("Content-Type", "text/html"),), b"x" * 2048, 1e6, 60.0, None, (), "", "")


# -- the cache directory ---------------------------------------------------------------------


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("mask", [0o000, 0o002, 0o022], ids=["umask-000", "umask-002", "022"])
def test_file_store_creates_its_directories_0700_whatever_the_umask(
    tmp_path: Path, mask: int
) -> None:
    with umask(mask):
        store = FileStore(str(tmp_path / "new" / "cache"))
        store.put("k", ENTRY, None)
        store.put("m", PassMarker("x"), None)
        store.invalidate(["t"], 1.0, hard=False)
        assert store.acquire("lock", 10)
    for path in [Path(store.path), *Path(store.path).rglob("*")]:
        if path.is_dir():
            assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
        else:
            assert not path.stat().st_mode & 0o002, path  # no file is world-writable


@pytest.mark.parametrize("mode", [0o770, 0o777, 0o702, 0o1777])
def test_file_store_refuses_a_directory_writable_by_others(tmp_path: Path, mode: int) -> None:
    root = tmp_path / "shared"
    root.mkdir()
    root.chmod(mode)
    with pytest.raises(ValueError, match="writable by group or others.*allow_shared_dir"):
        FileStore(str(root))
    with pytest.raises(ValueError, match="writable by group or others"):
        open_store(f"file://{root}")
    assert FileStore(str(root), allow_shared_dir=True).lookup("k")[0] is None  # opted out
    assert open_store(f"file://{root}?allow_shared_dir=true").lookup("k")[0] is None


def test_file_store_refuses_a_subdirectory_writable_by_others(tmp_path: Path) -> None:
    FileStore(str(tmp_path / "s"))
    (tmp_path / "s" / "pages").chmod(0o777)
    with pytest.raises(ValueError, match="pages.*writable by group or others"):
        FileStore(str(tmp_path / "s"))


def _as_nobody(*cmd: str) -> None:
    subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *cmd],
        check=True,
        capture_output=True,
    )


@pytest.fixture
def world(tmp_path: Path) -> Iterator[Path]:
    """A directory anyone may create directories in, like /tmp (the test's own tmp_path
    is not reachable by other users)."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to create a directory as another uid")
    base = Path(tempfile.mkdtemp(prefix="isr-world-", dir="/tmp"))
    base.chmod(0o1777)
    try:
        yield base
    finally:
        shutil.rmtree(base)


def test_file_store_refuses_a_directory_another_user_created(world: Path) -> None:
    target = world / "isr-cache"  # created first by another local user
    _as_nobody("mkdir", "-m", "700", str(target))
    assert target.stat().st_uid == NOBODY
    with pytest.raises(ValueError, match=f"owned by uid {NOBODY}.*allow_shared_dir"):
        FileStore(str(target))
    assert not (target / "pages").exists()  # refused before writing anything


def test_file_store_refuses_a_subdirectory_another_user_created(world: Path) -> None:
    root = world / "mine"
    root.mkdir()
    root.chmod(0o777)  # open for a moment, as a careless deployment step leaves it
    _as_nobody("mkdir", "-m", "700", str(root / "pages"))
    root.chmod(0o700)
    with pytest.raises(ValueError, match=f"pages.*owned by uid {NOBODY}"):
        FileStore(str(root))


# -- Redis eviction settings -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("maxmemory", "policy", "expected"),
    [
        pytest.param("0", "noeviction", ["maxmemory is 0"], id="unbounded"),
        pytest.param("0", "allkeys-lru", ["maxmemory is 0", "allkeys-lru"], id="both"),
        pytest.param("104857600", "allkeys-lfu", ["allkeys-lfu"], id="evicts-tag-state"),
        pytest.param("104857600", "volatile-lru", [], id="right"),
        pytest.param("104857600", "volatile-lfu", [], id="right-lfu"),
        pytest.param("104857600", "volatile-ttl", ["volatile-ttl"], id="evicts-locks-first"),
    ],
)
def test_config_warnings_say_what_to_set(maxmemory: str, policy: str, expected: list[str]) -> None:
    warnings = config_warnings(maxmemory, policy)
    assert len(warnings) == len(expected)
    for warning, words in zip(warnings, expected, strict=True):
        assert words in warning and "volatile-lru" in warning


@pytest.fixture
def server_config(redis_server: Any) -> Iterator[redis.Redis]:
    client = redis.Redis(port=redis_server.port)
    saved = client.config_get("maxmemory*")
    try:
        yield client
    finally:
        client.config_set("maxmemory", saved["maxmemory"])
        client.config_set("maxmemory-policy", saved["maxmemory-policy"])
        client.close()


@pytest.mark.parametrize(
    ("maxmemory", "policy", "warned"),
    [
        pytest.param("0", "noeviction", "maxmemory is 0", id="unbounded"),
        pytest.param("100mb", "allkeys-lru", "maxmemory-policy is allkeys-lru", id="allkeys"),
        pytest.param("100mb", "volatile-lru", None, id="right"),
    ],
)
def test_redis_store_warns_at_start_up_about_eviction_settings(
    server_config: redis.Redis,
    redis_url: str,
    caplog: pytest.LogCaptureFixture,
    maxmemory: str,
    policy: str,
    warned: str | None,
) -> None:
    server_config.config_set("maxmemory", maxmemory)
    server_config.config_set("maxmemory-policy", policy)
    store = RedisStore(redis_url)
    try:
        with caplog.at_level(logging.WARNING, logger="wsgi_isr"):
            store.lookup("k")
            store.lookup("k")
        found = [r.getMessage() for r in caplog.records if "maxmemory" in r.getMessage()]
        assert found == ([] if warned is None else [found[0]])  # once, not per lookup
        if warned is not None:
            assert warned in found[0] and "volatile-lru" in found[0]
    finally:
        store.close()


def test_redis_store_tolerates_config_being_denied(
    redis_server: Any, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    admin = redis.Redis(port=redis_server.port)
    admin.acl_setuser(
        "app", enabled=True, passwords=["+app-pw"], keys=["*"], channels=["*"],
        commands=["+@all", "-config"],
    )  # fmt: skip
    url = redis_url.replace("redis://", "redis://app:app-pw@")
    store = RedisStore(url)
    try:
        with caplog.at_level(logging.INFO, logger="wsgi_isr"):
            assert store.check_config() == []
        assert "could not read redis maxmemory settings" in caplog.text
        store.put("k", ENTRY, None)  # everything else still works
        assert store.lookup("k")[0] == ENTRY
    finally:
        store.close()
        admin.acl_deluser("app")
        admin.close()


# -- in-process bounds in bytes --------------------------------------------------------------


def test_local_layer_is_bounded_in_bytes_and_markers_never_evict_pages() -> None:
    layer = LocalLayer(MemoryStore(), ttl=60, max_entries=1000, max_bytes=50_000, max_markers=5)
    for i in range(100):
        layer.put(f"page-{i}", ENTRY, None)
        assert layer._pages.bytes <= 50_000
    held = [i for i in range(100) if f"page-{i}" in layer._pages]
    assert 10 <= len(held) < 25 and held[-1] == 99
    for i in range(100):
        layer.lookup(f"missing-{i}")  # misses are remembered too, on their own budget
        layer.put(f"junk-{i}", PassMarker("no"), None)
    assert [i for i in range(100) if f"page-{i}" in layer._pages] == held
    assert len(layer._others) == 5


def test_request_key_memo_is_bounded_in_bytes() -> None:
    keys._memo.clear()
    keys._memo.bytes = 0
    host = "h" * 200 + ".example.com"
    for i in range(3000):
        # names out of order: off the fast path, through the memo
        env = EnvironBuilder(path=f"/p/{i}", query_string="q=" + "x" * 8000 + "&a=1").get_environ()
        env["HTTP_HOST"] = host
        assert keys.request_key(env) is not None
        assert keys._memo.bytes <= keys._MEMO_BYTES
    assert len(keys._memo) < 3000  # emptied on the byte bound, long before 4096 entries


def test_hit_headers_live_and_die_with_their_entry() -> None:
    big = ("X-Long", "v" * 20_000)
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        entries = [Entry("200 OK", (big,), b"", 1e6, 60.0, None, (), "", "") for _ in range(300)]
        for e in entries:
            assert ("X-Long", big[1]) in responses.entry_headers(e, 1e6 + 1, "HIT")
            assert ("X-Long", big[1]) in responses.entry_headers(e, 1e6 + 1, "HIT")
        del entries, e
        gc.collect()
        # nothing built for serving them is kept anywhere else (no memo of the process)
        assert tracemalloc.get_traced_memory()[0] - baseline < 200_000
    finally:
        tracemalloc.stop()


def test_failure_counts_are_bounded_in_bytes() -> None:
    mw, _, _, _ = make()
    failures = mw.regen._failures
    for i in range(2000):  # failed regenerations of 2,000 long URLs
        mw.regen.back_off("https://example.com/" + "k" * 10_000 + str(i))
        assert failures.bytes <= failures.max_bytes
    assert len(failures) < 2000
    assert mw.regen.back_off("https://example.com/again") == mw.regen.backoff  # counts restart


@pytest.mark.parametrize(
    ("text", "expected"),
    [("2GB", 2 * 10**9), ("1GiB", 1 << 30), ("100k", 100_000), ("512 MiB", 512 << 20), ("7", 7)],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


def test_byte_lru_evicts_least_recently_used_first() -> None:
    lru: ByteLRU[str] = ByteLRU(max_entries=0, max_bytes=30)
    for k in "abc":
        lru.set(k, k, 10)
    assert lru.get("a") == "a"  # used: b is now the oldest
    lru.set("d", "d", 10)
    assert list(lru) == ["c", "a", "d"] and lru.bytes == 30
    assert lru.set("huge", "x", 31) is False and "huge" not in lru
    memo: Memo[str, int] = Memo(max_entries=100, max_bytes=100)
    for i in range(20):
        memo.remember(str(i), i, 30)
        assert memo.bytes <= 100


# -- the file store's eviction journal -------------------------------------------------------


def _files(store: FileStore) -> list[Path]:
    return list(Path(store.pages.path).glob("?" * 64))


def test_journal_compaction_keeps_the_newest_pages_and_the_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shelf, "COMPACT_PAIRS", 16)
    store = FileStore(str(tmp_path / "s"), max_entries=10)
    for i in range(200):  # rewrites, deletes and evictions: many dead pairs
        store.put(f"p{i}", ENTRY, None)
        store.put(f"p{i // 2}", ENTRY, None)
        if i % 7 == 0:
            store.delete(f"p{i}")
    journal = Path(store.pages.path) / "journal"
    assert journal.stat().st_size <= (2 * 10 + 16 + 1) * 40  # compacted along the way
    assert store.pages.count() == len(_files(store)) == 10
    assert store.lookup("p199")[0] == ENTRY


def test_pages_removed_by_hand_are_noticed_and_the_bound_still_holds(tmp_path: Path) -> None:
    store = FileStore(str(tmp_path / "s"), max_entries=5)
    for i in range(5):
        store.put(f"p{i}", ENTRY, None)
    for path in _files(store):  # "rm cache/pages/*" behind the store's back
        path.unlink()
    assert store.pages.count() == 5  # the index does not know yet
    for i in range(5, 20):
        store.put(f"p{i}", ENTRY, None)
        assert len(_files(store)) <= 5
    assert store.pages.count() == len(_files(store)) == 5
    assert store.lookup("p19")[0] == ENTRY


def test_local_layer_bounds_from_the_url_and_the_options(redis_url: str) -> None:
    store = open_store(f"{redis_url}&local_ttl=1&local_max_entries=7&local_max_bytes=1MB")
    assert isinstance(store, LocalLayer) and store.ttl == 1.0
    assert (store._pages.max_entries, store._pages.max_bytes) == (7, 10**6)
    store.close()
    mw = ISRMiddleware(
        CountingApp(), store="memory://", local_ttl=1, local_max_entries=3, local_max_bytes="2KB"
    )
    assert isinstance(mw.store, LocalLayer)
    assert (mw.store._pages.max_entries, mw.store._pages.max_bytes) == (3, 2000)
    with pytest.raises(ValueError, match="local_ttl"):
        open_store("memory://?local_max_bytes=1MB")
    with pytest.raises(ValueError, match="local layer"):
        open_store("memory://?local_ttl=soon")
