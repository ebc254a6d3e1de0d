"""Attacks on the stores, the data cache, the purges and the Django adapter, as an
operator or attacker would make them (found by a red-team review): planted records
with impossible times, header bytes or non-JSON values, FIFOs in the cache directory,
trickling purge targets, closures sharing a name, a dropped middleware not yet
collected, noeviction Redis, multiprocess purge counts, FORCE_SCRIPT_NAME builds."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from helpers import make

from wsgi_isr import codec
from wsgi_isr.entry import Entry
from wsgi_isr.stores import FileStore


def _plant(store: FileStore, key: str, entry: Entry) -> None:
    """What someone who can write the cache directory does: a well-formed record file."""
    store.put(key, entry, None)


@pytest.mark.parametrize(
    "fields",
    [
        {"created": math.inf},
        {"created": -math.inf},
        {"expire": math.inf},
    ],
    ids=repr,
)
def test_planted_record_with_infinite_times_is_not_a_500(tmp_path: Path, fields: dict) -> None:
    """Whoever can write the cache directory (or Redis) may spoil a page, never turn
    a request into a 500: such doubles are a miss (the hit path could not compute with them)."""
    mw, client, clock, app = make(store=f"file://{tmp_path}/c")
    client.get("/p")
    args: dict[str, Any] = {"created": clock.now, "revalidate": 60.0, "expire": None, **fields}
    bad = Entry(
        "200 OK",
        (("Content-Type", "text/plain"),),
        b"spoiled",
        args["created"],
        args["revalidate"],
        args["expire"],
        (),
        '"x"',
        "",
    )
    assert codec.loads(codec.dumps(bad)) is None
    mw.store.put(_key("/p"), bad, None)  # = bytes planted in pages/<sha256>
    r = client.get("/p")
    assert r.status_code < 500 and b"spoiled" not in r.data


def _key(path: str, **env: Any) -> str:
    from werkzeug.test import EnvironBuilder

    from wsgi_isr.keys import request_key

    environ = EnvironBuilder(path=path, **env).get_environ()
    rk = request_key(environ)
    assert rk is not None
    return rk.key


# -- the data cache ----------------------------------------------------------------------------


def test_background_data_refresh_knows_its_middleware_when_several_exist() -> None:
    """A stale cached value read outside a render (a POST view) is refreshed in the
    background; the function body's own ``wsgi_isr.cached`` calls must find the
    middleware that scheduled the refresh, as they do in the foreground."""
    import wsgi_isr

    calls = {"inner": 0}

    @wsgi_isr.cached(revalidate=10)
    def inner() -> int:
        calls["inner"] += 1
        return calls["inner"]

    def view(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        value = outer()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(value).encode()]

    mw, client, clock, _ = make(view)
    other, *_ = make()  # a second site in the same process
    outer = mw.cached(revalidate=10)(lambda: inner() * 100)
    assert client.post("/").data == b"100"
    clock.advance(11)

    assert client.post("/").data == b"100"  # stale: returned, refresh in the background
    assert mw.join(10)
    assert mw.stats["data_refreshes_failed"] == 0
    assert client.post("/").data == b"200"


@pytest.mark.redis
@pytest.mark.parametrize("store", ["memory", "redis"])
def test_cached_call_with_a_lone_surrogate_argument_never_raises(
    store: str, redis_url: str
) -> None:
    """A search string from a JSON body may hold a lone surrogate ("\\ud800" is valid
    JSON); the file and memory stores key it fine, Redis must fail open, not raise."""
    mw, *_ = make(store="memory://" if store == "memory" else redis_url)
    lookup = mw.cached(revalidate=60)(lambda q: f"results for {len(q)}")
    assert lookup("\ud800") == "results for 1"


# -- purges ------------------------------------------------------------------------------------


def test_a_purge_call_to_a_trickling_target_is_bounded_by_its_timeout() -> None:
    """A target that answers, then sends its body one byte at a time, must not keep the
    purge worker busy past the call's ``timeout`` (DESIGN §11: bounded retries): the
    socket timeout is per read, so the call never ends and every later purge of that
    target waits behind it."""
    import socket
    import threading

    from wsgi_isr.purge import PurgeError, VarnishPurger

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    stop = threading.Event()

    def trickle() -> None:
        conn, _ = srv.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
        while not stop.wait(0.02):  # bounded: the test stops it
            try:
                conn.sendall(b".")
            except OSError:
                break
        conn.close()

    threading.Thread(target=trickle, daemon=True).start()
    purger = VarnishPurger(f"varnish://127.0.0.1:{srv.getsockname()[1]}", timeout=1.0)
    outcome: list[object] = []
    call = threading.Thread(
        target=lambda: outcome.append(_raises(PurgeError, purger.purge, ["k"], soft=True)),
        daemon=True,
    )
    call.start()
    call.join(6.0)  # six times the timeout
    stop.set()
    srv.close()
    assert outcome == [True], "the purge call was still running 6x past its timeout"


def _raises(exc: type[BaseException], fn: Any, *args: Any, **kwargs: Any) -> bool:
    try:
        fn(*args, **kwargs)
    except exc:
        return True
    return False


# -- metrics -----------------------------------------------------------------------------------


def test_multiprocess_scrape_sums_purges_of_every_worker(tmp_path: Path) -> None:
    """README: with PROMETHEUS_MULTIPROC_DIR, /_isr/metrics through any worker sums every
    worker's counts, "no pid label", and a stopped worker's counts stay in the totals.
    wsgi_isr_purges_total is printed per process from memory instead."""
    import os
    import subprocess
    import sys

    here = Path(__file__).parent
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    env["PYTHONPATH"] = os.pathsep.join([str(here.parent), env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, str(here / "purge_metrics_worker.py")],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    lines = [ln for ln in out.splitlines() if ln.startswith("wsgi_isr_purges_total{")]
    assert lines, out
    assert all("pid=" not in ln for ln in lines), lines
    ok = [ln for ln in lines if 'result="ok"' in ln]
    assert [float(ln.rsplit(" ", 1)[1]) for ln in ok] == [2.0], lines


# -- Django ------------------------------------------------------------------------------------


def test_django_isr_page_takes_a_cache_profile() -> None:
    """DESIGN §10: profiles are "accepted wherever Python takes revalidate"; Flask's
    @isr.page("minutes") takes one, Django's @isr_page("minutes") is a TypeError."""
    os_environ = __import__("os").environ
    os_environ.setdefault("DJANGO_SETTINGS_MODULE", "django_project.settings")
    import django

    django.setup()
    from django.http import HttpResponse
    from django.test import RequestFactory

    from wsgi_isr.django import isr_page

    @isr_page("minutes", tags=["articles"])
    def view(request: Any) -> HttpResponse:
        return HttpResponse("ok")

    response = view(RequestFactory().get("/"))
    assert response["X-ISR-Revalidate"] == "60"
    assert response["X-ISR-Expire"] == "3600"


