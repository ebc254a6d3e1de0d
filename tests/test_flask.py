"""The Flask extension: configuration, @isr.page, static params, CLI, prebuild."""

from __future__ import annotations

import signal
from typing import Any

import pytest
from flask import Flask, request
from helpers import FakeClock
from servers import free_port
from werkzeug.test import Client

import wsgi_isr
from wsgi_isr import FileStore, ISRMiddleware, MemoryStore
from wsgi_isr.__main__ import main as module_main
from wsgi_isr.flask import CONFIG, ISR

SECRET = "x" * 40


def make_app(tmp_path: Any, **config: Any) -> tuple[Flask, ISR, dict[str, int]]:
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    app.config.update(ISR_SECRET=SECRET, **config)
    isr = ISR()
    renders: dict[str, int] = {}

    def count(name: str) -> int:
        renders[name] = renders.get(name, 0) + 1
        return renders[name]

    @app.get("/posts/<slug>")
    @isr.page(
        revalidate=60,
        tags=lambda slug: [f"post-{slug}"],
        static_params=lambda: [{"slug": "a"}, {"slug": "b"}],
    )
    def post(slug: str) -> str:
        wsgi_isr.tag("from-data-layer")
        return f"post {slug} render {count(slug)}"

    @app.get("/docs/<int:n>")
    @isr.page(static_params=lambda: [{"n": 1}, {"n": 2}], dynamic_params=False, expire=300)
    def doc(n: int) -> str:
        return f"doc {n} render {count(f'doc{n}')}"

    @app.get("/plain")
    def plain() -> str:
        return f"plain {count('plain')}"

    @app.post("/hook")
    def hook() -> Any:
        isr.revalidate_tag("post-a")
        return {"ok": True}

    isr.init_app(app)
    return app, isr, renders


def test_defaults_to_a_file_store_in_the_instance_folder(tmp_path: Any) -> None:
    app, isr, _ = make_app(tmp_path)
    mw = app.wsgi_app
    assert isinstance(mw, ISRMiddleware)
    assert isinstance(mw.store, FileStore)
    assert mw.store.path == str(tmp_path / "instance" / "isr-cache")
    assert mw.secret == SECRET


def test_config_keys_reach_the_middleware(tmp_path: Any) -> None:
    app, isr, _ = make_app(
        tmp_path,
        ISR_STORE="memory://",
        ISR_ENDPOINT="/_cache",
        ISR_BYPASS_COOKIES=["session"],
        ISR_TRUSTED_HOSTS=["example.com"],
        ISR_COALESCE_TIMEOUT=3,
        ISR_MAX_ENTRY_BYTES=1000,
    )
    mw = app.wsgi_app
    assert isinstance(mw, ISRMiddleware) and isinstance(mw.store, MemoryStore)
    assert mw.endpoint == "/_cache"
    assert mw.bypass_cookies == frozenset({"session"})
    assert mw.trusted_hosts == ["example.com"]
    assert mw.coalesce_timeout == 3.0 and mw.max_entry_bytes == 1000


def test_bad_config_is_a_clear_error(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match="lock_timeout"):
        make_app(tmp_path, ISR_STORE="memory://", ISR_LOCK_TIMEOUT=0)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        pytest.param("ISR_QUERY_PARAMS", "page", id="query-params"),
        pytest.param("ISR_BYPASS_COOKIES", "session", id="bypass-cookies"),
        pytest.param("ISR_TRUSTED_HOSTS", "www.example.com", id="trusted-hosts"),
    ],
)
def test_a_string_for_a_list_of_names_is_a_clear_error(key: str, value: str) -> None:
    """``ISR_QUERY_PARAMS = "page"`` became the names ``p``, ``a``, ``g``, ``e``: every
    ``?page=N`` was served page 1; a string of cookie names bypassed nobody, one trusted
    host turned the cache off. The list itself works."""
    app = Flask(__name__)
    app.config.update(ISR_STORE="memory://", **{key: value})
    with pytest.raises(ValueError, match=f"{key} takes a list of names"):
        ISR(app)
    with pytest.raises(ValueError, match="takes a list of names"):
        ISRMiddleware(app.wsgi_app, store="memory://", **{CONFIG[key][0]: value})
    app = Flask(__name__)
    app.config.update(ISR_STORE="memory://", ISR_QUERY_PARAMS=["page"])
    isr = ISR(app)

    @app.get("/")
    @isr.page(revalidate=60)
    def index() -> str:
        return f"page {request.args.get('page', '1')}"

    client = Client(app)
    assert [client.get(f"/?page={n}&utm=x").data for n in (1, 2, 1)] == [
        b"page 1", b"page 2", b"page 1"
    ]  # fmt: skip


