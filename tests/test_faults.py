"""Faults under the cache layer: damaged entry files, a vanished or unwritable cache
directory, a full disk, an application that raises, fails or hangs while a page
regenerates, a Redis that never answers, and a worker killed in the middle of a write.

Through all of them a visitor gets the application's answer (or the last good page),
never a 500 from the cache, and no half-written entry is ever served.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import multiprocessing
import os
import pickle
import shutil
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import CountingApp, FakeClock
from werkzeug.test import Client

import wsgi_isr.stores.file as file_module
from wsgi_isr import FileStore, ISRMiddleware, MemoryStore, RedisStore, StoreError, codec
from wsgi_isr.entry import Entry
from wsgi_isr.regeneration import lock_name
from wsgi_isr.stores.shelf import FILE_HEAD

KEY = "http://localhost/p?"
SECRET = "fault-tests-secret-0123456789abcdef"


def file_setup(
    tmp_path: Path, app: Any = None, **options: Any
) -> tuple[ISRMiddleware, Client, FakeClock, Any, FileStore]:
    clock = FakeClock()
    store = FileStore(str(tmp_path / "store"), clock=clock)
    app = app if app is not None else CountingApp()
    mw = ISRMiddleware(app, store=store, clock=clock, **options)
    return mw, Client(mw, use_cookies=False), clock, app, store


def entry_file(store: FileStore, key: str = KEY) -> Path:
    return Path(store.pages.filename(key))


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


# -- damaged entry files ---------------------------------------------------------------------

NEVER = FILE_HEAD.pack(0.0, 1)


def _garbage(kind: str, good: bytes) -> bytes:
    payload = good[FILE_HEAD.size :]
    head = list(struct.unpack_from(">4sBBHHdddII", payload))

    def encoded(**changes: Any) -> bytes:
        fields = dict(zip(["magic", "version", "kind", "nh", "nt"], head, strict=False))
        fields.update(changes)
        h = struct.pack(">4sBBHHdddII", *fields.values(), *head[5:])
        return NEVER + h + payload[codec.HEAD_SIZE :]

    return {
        "empty": b"",
        "short-header": b"\x01\x02",
        "header-only": NEVER,
        "not-a-record": NEVER + b"this is not a record",
        "truncated-record": good[: len(good) // 2],
        "truncated-header": good[: FILE_HEAD.size + codec.HEAD_SIZE - 3],
        "zero-filled": b"\x00" * len(good),
        "bit-flipped": good[:60] + bytes([good[60] ^ 0xFF]) + good[61:],
        "a-pickle": NEVER + pickle.dumps(("E", "200 OK")),
        "other-format-version": encoded(version=codec.VERSION + 1),
        "wrong-counts": encoded(nh=head[3] + 1),
        "unknown-kind": encoded(kind=9),
        "binary": bytes(range(256)) * 4,
    }[kind]


@pytest.mark.parametrize(
    "kind",
    [
        "empty",
        "short-header",
        "header-only",
        "not-a-record",
        "truncated-record",
        "truncated-header",
        "zero-filled",
        "bit-flipped",
        "a-pickle",
        "other-format-version",
        "wrong-counts",
        "unknown-kind",
        "binary",
    ],
)
def test_damaged_entry_file_is_a_miss_and_the_page_is_cached_again(
    tmp_path: Path, kind: str
) -> None:
    mw, client, clock, app, store = file_setup(tmp_path)
    assert client.get("/p").headers["X-ISR-Cache"] == "MISS"
    path = entry_file(store)
    path.write_bytes(_garbage(kind, path.read_bytes()))
    r = client.get("/p")
    assert r.status_code == 200
    if kind != "bit-flipped":  # a flipped byte of the body still decodes (another body)
        assert r.headers["X-ISR-Cache"] == "MISS" and b"render 2" in r.data
    again = client.get("/p")
    assert again.headers["X-ISR-Cache"] == "HIT" and again.data == r.data
    assert isinstance(store.lookup(KEY)[0], Entry)


@pytest.mark.parametrize("content", [b"garbage", b"\x00" * 64, b"tok not-a-number", b"tok nan"])
def test_damaged_lock_file_does_not_block_the_key(tmp_path: Path, content: bytes) -> None:
    mw, client, clock, app, store = file_setup(tmp_path, coalesce_timeout=0.5)
    Path(store._lock_path(lock_name(KEY))).write_bytes(content)
    assert client.get("/p").headers["X-ISR-Cache"] == "MISS"
    assert client.get("/p").headers["X-ISR-Cache"] == "HIT"
    assert app.count("/p") == 1


@pytest.mark.parametrize("content", [b"tok inf", b"tok 1e300"])
def test_lock_file_with_an_absurd_expiry_does_not_block_the_key(
    tmp_path: Path, content: bytes
) -> None:
    mw, client, clock, app, store = file_setup(tmp_path, coalesce_timeout=0.2)
    Path(store._lock_path(lock_name(KEY))).write_bytes(content)
    clock.advance(3600)  # far beyond any lock_timeout a live holder could have asked for
    client.get("/p")
    assert client.get("/p").headers["X-ISR-Cache"] == "HIT"


# -- a vanished or unwritable cache directory ------------------------------------------------


def _vanish(store: FileStore, how: str) -> None:
    if how == "deleted":
        shutil.rmtree(store.path)
    elif how == "replaced-by-a-file":
        shutil.rmtree(store.path)
        Path(store.path).write_text("not a directory")
    elif how == "entries-deleted":
        shutil.rmtree(os.path.join(store.path, "pages"))
    else:  # the contents wiped, as "rm -rf cache/*" does
        for name in os.listdir(store.path):
            p = os.path.join(store.path, name)
            shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)


VANISH = ["deleted", "replaced-by-a-file", "entries-deleted", "contents-wiped"]


@pytest.mark.parametrize("how", VANISH)
def test_vanished_cache_directory_fails_open(
    tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    mw, client, clock, app, store = file_setup(tmp_path, secret=SECRET)
    client.get("/p")
    _vanish(store, how)
    with caplog.at_level(logging.ERROR, logger="wsgi_isr"):
        for path in ("/p", "/q", "/p", "/q"):
            r = client.get(path)
            assert r.status_code == 200 and b" render " in r.data  # the app's answer
        r = client.post("/_isr/revalidate", json={"tag": "t", "secret": SECRET})
    assert app.count("/q") >= 1
    if how == "replaced-by-a-file":  # nothing can be written: every write is an error
        assert mw.stats["store_errors"] > 0
    if mw.stats["store_errors"]:
        assert caplog.text.count("store error") == 1  # logged, once per interval
    # the invalidation was recorded, or the endpoint says it could not be
    assert r.status_code in (200, 503) and r.json
    if how == "replaced-by-a-file":
        assert r.status_code == 503


@pytest.mark.parametrize("how", ["contents-wiped", "entries-deleted"])
def test_cache_recovers_after_the_directory_is_cleared(tmp_path: Path, how: str) -> None:
    mw, client, clock, app, store = file_setup(tmp_path)
    client.get("/p")
    _vanish(store, how)
    client.get("/p")
    assert client.get("/p").headers["X-ISR-Cache"] == "HIT"


def _fail(code: int) -> Callable[..., Any]:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise OSError(code, os.strerror(code))

    return fail


WRITE_PATHS = [
    pytest.param("mkstemp", errno.EACCES, id="unwritable-mkstemp"),
    pytest.param("serializer", errno.ENOSPC, id="disk-full-while-writing"),
    pytest.param("replace", errno.ENOSPC, id="disk-full-on-rename"),
    pytest.param("lock", errno.ENOSPC, id="disk-full-on-lock"),
]


def _break_writes(monkeypatch: pytest.MonkeyPatch, store: FileStore, where: str, code: int) -> None:
    if where == "mkstemp":
        monkeypatch.setattr(tempfile, "mkstemp", _fail(code))
    elif where == "replace":
        monkeypatch.setattr(os, "replace", _fail(code))
    elif where == "lock":
        monkeypatch.setattr(os, "pwrite", _fail(code))
    else:

        def full(f: Any, data: bytes) -> None:
            f.write(data[:100])
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr(store.pages, "_fill", full)


@pytest.mark.parametrize(("where", "code"), WRITE_PATHS)
def test_failing_writes_keep_serving_the_last_good_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, code: int
) -> None:
    mw, client, clock, app, store = file_setup(tmp_path)
    client.get("/p")
    good = entry_file(store).read_bytes()
    clock.advance(61)
    _break_writes(monkeypatch, store, where, code)
    for _ in range(3):
        r = client.get("/p")
        assert r.status_code == 200 and r.headers["X-ISR-Cache"] == "STALE"
        assert b"/p? render 1" in r.data  # the last good page
        assert mw.join(5)
    assert entry_file(store).read_bytes() == good  # never replaced by a broken write
    miss = client.get("/new")
    assert miss.status_code == 200 and b"/new? render 1" in miss.data
    assert mw.stats["store_errors"] >= 1
    monkeypatch.undo()  # space again: the next regeneration lands
    clock.advance(400)  # past any backoff
    client.get("/p")
    assert mw.join(5)
    assert b"render" in client.get("/p").data and entry_file(store).read_bytes() != good


def test_failed_writes_do_not_pile_up_temporary_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mw, client, clock, app, store = file_setup(tmp_path)
    _break_writes(monkeypatch, store, "serializer", errno.ENOSPC)
    entries = Path(store.pages.path)

    def leftovers() -> list[Path]:
        return [p for p in entries.iterdir() if p.name.startswith(".tmp-")]

    for i in range(5):
        assert client.get(f"/p{i}").status_code == 200
    hour_ago = time.time() - 3600
    for p in leftovers():  # an hour of failed writes later (a full disk stays full)
        os.utime(p, (hour_ago, hour_ago))
    assert client.get("/one-more").status_code == 200
    # what failed writes left behind is cleaned up; at most the latest attempt's remain
    assert all(p.stat().st_mtime > hour_ago + 60 for p in leftovers())
    assert len(leftovers()) <= 2


def test_regeneration_whose_write_fails_is_backed_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mw, client, clock, app, store = file_setup(tmp_path)
    client.get("/p")
    clock.advance(61)
    _break_writes(monkeypatch, store, "serializer", errno.ENOSPC)
    for _ in range(5):
        assert client.get("/p").headers["X-ISR-Cache"] == "STALE"
        assert mw.join(5)
    assert mw.stats["regenerations_ok"] == 0
    assert app.count("/p") == 2  # one attempt, then backed off like any failure


def test_full_disk_on_the_tag_log_is_a_503_and_pages_keep_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = CountingApp(default=[("X-ISR-Revalidate", "false"), ("X-ISR-Tags", "t")])
    mw, client, clock, _, store = file_setup(tmp_path, app, secret=SECRET)
    client.get("/p")
    real_open = open

    def full_open(path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if str(path).endswith("tags.log") and "a" in mode:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(file_module, "open", full_open, raising=False)
    r = client.post("/_isr/revalidate", json={"tag": "t", "secret": SECRET})
    assert r.status_code == 503 and r.json["error"]
    with pytest.raises(StoreError):
        mw.revalidate_tag("t")
    assert client.get("/p").headers["X-ISR-Cache"] == "HIT"
    monkeypatch.undo()
    clock.advance(1)
    assert client.post("/_isr/revalidate", json={"tag": "t", "secret": SECRET}).status_code == 200
    clock.advance(1)
    assert client.get("/p").headers["X-ISR-Cache"] == "STALE"
    assert mw.join(5)


def test_invalidation_after_a_torn_tag_log_line_is_not_lost(tmp_path: Path) -> None:
    app = CountingApp(default=[("X-ISR-Revalidate", "false"), ("X-ISR-Tags", "b")])
    mw, client, clock, _, store = file_setup(tmp_path, app)
    client.get("/p")
    clock.advance(1)
    mw.revalidate_tag("a")
    with open(os.path.join(store.path, "tags.log"), "ab") as f:
        f.write(b'["a", 1000002.0, 0')  # the writer ran out of space mid-line
    clock.advance(1)
    mw.revalidate_tag("b")  # reported as done...
    clock.advance(1)
    assert client.get("/p").headers["X-ISR-Cache"] == "STALE"  # ...so /p must be stale


# -- the application fails while a page regenerates ------------------------------------------


def _refusing(kind: str) -> Callable[..., Any]:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        if kind == "raises-mid-body":
            start_response("200 OK", [("X-ISR-Revalidate", "60")])

            def body() -> Iterator[bytes]:
                yield b"half a page"
                raise RuntimeError("database went away mid-render")

            return body()
        if kind == "no-start-response":
            return [b"forgot start_response"]
        if kind == "oversized":
            start_response("200 OK", [("X-ISR-Revalidate", "60")])
            return [b"x" * 600, b"y" * 600]
        start_response("502 Bad Gateway", [("X-ISR-Revalidate", "60"), ("Retry-After", "5")])
        return [b"upstream down"]

    return app


# (an answer that outgrew max_entry_bytes is healthy, not a failure: test_failures.py)
@pytest.mark.parametrize("kind", ["raises-mid-body", "no-start-response", "502"])
def test_failed_regeneration_keeps_the_stale_page(tmp_path: Path, kind: str) -> None:
    failing = _refusing(kind)
    state = {"broken": False}

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        if state["broken"]:
            return failing(environ, start_response)
        start_response("200 OK", [("X-ISR-Revalidate", "60")])
        return [b"good page"]

    mw, client, clock, _, store = file_setup(tmp_path, app, max_entry_bytes=1000)
    client.get("/p")
    clock.advance(61)
    state["broken"] = True
    for _ in range(3):
        r = client.get("/p")
        assert r.status_code == 200 and r.data == b"good page"
        assert r.headers["X-ISR-Cache"] == "STALE"
        assert mw.join(5)
    assert mw.stats["regenerations_failed"] == 1  # backed off, not retried per request
    entry = store.lookup(KEY)[0]
    assert isinstance(entry, Entry) and entry.body == b"good page"


def test_foreground_render_that_raises_does_not_leave_the_key_locked(tmp_path: Path) -> None:
    app = CountingApp()

    def boom(environ: Any) -> None:
        if app.count("/p") == 1:
            raise RuntimeError("first render fails")

    app.before = boom
    mw, client, clock, _, store = file_setup(tmp_path, app, coalesce_timeout=3.0)
    with pytest.raises(RuntimeError):
        client.get("/p")  # the app's own error reaches the server, as without the cache
    # a short marker (not pass_ttl) lets the next visitors straight through for a second
    r = client.get("/p")
    assert r.headers["X-ISR-Cache"] == "BYPASS" and b"render 2" in r.data
    clock.advance(1.5)
    time.sleep(1.1)  # the file store expires records by the wall clock
    started = time.monotonic()
    r = client.get("/p")
    assert r.headers["X-ISR-Cache"] == "MISS" and b"render 3" in r.data
    assert r.headers["Cache-Status"] == "wsgi-isr; fwd=uri-miss; stored"
    assert time.monotonic() - started < 1.5  # did not wait for a leftover lock
    assert client.get("/p").headers["X-ISR-Cache"] == "HIT"


@pytest.fixture(params=["memory", "file"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[FakeClock], Any]:
    if request.param == "memory":
        return lambda clock: MemoryStore(clock=clock)
    return lambda clock: FileStore(str(tmp_path / "store"), clock=clock)


def test_hanging_regeneration_blocks_no_visitor_and_the_lock_ttl_frees_the_key(
    store_factory: Callable[[FakeClock], Any],
) -> None:
    gate = threading.Event()
    app = CountingApp()
    app.before = lambda env: gate.wait(10) if app.count("/p") == 2 else None
    clock = FakeClock()
    mw = ISRMiddleware(app, store=store_factory(clock), clock=clock, lock_timeout=30)
    client = Client(mw, use_cookies=False)
    try:
        client.get("/p")
        clock.advance(61)
        for _ in range(5):
            started = time.monotonic()
            r = client.get("/p")
            assert time.monotonic() - started < 1.0  # the hung render is not waited for
            assert r.headers["X-ISR-Cache"] == "STALE" and b"render 1" in r.data
        assert wait_for(lambda: app.count("/p") == 2)
        time.sleep(0.05)
        assert app.count("/p") == 2  # one regeneration, hung, holding the lock
        clock.advance(31)  # past lock_timeout: the key is free again
        client.get("/p")
        assert wait_for(lambda: b"render 3" in client.get("/p").data)
        assert client.get("/p").headers["X-ISR-Cache"] == "HIT"
    finally:
        gate.set()
        assert mw.join(5)


def test_hung_regenerations_do_not_stop_other_pages_from_regenerating() -> None:
    gate = threading.Event()
    app = CountingApp()
    clock = FakeClock()
    mw = ISRMiddleware(app, store=MemoryStore(clock=clock), clock=clock, lock_timeout=30)
    client = Client(mw, use_cookies=False)
    paths = [f"/hung{i}" for i in range(8)]
    try:
        for path in [*paths, "/ok"]:
            client.get(path)
        app.before = lambda env: gate.wait(10) if env["PATH_INFO"].startswith("/hung") else None
        clock.advance(61)
        for path in paths:  # their data source hangs (a call without a timeout)
            assert client.get(path).headers["X-ISR-Cache"] == "STALE"
        clock.advance(31)  # even once their locks expired
        client.get("/ok")
        assert wait_for(lambda: app.count("/ok") == 2, timeout=1.0)
    finally:
        gate.set()
        mw.join(15)


def test_regeneration_that_outlived_its_lock_does_not_overwrite_a_newer_page() -> None:
    gate = threading.Event()
    renders = iter(range(1, 100))

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        n = next(renders)
        if n == 2:
            gate.wait(10)
        start_response("200 OK", [("X-ISR-Revalidate", "60")])
        return [f"v{n}".encode()]

    clock = FakeClock()
    mw = ISRMiddleware(app, store=MemoryStore(clock=clock), clock=clock, lock_timeout=30)
    client = Client(mw, use_cookies=False)
    try:
        client.get("/p")
        clock.advance(61)
        client.get("/p")  # regeneration v2 starts and hangs
        clock.advance(31)
        client.get("/p")  # its lock expired: regeneration v3 starts and lands
        assert wait_for(lambda: client.get("/p").data == b"v3")
    finally:
        gate.set()
        mw.join(5)
    assert client.get("/p").data == b"v3"  # v2 finished late; it must not win


# -- a Redis that accepts connections and never answers --------------------------------------


class BadRedis:
    """A TCP server on a free loopback port that speaks no Redis."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            if self.mode == "reset":
                conn.close()
                continue
            self.conns.append(conn)
            if self.mode == "garbage":
                try:
                    conn.settimeout(1.0)
                    conn.recv(4096)
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                except OSError:
                    pass

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()
        for conn in self.conns:
            conn.close()


