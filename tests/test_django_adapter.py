"""The Django adapter in process: settings, ``get_wsgi_application``, ``@isr_page`` on
function and class-based views, signal-driven invalidation, the ``isr`` management
command, and the Django behaviour that must keep working behind the cache (CSRF,
sessions and login, ConditionalGetMiddleware, CommonMiddleware, ``cache_control``).

The project is ``tests/django_project`` (real Django, SQLite in a temporary directory);
requests go through werkzeug's test client into the real middleware and Django's own
WSGI handler."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from helpers import FakeClock
from purge_api import Recorder
from servers import free_port
from werkzeug.test import Client

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_project.settings")

import django  # noqa: E402

django.setup()

from django.apps import apps  # noqa: E402
from django.contrib.auth.models import User  # noqa: E402
from django.core.exceptions import ImproperlyConfigured  # noqa: E402
from django.core.handlers.wsgi import WSGIHandler  # noqa: E402
from django.core.management import CommandError, call_command  # noqa: E402
from django.db import transaction  # noqa: E402
from django.test import override_settings  # noqa: E402
from django_project import views  # noqa: E402
from django_project.models import Note  # noqa: E402

import wsgi_isr.django  # noqa: E402
from wsgi_isr import ISRMiddleware  # noqa: E402
from wsgi_isr.django import install, static_paths  # noqa: E402
from wsgi_isr.errors import StoreError  # noqa: E402
from wsgi_isr.policy import tag_text  # noqa: E402
from wsgi_isr.purge import edge_key  # noqa: E402

SECRET = "s" * 40


@pytest.fixture(scope="module", autouse=True)
def database() -> None:
    call_command("migrate", run_syncdb=True, verbosity=0)
    User.objects.filter(username="alice").delete()
    User.objects.create_user("alice", password="wonderland-42")


@pytest.fixture
def site(clock: FakeClock) -> Iterator[tuple[ISRMiddleware, Client]]:
    mw = install(WSGIHandler(), store="memory://", clock=clock)
    yield mw, Client(mw, use_cookies=False)
    mw.join(10)


def cache(client: Client, path: str, **kwargs: Any) -> tuple[str | None, str]:
    r = client.get(path, **kwargs)
    return r.headers.get("X-ISR-Cache"), r.get_data(as_text=True)


# -- settings ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        pytest.param({"STORAGE": "memory://"}, "unknown key 'STORAGE'", id="unknown-key"),
        pytest.param({"BYPASS_COOKIES": "sessionid"}, "list of cookie names", id="str-not-list"),
        pytest.param({"LOCK_TIMEOUT": -1}, "LOCK_TIMEOUT", id="negative-timeout"),
        pytest.param({"SECRET": 42}, "SECRET", id="secret-not-str"),
        pytest.param(["STORE", "memory://"], "must be a dict", id="not-a-dict"),
        pytest.param({"LOCAL_MAX_ENTRIES": "many"}, "LOCAL_MAX_ENTRIES", id="count-not-int"),
        pytest.param({"LOCAL_MAX_BYTES": -1}, "LOCAL_MAX_BYTES", id="negative-size"),
        pytest.param({"MAX_PENDING": 0.5}, "MAX_PENDING", id="half-a-regeneration"),
    ],
)
def test_a_wrong_setting_fails_at_start_up(setting: Any, message: str) -> None:
    with override_settings(ISR=setting), pytest.raises(ImproperlyConfigured, match=message):
        apps.get_app_config("wsgi_isr").ready()


def test_a_value_the_core_refuses_is_improperly_configured_too() -> None:
    for bad in (
        {"ENDPOINT": "isr"},
        {"STORE": "ftp://nowhere"},
        {"STORE": "memory://", "LOCAL_TTL": 5, "LOCAL_MAX_BYTES": "lots"},
    ):
        with override_settings(ISR=bad), pytest.raises(ImproperlyConfigured, match="settings.ISR"):
            wsgi_isr.django.get_wsgi_application()


def test_settings_become_the_middleware_options() -> None:
    isr = {"STORE": "memory://", "SECRET": SECRET, "BYPASS_COOKIES": ["sessionid", "x"]}
    with override_settings(ISR={**isr, "MAX_PENDING": 3, "ENDPOINT": "/_cache"}):
        mw = wsgi_isr.django.get_wsgi_application()
    assert mw.bypass_cookies == {"sessionid", "x"} and mw.secret == SECRET
    assert mw.endpoint == "/_cache" and mw.store.description.startswith("memory")
    assert wsgi_isr.django.middleware() is mw  # what revalidate_tag and the commands use


# -- @isr_page ---------------------------------------------------------------------------


def test_function_view_lifecycle_and_tag_revalidation(site: Any, clock: FakeClock) -> None:
    mw, client = site
    first = client.get("/articles/a/")
    assert first.headers["X-ISR-Cache"] == "MISS"
    assert not any(k.startswith("X-ISR-") and k != "X-ISR-Cache" for k, _ in first.headers.items())
    assert cache(client, "/articles/a/") == ("HIT", first.get_data(as_text=True))
    clock.advance(1)
    wsgi_isr.django.revalidate_tag("articles")
    assert cache(client, "/articles/a/") == ("STALE", first.get_data(as_text=True))
    mw.join(10)
    state, body = cache(client, "/articles/a/")
    assert state == "HIT" and body != first.get_data(as_text=True)
    clock.advance(61)  # revalidate=60
    assert cache(client, "/articles/a/")[0] == "STALE"


def test_class_based_view_through_method_decorator(site: Any, clock: FakeClock) -> None:
    mw, client = site
    assert cache(client, "/listing/")[0] == "MISS"
    assert cache(client, "/listing/")[0] == "HIT"
    clock.advance(1)
    assert client.post("/hook/").status_code == 200  # revalidate_path("/listing/") in a view
    assert cache(client, "/listing/")[0] == "STALE"


def test_dynamic_params_false_is_a_404_without_running_the_view(site: Any) -> None:
    mw, client = site
    views.calls.clear()
    assert client.get("/docs/1/").status_code == 200
    r = client.get("/docs/3/")
    assert r.status_code == 404 and views.calls == ["doc 1"]


def test_post_save_receiver_revalidates_the_models_pages(site: Any, clock: FakeClock) -> None:
    mw, client = site
    Note.objects.filter(slug="n1").delete()
    note = Note.objects.create(slug="n1", text="one")
    assert cache(client, "/notes/n1/")[0] == "MISS"
    assert cache(client, "/notes/n1/")[0] == "HIT"
    clock.advance(1)
    note.text = "two"
    note.save()  # outside any request: the receiver acts on the project's middleware
    state, body = cache(client, "/notes/n1/")
    assert state == "STALE" and "note one" in body
    mw.join(10)
    state, body = cache(client, "/notes/n1/")
    assert state == "HIT" and "note two" in body


@pytest.mark.parametrize(
    "slug",
    [
        "café",
        "日本語",
        # SlugField's 50 characters, over 256 percent-encoded
        "пятьдесят-символов-кириллицей-в-слаге-статьи-блога",
    ],
)
def test_a_unicode_slug_tags_its_page_and_its_save_invalidates_it(
    site: Any, clock: FakeClock, slug: str
) -> None:
    """``f"article-{slug}"`` with a ``SlugField(allow_unicode=True)`` slug: the page's
    tag (``@isr_page``, or ``wsgi_isr.tag`` in the view) and the receiver's are one tag,
    and the save neither fails nor misses the page."""
    mw, client = site
    Note.objects.filter(slug=slug).delete()
    note = Note.objects.create(slug=slug, text="one")  # the receiver: revalidate_tag(...)
    page = f"/u/notes/{quote(slug)}/"
    assert [cache(client, page)[0] for _ in range(2)] == ["MISS", "HIT"]
    clock.advance(1)
    note.text = "two"
    note.save()
    assert cache(client, page)[0] == "STALE"
    mw.join(10)
    state, body = cache(client, page)
    assert state == "HIT" and "note two" in body, body
    article = f"/u/articles/{quote(slug)}/"
    assert [cache(client, article)[0] for _ in range(2)] == ["MISS", "HIT"]
    clock.advance(1)
    wsgi_isr.django.revalidate_tag(f"article-{slug}")
    assert cache(client, article)[0] == "STALE"


def test_an_async_view_is_awaited_and_cached(site: Any, clock: FakeClock) -> None:
    """``async def`` views under WSGI (Django runs them in an event loop of its own)."""
    mw, client = site
    views.calls.clear()
    first, second = client.get("/async/a/"), client.get("/async/a/")
    assert (first.status_code, first.headers["X-ISR-Cache"]) == (200, "MISS"), first.data
    assert second.headers["X-ISR-Cache"] == "HIT" and second.data == first.data
    assert views.calls == ["async article a"]
    clock.advance(1)
    wsgi_isr.django.revalidate_tag("article-a")
    assert cache(client, "/async/a/")[0] == "STALE"
    states = [cache(client, "/async-listing/1/") for _ in range(2)]
    assert [s for s, _ in states] == ["MISS", "HIT"] and "async listing" in states[1][1]
    states = [cache(client, "/async-dispatch/1/") for _ in range(2)]
    assert [s for s, _ in states] == ["MISS", "HIT"] and "async dispatch" in states[1][1]
    clock.advance(1)
    wsgi_isr.django.revalidate_tag("async-dispatch")
    assert cache(client, "/async-dispatch/1/")[0] == "STALE"


def note_page(client: Client, slug: str, text: str) -> Note:
    """A saved note whose page (``?v=1``, a variant no other visit renders) is cached."""
    Note.objects.filter(slug=slug).delete()
    note = Note.objects.create(slug=slug, text=text)
    assert cache(client, f"/notes/{slug}/?v=1")[0] == "MISS"
    assert cache(client, f"/notes/{slug}/?v=1")[0] == "HIT"
    return note


def test_a_save_in_a_transaction_revalidates_when_it_commits(site: Any, clock: FakeClock) -> None:
    """The admin saves inside ``transaction.atomic()``: a render that starts between the
    ``post_save`` receiver and the COMMIT reads the old row (another connection), and
    an invalidation made before it would leave that render stored as fresh."""
    mw, client = site
    note_page(client, "tx", "one")
    clock.advance(1)
    seen: list[tuple[str | None, str]] = []

    def another_visitor() -> None:  # its own thread, its own database connection
        from django.db import connection

        try:
            seen.append(cache(client, "/notes/tx/?v=2"))  # a first render, of the old row
        finally:
            connection.close()

    with transaction.atomic():
        note = Note.objects.get(slug="tx")
        note.text = "two"
        note.save()  # the receiver: revalidate_tag("note-tx")
        assert cache(client, "/notes/tx/?v=1")[0] == "HIT", "invalidated before the commit"
        visitor = threading.Thread(target=another_visitor)
        visitor.start()
        visitor.join(10)
        clock.advance(0.5)  # the COMMIT comes after the render started
    assert seen and seen[0][0] == "MISS" and "note one" in seen[0][1], seen
    clock.advance(1)
    for page in ("/notes/tx/?v=1", "/notes/tx/?v=2"):
        state, body = cache(client, page)
        assert state == "STALE" and "note one" in body, (page, state, body)
    mw.join(10)
    for page in ("/notes/tx/?v=1", "/notes/tx/?v=2"):
        state, body = cache(client, page)
        assert state == "HIT" and "note two" in body, (page, state, body)


def test_a_rolled_back_save_revalidates_nothing(site: Any, clock: FakeClock) -> None:
    mw, client = site
    note_page(client, "rb", "one")
    clock.advance(1)
    with pytest.raises(RuntimeError), transaction.atomic():
        note = Note.objects.get(slug="rb")
        note.text = "two"
        note.save()
        raise RuntimeError("the form failed after the save")
    assert cache(client, "/notes/rb/?v=1")[0] == "HIT"
    assert Note.objects.get(slug="rb").text == "one"


@pytest.mark.parametrize("alias", ["default", "other"])
def test_a_transaction_on_any_database_defers_the_helpers(
    site: Any, clock: FakeClock, alias: str
) -> None:
    """A project whose router keeps the content in another database saves in
    ``transaction.atomic(using=...)``: the invalidation waits for that COMMIT, and a
    savepoint rolled back inside it takes its invalidation with it (Django's rule)."""
    mw, client = site
    note_page(client, f"db-{alias}", "one")
    assert cache(client, "/")[0] == "MISS"
    clock.advance(1)
    with transaction.atomic(using=alias):
        assert wsgi_isr.django.revalidate_tag(f"note-db-{alias}") is None
        assert cache(client, f"/notes/db-{alias}/?v=1")[0] == "HIT", "invalidated before the commit"
        with pytest.raises(RuntimeError), transaction.atomic(using=alias):
            wsgi_isr.django.revalidate_path("/")
            raise RuntimeError("the inner form failed")
    clock.advance(1)
    assert cache(client, f"/notes/db-{alias}/?v=1")[0] == "STALE"
    assert cache(client, "/")[0] == "HIT", "the rolled-back savepoint's revalidate_path ran"


def test_using_waits_for_that_databases_transaction_alone(site: Any, clock: FakeClock) -> None:
    """ATOMIC_REQUESTS on default, the content saved in atomic(using="other") that rolls
    back: without ``using`` the default's commit invalidates (which database held the
    rows is unknown); with the post_save receiver's ``using``, nothing is invalidated."""
    mw, client = site
    note_page(client, "using", "one")
    clock.advance(1)
    for using, expected in ((None, "STALE"), ("other", "HIT")):
        # the request's transaction, and the content's inside it
        with transaction.atomic(), pytest.raises(RuntimeError), transaction.atomic(using="other"):
            wsgi_isr.django.revalidate_tag("note-using", using=using)
            raise RuntimeError("the form failed: the content rolls back")
        clock.advance(1)
        assert cache(client, "/notes/using/?v=1")[0] == expected, using
        assert mw.join(10)
        assert cache(client, "/notes/using/?v=1")[0] == "HIT"
        clock.advance(1)


def test_a_store_down_at_the_commit_never_fails_the_save(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The receiver's invalidation runs after the COMMIT: a store that fails then is
    logged, and neither rolls the save back nor turns the request into a 500."""
    Note.objects.filter(slug="down").delete()
    note = Note.objects.create(slug="down", text="one")
    install(WSGIHandler(), store=f"redis://127.0.0.1:{free_port()}/0", clock=clock)
    try:
        with transaction.atomic():
            note.text = "two"
            note.save()
        assert Note.objects.get(slug="down").text == "two"
        assert any("on_commit" in r.getMessage() for r in caplog.records), caplog.text
        with pytest.raises(StoreError):  # outside a transaction the caller hears of it
            wsgi_isr.django.revalidate_tag("notes")
    finally:
        install(WSGIHandler(), store="memory://", clock=clock)


def test_commands_on_a_store_that_is_down_say_so_and_exit_1(clock: FakeClock) -> None:
    """``isr revalidate`` and ``isr build`` with Redis down: a clear error and exit 1
    (nothing was invalidated: the deploy script runs it again), never a traceback."""
    install(WSGIHandler(), store=f"redis://127.0.0.1:{free_port()}/0", clock=clock)
    try:
        with pytest.raises(CommandError, match="not revalidated, the store failed") as down:
            call_command("isr", "revalidate", "--tag", "articles", stdout=io.StringIO())
        assert down.value.returncode == 1
        err = io.StringIO()
        with pytest.raises(CommandError, match="pages failed") as failed:
            call_command("isr", "build", stdout=io.StringIO(), stderr=err)
        assert failed.value.returncode == 1
        assert "FAILED /listing/: the store" in err.getvalue()
    finally:
        install(WSGIHandler(), store="memory://", clock=clock)


# -- management commands -----------------------------------------------------------------


def test_static_paths_cover_function_and_class_views() -> None:
    assert set(static_paths()) == {
        "/",
        "/articles/a/",
        "/articles/b/",
        "/docs/1/",
        "/docs/2/",
        "/listing/",
    }


def test_static_paths_reverse_every_pattern_and_language() -> None:
    """A view at several URLs (one name given twice), unnamed views in a namespaced
    include, and i18n_patterns: reverse() by name or view found one URL of each and
    none of the unnamed ones (an include's static_params aborted the build)."""
    languages = [("en", "English"), ("fr", "French"), ("de", "German")]
    with override_settings(
        ROOT_URLCONF="django_project.urls_many", LANGUAGES=languages, LANGUAGE_CODE="en"
    ):
        paths = static_paths()
    assert sorted(paths) == sorted(
        [
            "/", "/index.html", "/start/", "/welcome/",
            "/blog/", "/blog/a/a/", "/blog/a/b/",
            "/docs/1/", "/docs/2/", "/docs-again/1/", "/docs-again/2/",
            "/guide/", "/fr/guide/", "/de/guide/",
        ]
    )  # fmt: skip


def test_build_pre_renders_every_static_page(site: Any) -> None:
    mw, client = site
    out, err = io.StringIO(), io.StringIO()
    call_command("isr", "build", "--host", "example.com", stdout=out, stderr=err)
    assert "6 pages as http://example.com" in out.getvalue()
    assert "6 built, 0 skipped (did not opt in), 0 failed" in out.getvalue()
    assert "6/6" in err.getvalue()  # the progress bar
    views.calls.clear()
    assert cache(client, "/articles/b/", headers={"Host": "example.com"})[0] == "HIT"
    assert cache(client, "/listing/", headers={"Host": "example.com"})[0] == "HIT"
    assert views.calls == []


def test_build_takes_the_domain_of_a_leading_dot_allowed_host(site: Any) -> None:
    """``ALLOWED_HOSTS = [".example.com"]``, common in production: the build renders as
    example.com (which Django allows), not as localhost, which Django answers 400 to —
    and a build whose every page is a 400 exits 1, never "0 failed"."""
    mw, client = site
    with override_settings(ALLOWED_HOSTS=[".example.com"]):
        out = io.StringIO()
        call_command("isr", "build", stdout=out, stderr=io.StringIO())
        assert "6 pages as http://example.com" in out.getvalue()
        assert "6 built, 0 skipped (did not opt in), 0 failed" in out.getvalue()
        err = io.StringIO()
        with pytest.raises(CommandError) as failed:
            call_command("isr", "build", "--host", "localhost", stdout=out, stderr=err)
        assert failed.value.returncode == 1
        assert "FAILED /listing/: answered 400 Bad Request" in err.getvalue()


def test_build_exits_1_when_a_page_fails(site: Any) -> None:
    with (
        override_settings(ROOT_URLCONF="django_project.urls_failing"),
        pytest.raises(CommandError) as failed,
    ):
        call_command("isr", "build", stdout=io.StringIO(), stderr=io.StringIO())
    assert failed.value.returncode == 1


def test_revalidate_and_status_commands(site: Any, clock: FakeClock) -> None:
    mw, client = site
    for path in ("/articles/a/", "/docs/1/", "/docs/2/"):
        client.get(path)
    clock.advance(1)
    call_command("isr", "revalidate", "--tag", "article-a", stdout=io.StringIO())
    assert cache(client, "/articles/a/")[0] == "STALE"
    call_command("isr", "revalidate", "--path", "/docs", "--layout", "--hard", stdout=io.StringIO())
    assert cache(client, "/docs/2/")[0] == "MISS"
    with pytest.raises(CommandError, match="at least one"):
        call_command("isr", "revalidate", stdout=io.StringIO())
    out = io.StringIO()
    call_command("isr", "status", stdout=out)
    assert re.search(r"store: +memory", out.getvalue()) and "entries:" in out.getvalue()


def test_manage_py_isr_revalidate_purges_the_cdn_before_it_exits() -> None:
    """``manage.py isr revalidate --tag café`` in its own process: the tag is the one
    the page carries (its percent-encoded form), and the purge of the CDN in front is
    sent before the command's process exits."""
    with Recorder() as varnish:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "django_project.settings",
            "PYTHONPATH": os.path.dirname(__file__),
            "ISR_TEST_PURGE": f"varnish://127.0.0.1:{varnish.port}",
        }
        done = subprocess.run(
            [sys.executable, "-m", "django", "isr", "revalidate", "--tag", "article-café"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        sent = [c.headers.get("xkey-softpurge") for c in varnish.calls]
    assert sent == [edge_key(tag_text("article-café"))], sent


# -- Django behaviour behind the cache ---------------------------------------------------


def csrf_token(html: str) -> str:
    found = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
    assert found is not None, html
    return found.group(1)


def test_csrf_form_gives_every_visitor_their_own_token(site: Any) -> None:
    mw, client = site
    first, second = client.get("/contact/"), client.get("/contact/")
    for r in (first, second):
        assert r.status_code == 200 and r.headers.get("X-ISR-Cache") != "HIT"
        assert "csrftoken=" in r.headers["Set-Cookie"]
    assert first.headers["Set-Cookie"] != second.headers["Set-Cookie"]
    assert csrf_token(first.get_data(as_text=True)) != csrf_token(second.get_data(as_text=True))
    # and the form works: the visitor's own cookie and token pass Django's check
    visitor = Client(mw)
    token = csrf_token(visitor.get("/contact/").get_data(as_text=True))
    ok = visitor.post("/contact/", data={"csrfmiddlewaretoken": token, "name": "Ada"})
    assert (ok.status_code, ok.get_data(as_text=True)) == (200, "thanks Ada")
    forged = Client(mw).post("/contact/", data={"csrfmiddlewaretoken": token, "name": "Eve"})
    assert forged.status_code == 403


def test_logged_in_visitors_bypass_with_sessionid(site: Any) -> None:
    mw, client = site
    assert "user=AnonymousUser" in cache(client, "/")[1]
    alice = Client(mw)
    token = csrf_token(alice.get("/login/").get_data(as_text=True))
    login = alice.post(
        "/login/",
        data={"csrfmiddlewaretoken": token, "username": "alice", "password": "wonderland-42"},
    )
    assert login.status_code == 302
    r = alice.get("/")
    assert r.headers["X-ISR-Cache"] == "BYPASS" and "user=alice" in r.get_data(as_text=True)
    assert alice.get("/account/").get_data(as_text=True) == "account of alice"
    state, body = cache(client, "/")
    assert state == "HIT" and "user=AnonymousUser" in body  # alice's page was never stored
    anonymous = client.get("/account/")
    assert anonymous.status_code == 302 and anonymous.headers["Location"].startswith("/login/")


def test_conditional_get_middleware(site: Any) -> None:
    mw, client = site
    first = client.get("/articles/b/", headers={"If-None-Match": "*"})
    assert first.status_code in (200, 304)
    full = client.get("/articles/b/")  # a conditional first request never stores a 304
    assert full.status_code == 200 and full.get_data(as_text=True).startswith("article b")
    etag = full.headers["ETag"]
    again = client.get("/articles/b/", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.get_data() == b""


@override_settings(ROOT_URLCONF="django_project.urls_unshared")
def test_a_view_marked_private_stays_private_on_every_answer_and_its_304(site: Any) -> None:
    """``@isr_page`` + ``@cache_control(private=True)``: refused, then hit-for-pass. The
    304 ``ConditionalGetMiddleware`` makes keeps ``Cache-Control`` but drops
    ``X-ISR-Revalidate``: the middleware remembers the page asked, and the 304 leaves as
    the 200 did."""
    _, client = site
    first, full = client.get("/mine/"), client.get("/mine/")
    assert (first.headers["X-ISR-Cache"], full.headers["X-ISR-Cache"]) == ("MISS", "BYPASS")
    cond = client.get("/mine/", headers={"If-None-Match": full.headers["ETag"]})
    assert cond.status_code == 304
    expected = "private, no-cache"
    assert [r.headers.get("Cache-Control") for r in (first, full, cond)] == [expected] * 3


@pytest.mark.parametrize("how", ["too-large", "write-fails"])
@override_settings(ROOT_URLCONF="django_project.urls_unshared")
def test_a_refused_gzip_page_rendered_for_the_visitor_leaves_private(
    monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """``@gzip_page`` varies on ``Accept-Encoding``: not stored (too large, the store
    full), the page is rendered again for the visitor's own request, whose
    ``X-Forwarded-Host`` a ``ProxyFix`` inside would trust. That answer leaves private."""
    from wsgi_isr.errors import StoreError

    mw = install(
        WSGIHandler(), store="memory://", max_entry_bytes=1000 if how == "too-large" else 5_000_000
    )
    if how == "write-fails":

        def full(*args: Any, **kwargs: Any) -> None:
            raise StoreError("OOM command not allowed when used memory > 'maxmemory'")

        monkeypatch.setattr(mw.store, "put", full)
    r = Client(mw, use_cookies=False).get("/big/", headers={"Accept-Encoding": "gzip"})
    assert (r.status_code, r.headers["X-ISR-Cache"], r.headers["Vary"]) == (
        200,
        "MISS",
        "Accept-Encoding",
    )
    assert r.headers["Content-Encoding"] == "gzip"
    assert r.headers["Cache-Control"] == "private, no-cache", r.headers
    mw.join(5)


def test_common_middleware_append_slash_redirects(site: Any) -> None:
    mw, client = site
    for _ in range(2):  # the redirect is never cached as a page
        r = client.get("/listing")
        assert r.status_code == 301 and r.headers["Location"] == "/listing/"
    assert cache(client, "/listing/")[0] == "MISS"


def test_cache_control_s_maxage_opts_in(site: Any, clock: FakeClock) -> None:
    mw, client = site
    assert cache(client, "/cdn/")[0] == "MISS"
    assert cache(client, "/cdn/")[0] == "HIT"
    clock.advance(31)
    assert cache(client, "/cdn/")[0] == "STALE"  # stale-while-revalidate=60
    assert cache(client, "/plain/")[0] != "HIT" and cache(client, "/plain/")[0] != "HIT"


def test_without_bypass_cookies_a_page_that_varies_on_cookie_is_rendered_for_the_signed_in(
    clock: FakeClock,
) -> None:
    """The page reads request.user, so Django says ``Vary: Cookie``: the stored copy
    (rendered without cookies) is only for visitors without them."""
    mw = install(WSGIHandler(), store="memory://", clock=clock, bypass_cookies=())
    client = Client(mw, use_cookies=False)
    cache(client, "/")
    alice = Client(mw)
    token = csrf_token(alice.get("/login/").get_data(as_text=True))
    alice.post(
        "/login/",
        data={"csrfmiddlewaretoken": token, "username": "alice", "password": "wonderland-42"},
    )
    r = alice.get("/")
    assert r.headers["X-ISR-Cache"] == "MISS" and "user=alice" in r.get_data(as_text=True)
    assert r.headers["Cache-Control"].startswith("private")
    anonymous = client.get("/")
    assert anonymous.headers["X-ISR-Cache"] == "HIT"
    assert "user=AnonymousUser" in anonymous.get_data(as_text=True)
    mw.join(10)
