"""The example Django project (``examples/django_site``) end to end, under its own
``gunicorn.conf.py`` (``-k gevent``, two workers, the file store, database created and
seeded by the ``on_starting`` hook): the cache lifecycle, a model saved in the admin
revalidating its pages through ``post_save``, a save from a shell, ``manage.py isr
build``, the CSRF form, signed-in visitors bypassing the cache, and a regeneration that
fails (the database is gone) keeping the good page."""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import urlencode

import pytest
from helpers import metric_values
from servers import REPO, Instance, free_port, poll, start_gunicorn

pytestmark = pytest.mark.server

SITE = REPO / "examples" / "django_site"
SECRET = "d" * 40
ADMIN_PASSWORD = "correct-horse-battery"


@dataclass
class Page:
    status: int
    headers: http.client.HTTPMessage
    body: str

    @property
    def cache(self) -> str | None:
        return self.headers.get("X-ISR-Cache")


@dataclass
class Browser:
    """A visitor with a cookie jar, one connection per request."""

    port: int
    cookies: dict[str, str] = field(default_factory=dict)

    def request(self, method: str, path: str, form: dict[str, str] | None = None) -> Page:
        headers = {"Host": f"127.0.0.1:{self.port}"}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if form is not None:
            body = urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            headers["Referer"] = f"http://127.0.0.1:{self.port}{path}"
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            page = Page(resp.status, resp.headers, resp.read().decode())
        finally:
            conn.close()
        for raw in page.headers.get_all("Set-Cookie") or []:
            for name, morsel in SimpleCookie(raw).items():
                self.cookies[name] = morsel.value
        return page

    def get(self, path: str) -> Page:
        return self.request("GET", path)

    def post(self, path: str, form: dict[str, str]) -> Page:
        return self.request("POST", path, form)


def csrf_token(html: str) -> str:
    found = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
    assert found is not None, html[:500]
    return found.group(1)


@dataclass
class Site:
    gunicorn: Instance
    env: dict[str, str]
    db: Path

    def visitor(self) -> Browser:
        return Browser(self.gunicorn.port)

    def admin(self) -> Browser:
        admin = self.visitor()
        token = csrf_token(admin.get("/admin/login/").body)
        login = admin.post(
            "/admin/login/?next=/admin/",
            {"csrfmiddlewaretoken": token, "username": "admin", "password": ADMIN_PASSWORD},
        )
        assert login.status == 302 and "sessionid" in admin.cookies, login.body[:500]
        return admin

    def manage(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(SITE / "manage.py"), *args],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=60,
        )

    def metric(self, name: str) -> float:
        auth = {"Authorization": f"Bearer {SECRET}"}
        return metric_values(self.gunicorn.fetch("/_isr/metrics", headers=auth).body).get(name, 0)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("django-site")
    (tmp / "metrics").mkdir()
    env = {
        # not the in-process tests' project (test_django_adapter sets it in os.environ)
        "DJANGO_SETTINGS_MODULE": "mysite.settings",
        "DJANGO_SITE_DB": str(tmp / "site.db"),
        "DJANGO_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "ISR_STORE": f"file://{tmp / 'store'}",
        "ISR_SECRET": SECRET,
        "PROMETHEUS_MULTIPROC_DIR": str(tmp / "metrics"),
        "PYTHONPATH": str(REPO / "tests"),  # django_e2e: /health and X-Worker-Pid
    }
    gunicorn = Instance(free_port(), tmp, tmp / "gunicorn.log")
    with start_gunicorn(
        gunicorn,
        env=env,
        workers=2,
        config=SITE / "gunicorn.conf.py",
        app="django_e2e:app",
        ready_timeout=60,
    ):
        yield Site(gunicorn, env, tmp / "site.db")


def test_lifecycle_miss_hit_stale_regenerated(site: Site) -> None:
    visitor = site.visitor()
    first = visitor.get("/clock/")
    assert (first.status, first.cache) == (200, "MISS")
    assert visitor.get("/clock/").body == first.body
    assert site.visitor().get("/clock/").cache == "HIT"
    time.sleep(2.1)  # /clock/ is fresh for 2 s
    stale = site.visitor().get("/clock/")
    assert (stale.cache, stale.body) == ("STALE", first.body)
    fresh = poll(
        lambda: [site.gunicorn.fetch("/clock/")],
        lambda r: r.cache == "HIT" and r.body != first.body,
    )
    assert all(r.status == 200 for r in fresh)