def test_cached_function_with_star_args_keys_its_json_arguments() -> None:
    """f(1, 2) of ``def f(*ids)`` passes JSON arguments; the key builder sees the tuple
    ``inspect`` binds them into and refuses them as "not JSON"."""
    mw, *_ = make()

    @mw.cached(revalidate=60)
    def total(*ids: int) -> int:
        return sum(ids)

    assert total(1, 2) == 3


@pytest.mark.server
@pytest.mark.parametrize(
    "spoil",
    [
        {"headers": (("Content-Type", "text/plain"), ("X-Note", "a\nb"))},
        {"headers": (("Bad Name", "x"),)},
        {"status": "OK"},
    ],
    ids=["newline-in-value", "space-in-name", "no-status-code"],
)
def test_planted_record_with_bad_header_or_status_is_not_a_500_under_gunicorn(
    tmp_path: Path, spoil: dict
) -> None:
    """Bytes planted in a page file decode to an Entry whose status or header gunicorn
    refuses: the codec never checks them, gunicorn answers 500 (DESIGN §5: a store that
    holds garbage never turns a request into a 500)."""
    import dataclasses
    import os

    from servers import Instance, free_port, start_gunicorn

    from wsgi_isr.stores.shelf import FILE_HEAD

    (tmp_path / "renders").mkdir()
    store = tmp_path / "store"
    g = Instance(free_port(), tmp_path / "renders", tmp_path / "gunicorn.log")
    env = {"ISR_STORE": f"file://{store}", "ISR_SECRET": "s" * 40}
    env["ISR_COUNTER_DIR"] = str(tmp_path / "renders")
    with start_gunicorn(g, env=env, workers=1):
        assert g.fetch("/page/p?revalidate=false").cache == "MISS"
        planted = 0
        for name in os.listdir(store / "pages"):
            path = store / "pages" / name
            if len(name) != 64:
                continue
            raw = path.read_bytes()
            entry = codec.loads(raw[FILE_HEAD.size :])
            if isinstance(entry, Entry):
                bad = dataclasses.replace(entry, **spoil)
                path.write_bytes(raw[: FILE_HEAD.size] + codec.dumps(bad))
                planted += 1
        assert planted == 1
        r = g.fetch("/page/p?revalidate=false")
    assert r.status < 500, g.log()[-2000:]


