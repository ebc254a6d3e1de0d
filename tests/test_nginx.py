"""The shipped nginx config (``wsgi_isr/contrib/nginx.conf``), run by a real nginx in
front of ``gunicorn -k gevent -w 2`` with ``cdn_max_age``, as the README tells an nginx
operator to run it (nginx cannot be purged by tag).

Proves: pages are cached by nginx; a forged ``Host`` never fills the real host's copy
(nginx's default key leaves the Host out); cookies and credentials pass to the
application and their answers are never stored; an invalidated page leaves nginx
within twice ``cdn_max_age`` even after a pause (a year-long stale window would hand
the first visitor after it the old page).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from servers import Instance, free_port, logs_on_failure, start_gunicorn, start_shipped_nginx

pytestmark = pytest.mark.server

SECRET = "nginx-secret-0123456789abcdef0123456789abcdef"
AUTH = {"Authorization": f"Bearer {SECRET}"}
CAP = 2  # cdn_max_age, seconds


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Instance, Instance]]:
    """(edge, origin): the shipped nginx config in front of gunicorn."""
    root = tmp_path_factory.mktemp("isr-nginx")
    (root / "store").mkdir()
    origin = Instance(free_port(), root, root / "gunicorn.log", name="origin")
    env = {
        "ISR_STORE": f"file://{root / 'store'}",
        "ISR_SECRET": SECRET,
        "ISR_BYPASS_TOKEN": "preview-token-0123456789",
        "ISR_CDN_MAX_AGE": str(CAP),
    }
    with (
        start_gunicorn(origin, env=env, app="tests.edge_app:app"),
        start_shipped_nginx(origin.port, root / "nginx") as port,
    ):
        yield Instance(port, root, root / "nginx" / "error.log", name="nginx"), origin


@pytest.fixture(autouse=True)
def _log_on_failure(
    request: pytest.FixtureRequest,
    stack: tuple[Instance, Instance],
    capsys: pytest.CaptureFixture[str],
) -> Iterator[None]:
    with logs_on_failure(request, capsys, *stack):
        yield


def test_a_forged_host_never_fills_the_real_hosts_copy(stack: tuple[Instance, Instance]) -> None:
    edge, _ = stack
    forged = edge.fetch("/host/forged", headers={"Host": "evil.test"})
    assert (forged.status, forged.headers.get("x-cache")) == (200, "MISS"), forged
    assert forged.body.startswith("host evil.test render ")
    real = edge.fetch("/host/forged", headers={"Host": "site.test"})
    assert real.body.startswith("host site.test render "), real
    again = edge.fetch("/host/forged", headers={"Host": "site.test"})
    assert (again.headers.get("x-cache"), again.body) == ("HIT", real.body), again


def test_cookies_and_credentials_pass_and_are_never_stored(
    stack: tuple[Instance, Instance],
) -> None:
    edge, _ = stack
    for personal in ({"Cookie": "user=alice"}, {"Authorization": "Basic YWxpY2U6eA=="}):
        mine = edge.fetch("/whoami", headers={"Host": "site.test", **personal})
        assert mine.headers.get("x-cache") == "BYPASS", mine
        if "Cookie" in personal:
            assert mine.body.startswith("hello alice render ")
    shared = [edge.fetch("/whoami", headers={"Host": "site.test"}) for _ in range(2)]
    assert [r.body.split(" render ")[0] for r in shared] == ["hello anonymous"] * 2
    assert shared[-1].headers.get("x-cache") == "HIT"


def test_an_invalidated_page_leaves_nginx_within_twice_cdn_max_age(
    stack: tuple[Instance, Instance],
) -> None:
    edge, origin = stack
    host = {"Host": "site.test"}
    old = edge.fetch("/host/invalidated", headers=host)
    hit = edge.fetch("/host/invalidated", headers=host)
    assert (hit.headers.get("x-cache"), hit.body) == ("HIT", old.body), hit
    cc = [d.strip() for d in hit.headers["cache-control"].split(",")]
    assert f"s-maxage={CAP}" in cc and f"stale-while-revalidate={CAP}" in cc, cc
    reply = origin.revalidate({"tag": "host-invalidated", "mode": "hard"}, headers=AUTH)
    assert reply.status == 200, reply
    time.sleep(2 * CAP + 1)  # nobody asks meanwhile: the pause a quiet page sees
    after = edge.fetch("/host/invalidated", headers=host)
    assert after.status == 200 and after.body != old.body, (after.headers, after.body)