def test_saving_in_the_admin_revalidates_the_article_and_the_list(site: Site) -> None:
    anonymous = site.visitor()
    for path in ("/articles/tags/", "/"):
        anonymous.get(path)
        assert anonymous.get(path).cache == "HIT"
    admin = site.admin()
    change = admin.get("/admin/blog/article/")
    found = re.search(r'href="/admin/blog/article/(\d+)/change/[^"]*">Tags<', change.body)
    assert found is not None, change.body[:2000]
    url = f"/admin/blog/article/{found.group(1)}/change/"
    token = csrf_token(admin.get(url).body)
    saved = admin.post(
        url,
        {
            "csrfmiddlewaretoken": token,
            "slug": "tags",
            "title": "Tags, edited in the admin",
            "body": "The post_save receiver revalidated this page.",
            "_save": "Save",
        },
    )
    assert saved.status == 302, saved.body[:2000]
    for path in ("/articles/tags/", "/"):
        stale = anonymous.get(path)
        assert stale.cache == "STALE" and "edited in the admin" not in stale.body
        poll(
            lambda p=path: [site.gunicorn.fetch(p)],
            lambda r: r.cache == "HIT" and "Tags, edited in the admin" in r.body,
        )


def test_a_save_from_a_shell_and_isr_build(site: Site) -> None:
    built = site.manage("isr", "build", "--host", f"127.0.0.1:{site.gunicorn.port}")
    assert built.returncode == 0, built.stderr
    assert "7 built, 0 skipped (did not opt in), 0 failed" in built.stdout  # 5 articles, 2 pages
    assert "7/7" in built.stderr  # the progress bar
    assert site.visitor().get("/articles/forms/").cache == "HIT"  # pre-built, never visited
    shell = site.manage(
        "shell", "-c", "from blog.models import Article; Article.objects.get(slug='forms').save()"
    )
    assert shell.returncode == 0, shell.stderr
    assert site.visitor().get("/articles/forms/").cache == "STALE"


def test_csrf_form_each_visitor_gets_their_own_token(site: Site) -> None:
    ada, eve = site.visitor(), site.visitor()
    ada_page, eve_page = ada.get("/contact/"), eve.get("/contact/")
    assert ada_page.cache != "HIT" and eve_page.cache != "HIT"
    assert ada.cookies["csrftoken"] != eve.cookies["csrftoken"]
    assert csrf_token(ada_page.body) != csrf_token(eve_page.body)
    sent = ada.post("/contact/", {"csrfmiddlewaretoken": csrf_token(ada_page.body), "name": "Ada"})
    assert sent.status == 200 and "Thanks, Ada!" in sent.body
    stranger = site.visitor().post("/contact/", {"csrfmiddlewaretoken": csrf_token(ada_page.body)})
    assert stranger.status == 403


def test_signed_in_visitors_bypass_the_cache(site: Site) -> None:
    anonymous = site.visitor()
    anonymous.get("/")
    admin = site.admin()
    mine = admin.get("/")
    assert mine.cache == "BYPASS" and "signed in as admin" in mine.body
    theirs = anonymous.get("/")
    assert theirs.cache == "HIT" and "signed in as" not in theirs.body


def test_a_failing_regeneration_keeps_the_page(site: Site) -> None:
    visitor = site.visitor()
    good = visitor.get("/articles/hello-isr/")
    assert visitor.get("/articles/hello-isr/").cache == "HIT"
    failed_before = site.metric('wsgi_isr_regenerations_total{result="failed"}')
    moved = site.db.with_name("site.db.away")
    os.replace(site.db, moved)  # the database is gone: every render is Django's 500 page
    try:
        answer = site.gunicorn.revalidate(
            {"tag": "article-hello-isr"}, headers={"Authorization": f"Bearer {SECRET}"}
        )
        assert answer.status == 200 and json.loads(answer.body)["revalidated"]
        replies = poll(  # until a regeneration has failed, or the page is lost
            lambda: [site.gunicorn.fetch("/articles/hello-isr/")],
            lambda r: (
                r.cache != "STALE"
                or site.metric('wsgi_isr_regenerations_total{result="failed"}') > failed_before
            ),
        )
        replies += site.gunicorn.fetch_many("/articles/hello-isr/", 4)
        assert {(r.status, r.cache, r.body) for r in replies} == {(200, "STALE", good.body)}
    finally:
        os.replace(moved, site.db)