# -- what leaves for the caches in front -------------------------------------------------------


def test_cdn_max_age_caps_the_answer_of_a_render_that_was_not_stored() -> None:
    """cdn_max_age is the safety net for caches that cannot be purged (README). A page
    that opts in the CDN way but cannot be stored (over max_entry_bytes) is answered
    with the app's own ``s-maxage=3600``, uncapped and without xkey tags: no purge can
    reach it and the edge keeps it an hour. (Its later hit-for-pass answers drop
    s-maxage, so only the first one leaks; the coalesce-timeout answer goes the same way.)"""
    from helpers import CountingApp

    app = CountingApp(default=[("Cache-Control", "public, s-maxage=3600")])
    mw, client, *_ = make(app, max_entry_bytes=10, purge=["varnish://127.0.0.1:9"], cdn_max_age=60)
    first = client.get("/big")
    assert "s-maxage=3600" not in first.headers.get("Cache-Control", ""), first.headers


def test_planted_data_record_that_is_not_json_is_a_miss(tmp_path: Path) -> None:
    """The codec takes any string as a cached function's value; json.loads of a
    planted one raises in the caller's view (a 500), where a page's garbage is a miss."""
    from wsgi_isr.entry import DataEntry

    mw, _, clock, _ = make(store=f"file://{tmp_path}/c")
    get_post = mw.cached(revalidate=60)(lambda slug: {"slug": slug})
    assert get_post("a") == {"slug": "a"}
    mw.store.put(get_post.key("a"), DataEntry("{not json", clock.now, 60.0, None, ()), None)
    assert get_post("a") == {"slug": "a"}


_DROPPED = """
import gc, sys
import wsgi_isr
from wsgi_isr import ISRMiddleware

def app(environ, start_response):
    start_response("200 OK", [])
    return [b""]

gc.disable()  # what a process does between two automatic full collections
ISRMiddleware(app, store="memory://")  # created, then dropped (replaced)
mw = ISRMiddleware(app, store="memory://")
if sys.argv[1] == "revalidate_tag":
    wsgi_isr.revalidate_tag("t")
else:
    assert wsgi_isr.cached(revalidate=60)(lambda n: n * 2)(21) == 42
"""


@pytest.mark.parametrize("call", ["revalidate_tag", "cached"])
def test_module_level_helpers_ignore_a_middleware_that_was_dropped(call: str) -> None:
    """An ISRMiddleware sits in a reference cycle (mw.regen holds mw._store_failed), so a
    replaced one (init_app run again, an app factory, a reloaded app) lives until the
    next full collection. invalidation.current() means to gc.collect() before giving up,
    but collects while its own ``alive`` list still holds both; datacache's
    the_middleware() does not collect at all. Both raise "2 ISRMiddleware instances"."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    done = subprocess.run(
        [sys.executable, "-c", _DROPPED, call], env=env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-600:]


# -- Redis eviction warnings ------------------------------------------------------------------


@pytest.mark.redis
def test_redis_noeviction_with_maxmemory_is_warned_about(redis_url: str) -> None:
    """DESIGN §7: warn "when maxmemory-policy would evict tag state or never evict at
    all". noeviction (Redis's default policy) with a maxmemory never evicts: once full,
    every page write AND every invalidation script is refused with OOM, so
    revalidate_tag raises and stale pages stay. No warning is given."""
    import redis

    from wsgi_isr.stores import RedisStore

    client = redis.Redis.from_url(redis_url.split("?")[0])
    old = client.config_get("maxmemory*")
    try:
        client.config_set("maxmemory", "64mb")
        client.config_set("maxmemory-policy", "noeviction")
        assert RedisStore(redis_url).check_config() != []
    finally:
        client.config_set("maxmemory", old["maxmemory"])
        client.config_set("maxmemory-policy", old["maxmemory-policy"])
        client.close()


# -- the file store's directory ----------------------------------------------------------------


def test_a_fifo_planted_as_a_page_file_does_not_hang_the_request(tmp_path: Path) -> None:
    """A named pipe under pages/<sha256(key)>: ``open(..., "rb")`` blocks until a writer
    comes, so the worker serving that URL hangs for ever (and a rebuild of the index,
    which opens every file with the index lock held, would hang every writer)."""
    import os
    import threading

    mw, client, *_ = make(store=f"file://{tmp_path}/c")
    os.mkfifo(mw.store.pages.filename(_key("/p")), 0o600)
    answers: list[int] = []
    t = threading.Thread(target=lambda: answers.append(client.get("/p").status_code), daemon=True)
    t.start()
    t.join(5.0)
    blocked = not answers
    if blocked:  # unblock the reader so the thread ends
        fifo = mw.store.pages.filename(_key("/p"))
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.unlink(fifo)
        os.close(fd)
        t.join(5.0)
    assert not blocked, "the request was still blocked on the planted FIFO after 5 s"
    assert answers == [200]


_HUGE_FILE = """
import os, resource, sys
sys.path.insert(0, sys.argv[2])
from helpers import make
mw, client, clock, app = make(store="file://" + sys.argv[1])
planted = mw.store.pages.filename(sys.argv[3]) if sys.argv[4] == "page" else mw.store._log_path
with open(planted, "wb") as f:
    if sys.argv[4] == "tail":  # a proper first line, then the terabyte
        f.write(b'{"generation": "planted"}\\n')
    f.truncate(1 << 40)  # a terabyte, sparse: no disk, but a read of it allocates it
