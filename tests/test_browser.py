"""What a real browser keeps: a headless Chromium visits cached pages served by gunicorn,
the CMS publishes an edit (``revalidate_tag``), and the browser visits them again.

``s-maxage`` speaks to shared caches only; a browser told nothing about how long it may
keep an answer finds its own freshness: a tenth of the time since ``Last-Modified``, and
a ``301`` forever. Such a visitor would keep seeing the old post (for weeks, for a post
edited months ago) and be sent along the old redirect forever, whatever was invalidated.
So every cached answer whose application set no ``max-age`` tells browsers
``max-age=0``: they revalidate on every visit, with the ``ETag``, and an unchanged page
costs them a ``304``.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import Instance, free_port, require_binary, start_gunicorn


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Instance]:
    content = tmp_path / "site"
    content.mkdir()
    (content / "post.txt").write_text("A")
    instance = Instance(free_port(), tmp_path, tmp_path / "gunicorn.log")
    env = {"BROWSER_DIR": str(content), "ISR_STORE": f"file://{tmp_path / 'isr'}"}
    with start_gunicorn(instance, env=env, workers=1, app="tests.browser_app:app"):
        yield instance


def browse(chromium: str, url: str, profile: Path) -> str:
    """Load ``url`` in a fresh headless Chromium profile; what its probe script wrote."""
    cmd = [
        chromium,
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=15000",
        "--dump-dom",
        url,
    ]
    done = subprocess.run(cmd, capture_output=True, timeout=90, check=False)
    found = re.search(r"OUT ([^<]*)", done.stdout.decode(errors="replace"))
    assert found is not None, (done.returncode, done.stdout[-2000:], done.stderr[-4000:])
    return found.group(1)


def test_a_browser_sees_an_invalidated_page_and_redirect_at_its_next_visit(
    site: Instance, tmp_path: Path
) -> None:
    chromium = require_binary("chromium", "/usr/bin/chromium", "/usr/bin/chromium-browser")
    seen = browse(chromium, f"http://127.0.0.1:{site.port}/probe", tmp_path / "profile")
    # before the fix: post=A,A,A moved=/to/A,/to/A (kept by heuristic freshness; the
    # second and third visits never reached the server)
    assert seen == "post=A,B,B moved=/to/A,/to/B", (seen, site.log())
    requests = (tmp_path / "site" / "requests.log").read_text().split("\n")
    posts = [line.split() for line in requests if line.startswith("/post ")]
    assert len(posts) == 3, requests  # every visit asked the server
    assert posts[0][1:] == ["-", "200"]  # the first visit had nothing to revalidate
    # the last visit found its copy current: revalidated with the ETag, answered 304
    assert posts[2][1] != "-" and posts[2][2] == "304", requests