def test_page_decorator_sets_the_headers_and_caches(tmp_path: Any) -> None:
    app, isr, renders = make_app(tmp_path, ISR_STORE="memory://")
    client = Client(app)
    first = client.get("/posts/a")
    assert first.headers["X-ISR-Cache"] == "MISS"
    assert "X-ISR-Revalidate" not in first.headers
    assert first.headers["Cache-Control"].startswith("public, s-maxage=59,")
    assert client.get("/posts/a").headers["X-ISR-Cache"] == "HIT"
    assert renders == {"a": 1}
    plain = client.get("/plain")
    assert "X-ISR-Cache" in plain.headers and client.get("/plain").data == b"plain 2"


def test_an_async_view_is_awaited_and_cached(tmp_path: Any) -> None:
    """``async def`` views (flask[async]) under the decorator, as without it."""
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    app.config.update(ISR_SECRET=SECRET, ISR_STORE="memory://")
    isr = ISR(app)
    renders: list[str] = []

    @app.get("/async/<slug>")
    @isr.page(revalidate=60, tags=lambda slug: [f"post-{slug}"])
    async def post(slug: str) -> str:
        renders.append(slug)
        return f"async post {slug}"

    client = Client(app)
    first, second = client.get("/async/a"), client.get("/async/a")
    assert (first.status_code, first.headers["X-ISR-Cache"]) == (200, "MISS"), first.data
    assert (second.headers["X-ISR-Cache"], second.data) == ("HIT", b"async post a")
    assert renders == ["a"]


def test_tags_from_arguments_and_data_layer(tmp_path: Any) -> None:
    clock = FakeClock()
    app, isr, renders = make_app(tmp_path, ISR_STORE=MemoryStore(clock=clock))
    client = Client(app)
    client.get("/posts/a")
    client.get("/posts/b")
    clock.advance(1)
    isr.revalidate_tag("post-a")  # outside a request
    clock.advance(1)
    assert client.get("/posts/a").headers["X-ISR-Cache"] == "STALE"
    assert client.get("/posts/b").headers["X-ISR-Cache"] == "HIT"
    app.wsgi_app.join(5)  # type: ignore[attr-defined]
    clock.advance(1)
    isr.revalidate_tag("from-data-layer")
    clock.advance(1)
    assert client.get("/posts/b").headers["X-ISR-Cache"] == "STALE"
    app.wsgi_app.join(5)  # type: ignore[attr-defined]


def test_revalidate_from_a_view(tmp_path: Any) -> None:
    clock = FakeClock()
    app, isr, renders = make_app(tmp_path, ISR_STORE=MemoryStore(clock=clock))
    client = Client(app)
    client.get("/posts/a")
    clock.advance(1)
    assert client.post("/hook").json == {"ok": True}
    clock.advance(1)
    assert client.get("/posts/a").headers["X-ISR-Cache"] == "STALE"
    app.wsgi_app.join(5)  # type: ignore[attr-defined]
    clock.advance(1)
    isr.revalidate_path("/posts/a", mode="hard")
    clock.advance(1)
    assert client.get("/posts/a").headers["X-ISR-Cache"] == "MISS"


def test_dynamic_params_false_is_404_without_running_the_view(tmp_path: Any) -> None:
    app, isr, renders = make_app(tmp_path, ISR_STORE="memory://")
    client = Client(app)
    assert client.get("/docs/1").status_code == 200
    r = client.get("/docs/3")
    assert r.status_code == 404
    assert "doc3" not in renders
    assert client.get("/docs/1").headers["X-ISR-Cache"] == "HIT"


def test_decorator_rejects_nonsense() -> None:
    isr = ISR()
    with pytest.raises(ValueError):
        isr.page(revalidate=-1)
    with pytest.raises(ValueError):
        isr.page(dynamic_params=False)


def test_static_paths_cover_every_static_param(tmp_path: Any) -> None:
    app, isr, _ = make_app(tmp_path, ISR_STORE="memory://")
    with app.app_context():
        assert isr.static_paths() == ["/posts/a", "/posts/b", "/docs/1", "/docs/2"]


def test_cli_revalidate_on_a_store_that_is_down_exits_1(tmp_path: Any) -> None:
    app, isr, _ = make_app(tmp_path, ISR_STORE=f"redis://127.0.0.1:{free_port()}/0")
    result = app.test_cli_runner().invoke(args=["isr", "revalidate", "--tag", "posts"])
    assert result.exit_code == 1 and "not revalidated, the store failed" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.redis
def test_cli_build_on_a_store_that_hangs_reports_failed_pages(
    tmp_path: Any, own_redis: Any
) -> None:
    """Redis hangs during ``flask isr build``: every page is reported failed (exit 1),
    the build does not die in a traceback from the store's clock."""
    app, isr, _ = make_app(tmp_path, ISR_STORE=f"{own_redis.url}?socket_timeout=0.3")
    assert app.test_client().get("/posts/a").headers["X-ISR-Cache"] == "MISS"
    own_redis.signal(signal.SIGSTOP)  # the fixture resumes it
    result = app.test_cli_runner().invoke(args=["isr", "build"])
    assert result.exit_code == 1, result.output
    assert "0 built" in result.output and "4 failed" in result.output, result.output