limit = 4 << 30  # an allocation that large fails at once, whatever the overcommit setting
resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
for _ in range(2):
    r = client.get("/p")
    print("ANSWER", r.status_code, r.headers.get("X-ISR-Cache"))
clock.advance(1)
mw.revalidate_path("/p")  # a tag invalidation (the page's path tag): seen by the next hit
r = client.get("/p")
print("AFTER", r.status_code, r.headers.get("X-ISR-Cache"))
print("RENDERS", app.count("/p"), "SIZE", os.path.getsize(planted) < (1 << 20))
"""


@pytest.mark.parametrize("where", ["page", "tag log", "tail of the tag log"])
def test_a_huge_file_planted_in_the_cache_dir_is_never_a_500_and_is_replaced(
    tmp_path: Path, where: str
) -> None:
    """A sparse regular file of a terabyte costs no disk, but reading it whole asked for a
    terabyte: the MemoryError (no OSError) escaped the store and every request to that URL
    (under pages/<sha256(key)>) or to every URL (tags.log, read up to its first newline)
    was a 500; refusing to read the log made every request bypass the cache and every
    invalidation fail before it could replace the log. A page file larger than any the
    store writes is refused as planted: a miss, whose render replaces it; a tag log that
    cannot be read (its first line never ends, or it is that large) is ignored, and the
    next invalidation restarts it, which every process then sees (the stale page then
    renders again)."""
    import subprocess
    import sys

    helpers_dir = str(Path(__file__).parent)
    argv = [sys.executable, "-c", _HUGE_FILE, str(tmp_path / "c"), helpers_dir, _key("/p")]
    mode = {"page": "page", "tag log": "log", "tail of the tag log": "tail"}[where]
    out = subprocess.run([*argv, mode], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    expected = ["ANSWER 200 MISS", "ANSWER 200 HIT", "AFTER 200 STALE", "RENDERS 2 SIZE True"]
    assert out.stdout.split("\n")[:4] == expected, (out.stdout, out.stderr[-3000:])


def _bind(sock: Any, path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bind a UNIX socket at ``path``, named relative to its directory: a socket's path
    is at most 107 bytes, and the store's are longer."""
    import os

    with monkeypatch.context() as m:
        m.chdir(os.path.dirname(path))
        sock.bind(os.path.basename(path))