@pytest.mark.parametrize("local_ttl", [None, 1.0], ids=["redis", "redis+local-layer"])
@pytest.mark.parametrize("mode", ["silent", "garbage", "reset"])
def test_redis_that_never_answers_fails_open_within_the_socket_timeout(
    mode: str, local_ttl: float | None, caplog: pytest.LogCaptureFixture
) -> None:
    server = BadRedis(mode)
    store = RedisStore(
        f"redis://127.0.0.1:{server.port}/0", socket_timeout=0.2, socket_connect_timeout=0.2
    )
    app = CountingApp()
    mw = ISRMiddleware(app, store=store, secret=SECRET, clock=FakeClock(), local_ttl=local_ttl)
    client = Client(mw, use_cookies=False)
    try:
        with caplog.at_level(logging.ERROR, logger="wsgi_isr"):
            for i in range(3):
                started = time.monotonic()
                r = client.get("/p")
                assert time.monotonic() - started < 2.0
                assert r.status_code == 200 and f"/p? render {i + 1}".encode() in r.data
                assert "store-error" in r.headers["Cache-Status"]
            started = time.monotonic()
            r = client.post("/_isr/revalidate", json={"tag": "t", "secret": SECRET})
            assert time.monotonic() - started < 2.0
            assert r.status_code == 503 and r.json["error"]
        assert "store error" in caplog.text
    finally:
        mw.store.close()
        server.close()