def test_prebuild_of_a_path_the_app_does_not_have_fails(tmp_path: Any) -> None:
    """A path asked for that answers 4xx (a typo in the paths file, a static_params
    entry the view 404s) failed, where it was "skipped (did not opt in)" and exit 0."""
    app, isr, _ = make_app(tmp_path, ISR_STORE="memory://")
    report = isr.middleware.prebuild(["/posts/a", "/no-such-page"])
    assert report.built == ["/posts/a"] and not report.skipped
    assert report.failed == [("/no-such-page", "answered 404 NOT FOUND")]
    assert not report.ok


def test_cli_build_prebuilds_pages_served_as_hits(tmp_path: Any) -> None:
    app, isr, renders = make_app(tmp_path)
    result = app.test_cli_runner().invoke(args=["isr", "build", "--concurrency", "2"])
    assert result.exit_code == 0, result.output
    assert "4 built, 0 skipped (did not opt in), 0 failed" in result.output
    assert renders == {"a": 1, "b": 1, "doc1": 1, "doc2": 1}
    # a separate process (a fresh app on the same file store) serves them as HITs
    server, _, server_renders = make_app(tmp_path)
    r = Client(server).get("/posts/a")
    assert r.headers["X-ISR-Cache"] == "HIT" and r.data == b"post a render 1"
    assert server_renders == {}


def test_cli_build_for_an_app_mounted_under_a_prefix(tmp_path: Any) -> None:
    """gunicorn's SCRIPT_NAME (or a DispatcherMiddleware) mounts the app at /blog:
    the build stores the pages under the keys mounted visitors look up."""
    app, _, renders = make_app(tmp_path, APPLICATION_ROOT="/blog")
    result = app.test_cli_runner().invoke(args=["isr", "build"])
    assert result.exit_code == 0, result.output
    assert "as http://localhost/blog" in result.output
    server, _, server_renders = make_app(tmp_path)
    r = Client(server).get("/posts/a", environ_overrides={"SCRIPT_NAME": "/blog"})
    assert r.headers["X-ISR-Cache"] == "HIT" and r.data == b"post a render 1"
    assert Client(server).get("/posts/a").headers["X-ISR-Cache"] == "MISS"  # unmounted
    assert server_renders == {"a": 1}
    assert renders["a"] == 1


def test_cli_build_fails_when_a_page_fails(tmp_path: Any) -> None:
    app, isr, renders = make_app(tmp_path, ISR_STORE="memory://")

    @app.get("/broken")
    @isr.page()
    def broken() -> str:
        raise RuntimeError("boom")

    result = app.test_cli_runner().invoke(args=["isr", "build"])
    assert result.exit_code == 1
    assert "FAILED /broken" in result.output


def test_cli_revalidate_and_status(tmp_path: Any) -> None:
    app, isr, renders = make_app(tmp_path)
    client = Client(app)
    client.get("/posts/a")
    runner = app.test_cli_runner()
    status = runner.invoke(args=["isr", "status"])
    assert status.exit_code == 0 and "entries: 1" in status.output
    assert "file://" in status.output
    result = runner.invoke(args=["isr", "revalidate", "--tag", "post-a", "--hard"])
    assert result.exit_code == 0, result.output
    assert client.get("/posts/a").headers["X-ISR-Cache"] == "MISS"
    bad = runner.invoke(args=["isr", "revalidate", "--tag", "has space"])
    assert bad.exit_code != 0 and "invalid tag" in bad.output
    assert runner.invoke(args=["isr", "revalidate"]).exit_code != 0


def test_prebuild_for_any_wsgi_app(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    module = tmp_path / "plain_site.py"
    module.write_text(
        "from wsgi_isr import ISRMiddleware\n"
        "def site(environ, start_response):\n"
        "    path = environ['PATH_INFO']\n"
        "    if path == '/boom':\n"
        "        raise RuntimeError('boom')\n"
        "    headers = [('X-ISR-Revalidate', '60')] if path != '/skip' else []\n"
        "    start_response('200 OK', headers)\n"
        "    return [path.encode()]\n"
        f"application = ISRMiddleware(site, store='file://{tmp_path / 'store'}')\n"
    )
    paths = tmp_path / "paths.txt"
    paths.write_text("/a\n/b\n# comment\n/skip\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert module_main(["prebuild", "plain_site:application", "--paths-file", str(paths)]) == 0
    store = FileStore(str(tmp_path / "store"))
    assert store.count() == 2  # /skip did not opt in
    paths.write_text("/boom\n")
    assert module_main(["prebuild", "plain_site:application", "--paths-file", str(paths)]) == 1


def test_cli_status_of_a_server_that_does_not_answer_is_a_clear_error(tmp_path: Any) -> None:
    app, _, _ = make_app(tmp_path)
    result = app.test_cli_runner().invoke(args=["isr", "status", "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 1
    assert "cannot read the counters of http://127.0.0.1:9" in result.output
    assert "Traceback" not in result.output