def test_a_socket_planted_as_a_page_file_is_a_miss_the_next_render_replaces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``open`` on a UNIX socket fails with ENXIO, which the read took for a broken store:
    every request to that URL bypassed the cache (a store error, logged and counted), so
    nothing was ever written over the socket and the page was never cached again. It is
    planted, like a FIFO: a miss, whose render replaces it."""
    import os
    import socket
    import stat

    mw, client, _, app = make(store=f"file://{tmp_path}/c")
    page = mw.store.pages.filename(_key("/p"))
    sock = socket.socket(socket.AF_UNIX)
    try:
        _bind(sock, page, monkeypatch)
        answers = [client.get("/p").headers.get("X-ISR-Cache") for _ in range(2)]
    finally:
        sock.close()
    assert answers == ["MISS", "HIT"]
    assert app.count("/p") == 1
    assert stat.S_ISREG(os.lstat(page).st_mode)


@pytest.mark.parametrize("what", ["socket", "symlink", "fifo"])
def test_a_non_regular_thing_planted_as_the_tag_log_is_replaced_by_the_next_invalidation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, what: str
) -> None:
    """A socket, a symbolic link or a FIFO standing at tags.log was refused as no regular
    file (rightly), but as a store error: every request bypassed the cache and every
    invalidation failed before it could replace it, so the cache stayed off. It is a log
    that is not there (a warning), and the next invalidation writes a new one in its place
    (with the tag states the process knows): never opened through the link, nor blocked on
    the FIFO."""
    import os
    import socket
    import stat

    mw, client, clock, _ = make(store=f"file://{tmp_path}/c")
    mw.revalidate_path("/other")  # a tag state the restarted log must keep
    log_path = mw.store._log_path
    os.unlink(log_path)
    target = tmp_path / "elsewhere"
    target.write_bytes(b'{"generation": "x"}\n')
    sock = socket.socket(socket.AF_UNIX)
    try:
        if what == "socket":
            _bind(sock, log_path, monkeypatch)
        elif what == "symlink":
            os.symlink(target, log_path)
        else:
            os.mkfifo(log_path, 0o600)
        answers = [client.get("/p").headers.get("X-ISR-Cache") for _ in range(2)]
        clock.advance(1)
        mw.revalidate_path("/p")
        answers.append(client.get("/p").headers.get("X-ISR-Cache"))
    finally:
        sock.close()
    assert answers == ["MISS", "HIT", "STALE"]
    assert stat.S_ISREG(os.lstat(log_path).st_mode)
    assert target.read_bytes() == b'{"generation": "x"}\n'  # the link's target untouched
    fresh = FileStore(str(tmp_path / "c"))  # another process reads the restarted log
    assert "_isr_page:/other" in fresh.known_tag_states()


def test_redis_store_description_keeps_the_port_it_drops_the_password_from() -> None:
    """/status, `isr status` and the start-up log name the store; dropping the password
    from the URL also dropped the port (and an IPv6 host's brackets), so two stores on
    one host look the same and the operator is told the wrong server."""
    from wsgi_isr.stores import RedisStore

    store = RedisStore("redis://:hunter2@127.0.0.1:6390/0")
    assert "hunter2" not in store.description
    assert "127.0.0.1:6390" in store.description, store.description


_DJANGO_SCRIPT_NAME = """
import os, sys, django
os.environ["DJANGO_SETTINGS_MODULE"] = "django_project.settings"
from django.conf import settings
settings.FORCE_SCRIPT_NAME = "/app"  # the site is served under /app (gunicorn SCRIPT_NAME)
settings.ISR = {**settings.ISR, "STORE": "file://" + sys.argv[1]}
django.setup()
from django.core.management import call_command
from django.core.handlers.wsgi import WSGIHandler
from werkzeug.test import Client
from wsgi_isr.django import install
call_command("isr", "build")
r = Client(install(WSGIHandler())).get("/", environ_overrides={"SCRIPT_NAME": "/app"})
print("CACHE", r.status_code, r.headers.get("X-ISR-Cache"))
"""


def test_django_isr_build_under_a_script_prefix_fills_the_keys_visitors_use(
    tmp_path: Path,
) -> None:
    """With FORCE_SCRIPT_NAME, reverse() gives "/app/..."; `isr build` renders those as
    PATH_INFO with no SCRIPT_NAME (Django 404s them: "skipped, not opted in"), exits 0,
    and the first visitor of /app/ still gets a MISS. Flask's build has --script-name,
    Django's has none and does not split the prefix off."""
    import os
    import subprocess
    import sys

    here = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here.parent), str(here)])}
    done = subprocess.run(
        [sys.executable, "-c", _DJANGO_SCRIPT_NAME, str(tmp_path / "store")],
        env=env, cwd=here, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-800:]
    assert "CACHE 200 HIT" in done.stdout, done.stdout[-800:]


def test_two_different_cached_functions_under_one_name_are_refused() -> None:
    """Keys are module + __qualname__ + arguments: two lambdas of one module would
    share their values. (Closures made by one factory cannot be told from an app
    factory called twice: the README says to give them key=.)"""
    mw, *_ = make()
    first = mw.cached(revalidate=60)(lambda pk: f"users #{pk}")
    assert first(1) == "users #1"
    with pytest.raises(TypeError, match="key="):
        mw.cached(revalidate=60)(lambda pk: f"orders #{pk}")
    again = mw.cached(revalidate=60, key=lambda pk: ["orders", pk])(lambda pk: f"orders #{pk}")
    assert again(1) == "orders #1"