# -- a worker killed in the middle of a write ------------------------------------------------


def test_partial_temp_file_from_a_killed_worker_is_never_served(tmp_path: Path) -> None:
    mw, client, clock, app, store = file_setup(tmp_path)
    client.get("/p")
    good = entry_file(store).read_bytes()
    # a worker died after mkstemp and half the pickle, before os.replace
    tmp = Path(store.pages.path) / ".tmp-killed01"
    tmp.write_bytes(good[: len(good) // 2])
    r = client.get("/p")
    assert r.headers["X-ISR-Cache"] == "HIT" and b"/p? render 1" in r.data
    assert store.count() == 1  # the leftover is not an entry
    assert client.get("/other").status_code == 200


def test_half_written_entry_is_never_served(tmp_path: Path) -> None:
    mw, client, clock, app, store = file_setup(tmp_path)
    client.get("/p")
    good = entry_file(store).read_bytes()
    for cut in (5, len(good) // 3, len(good) - 3):
        entry_file(store).write_bytes(good[:cut])  # what a non-atomic writer would leave
        r = client.get("/p")
        assert r.status_code == 200 and r.headers["X-ISR-Cache"] == "MISS"
        assert b" render " in r.data and r.data.count(b"render") == 1


def _die_mid_write(path: str, half_written: Any) -> None:
    """Child process: start writing a new entry and stop dead in the middle."""
    store = FileStore(path)

    def stuck(f: Any, data: bytes) -> None:
        f.write(data[: len(data) // 2])
        f.flush()
        half_written.set()
        time.sleep(60)  # killed here

    store.pages._fill = stuck  # type: ignore[method-assign]
    entry = store.lookup(KEY)[0]
    assert isinstance(entry, Entry)
    store.put(KEY, dataclasses.replace(entry, body=b"NEW " * 10_000), None)


def test_worker_killed_mid_write_leaves_the_previous_entry_intact(tmp_path: Path) -> None:
    mw, client, clock, app, store = file_setup(tmp_path)
    client.get("/p")
    ctx = multiprocessing.get_context("spawn")
    half_written = ctx.Event()
    proc = ctx.Process(target=_die_mid_write, args=(store.path, half_written))
    proc.start()
    try:
        assert half_written.wait(30)
        proc.kill()
    finally:
        proc.join(10)
    assert proc.exitcode == -9
    leftovers = [n for n in os.listdir(store.pages.path) if n.startswith(".tmp-")]
    assert leftovers  # the kill really happened mid-write
    r = client.get("/p")
    assert r.headers["X-ISR-Cache"] == "HIT" and b"/p? render 1" in r.data
    assert b"NEW" not in r.data
    clock.advance(61)  # and the next regeneration still lands
    client.get("/p")
    assert mw.join(5)
    assert b"/p? render 2" in client.get("/p").data
