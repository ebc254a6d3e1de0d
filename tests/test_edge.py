"""A real edge: ``gunicorn -k gevent -w 2`` behind a real ``varnishd`` running the shipped
VCL (``wsgi_isr/contrib/varnish.vcl``, vmod xkey from Debian's ``varnish-modules``).

Varnish is started by the test on a free loopback port, with ``-n`` in a temporary
directory, and stopped by PID. The application purges two targets: the Varnish, and
a recorder standing in for a second Varnish (to count the purges the workers send).
Proves: an on-demand page is cached at the edge; tag revalidations (soft and hard)
and a layout revalidation are visible through the edge within 2 s; personal and
preview answers are never stored at the edge; one purge per invalidation.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from purge_api import Recorder
from servers import REPO, Instance, free_port, logs_on_failure, poll, start_gunicorn, stop_process

from wsgi_isr.keys import layout_tag
from wsgi_isr.purge import edge_key

pytestmark = pytest.mark.server

SECRET = "edge-secret-0123456789abcdef0123456789abcdef"
BYPASS = "preview-token-0123456789"
AUTH = {"Authorization": f"Bearer {SECRET}"}
VCL = REPO / "wsgi_isr" / "contrib" / "varnish.vcl"
XKEY_VMOD = "libvmod_xkey.so"
#: The issue's promise: an invalidation is visible through the edge within this.
VISIBLE_WITHIN = 2.0


def _varnishd() -> str:
    binary = shutil.which("varnishd") or (
        "/usr/sbin/varnishd" if os.access("/usr/sbin/varnishd", os.X_OK) else None
    )
    vmods = [*Path("/usr/lib").glob(f"*/varnish/vmods/{XKEY_VMOD}")]
    vmods += Path("/usr/lib/varnish/vmods").glob(XKEY_VMOD)
    problem = None
    if binary is None:
        problem = "varnishd not found (Debian: apt-get install varnish varnish-modules)"
    elif not vmods:
        problem = "vmod xkey not found (Debian: apt-get install varnish-modules)"
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(problem, pytrace=False)
        pytest.skip(problem)
    assert binary is not None
    return binary


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def start_varnish(workdir: Path, backend_port: int) -> Iterator[Instance]:
    """``varnishd`` with the shipped VCL (its backend pointed at ``backend_port``)."""
    binary = _varnishd()
    vcl = workdir / "default.vcl"
    text = VCL.read_text()
    assert '.port = "8000";' in text
    vcl.write_text(text.replace('.port = "8000";', f'.port = "{backend_port}";'))
    log_path = workdir / "varnishd.log"
    for _ in range(3):  # the free port may be taken before varnishd binds it
        port = free_port()
        edge = Instance(port, workdir, log_path, name="varnish")
        cmd = [
            binary, "-F",
            "-j", "none",  # no privilege separation: the test's own user owns -n
            "-n", str(workdir / "varnish"),
            "-a", f"127.0.0.1:{port}",
            "-T", "none",
            "-f", str(vcl),
            "-s", "malloc,32m",
            "-p", "thread_pools=1", "-p", "thread_pool_min=5", "-p", "thread_pool_max=100",
        ]  # fmt: skip
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(
                cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        edge.proc = proc
        for _ in range(200):
            if proc.poll() is not None or _answers(port):
                break
            proc_wait(proc, 0.05)
        if proc.poll() is None and _answers(port):
            break
        stop_process(proc)
    else:
        pytest.fail(f"varnishd did not start:\n{log_path.read_text()}", pytrace=False)
    try:
        yield edge
    finally:
        stop_process(proc)


def proc_wait(proc: subprocess.Popen[bytes], seconds: float) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(seconds)


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Instance, Instance, Recorder]]:
    """(edge, origin, recorder): Varnish in front of gunicorn, and the second purge target."""
    root = tmp_path_factory.mktemp("isr-edge")
    (root / "store").mkdir()
    origin = Instance(free_port(), root, root / "gunicorn.log", name="origin")
    with Recorder() as recorder, start_varnish(root, origin.port) as edge:
        env = {
            "ISR_STORE": f"file://{root / 'store'}",
            "ISR_SECRET": SECRET,
            "ISR_BYPASS_TOKEN": BYPASS,
            "ISR_PURGE": f"varnish://127.0.0.1:{edge.port} varnish://127.0.0.1:{recorder.port}",
        }
        with start_gunicorn(origin, env=env, app="tests.edge_app:app"):
            yield edge, origin, recorder


@pytest.fixture(autouse=True)
def _log_on_failure(
    request: pytest.FixtureRequest,
    stack: tuple[Instance, Instance, Recorder],
    capsys: pytest.CaptureFixture[str],
) -> Iterator[None]:
    with logs_on_failure(request, capsys, stack[0], stack[1]):
        yield


def cached_at_edge(edge: Instance, path: str) -> str:
    """Fetch ``path`` through the edge until the edge serves it from its cache; its body."""
    first = edge.fetch(path)
    assert first.status == 200, first
    hit = edge.fetch(path)
    assert (hit.status, hit.headers.get("x-cache"), hit.body) == (200, "HIT", first.body), hit
    return hit.body


def revalidate(origin: Instance, recorder: Recorder, payload: dict[str, object]) -> None:
    """Revalidate at the origin and wait until its purge reached the recorder."""
    before = len(recorder.calls)
    reply = origin.revalidate(payload, headers=AUTH)
    assert reply.status == 200, reply
    assert len(recorder.wait_for(before + 1)) > before, "no purge was sent"


def test_an_on_demand_page_is_cached_at_the_edge(
    stack: tuple[Instance, Instance, Recorder],
) -> None:
    edge, origin, _ = stack
    first = edge.fetch("/docs/cached")
    assert (first.status, first.headers.get("x-cache")) == (200, "MISS")
    replies = [edge.fetch("/docs/cached") for _ in range(3)]
    assert [(r.headers.get("x-cache"), r.body) for r in replies] == [("HIT", first.body)] * 3
    # the edge reads the keys and keeps them to itself; no internal header leaves
    direct = origin.fetch("/docs/cached")
    assert edge_key("doc-cached") in direct.headers["xkey"].split(" ")
    for r in (first, *replies):
        assert "xkey" not in r.headers
        assert [h for h in r.headers if h.startswith("x-isr-") and h != "x-isr-cache"] == []
        # the edge keeps it a year, the browser behind it revalidates every visit
        cc = [d.strip() for d in r.headers["cache-control"].split(",")]
        assert "s-maxage=0" not in cc and cc[-1] == "max-age=0", r.headers


@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_a_tag_revalidation_is_visible_through_the_edge(
    stack: tuple[Instance, Instance, Recorder], mode: str
) -> None:
    edge, origin, recorder = stack
    path, tag = f"/docs/tag-{mode}", f"doc-tag-{mode}"
    old = cached_at_edge(edge, path)
    revalidate(origin, recorder, {"tag": tag, "mode": mode})
    seen = poll(lambda: [edge.fetch(path)], lambda r: r.body != old, VISIBLE_WITHIN, interval=0.05)
    new = seen[-1].body
    assert new.startswith(f"doc tag-{mode} render ")
    # ... and the edge caches the new page again
    poll(
        lambda: [edge.fetch(path)],
        lambda r: (r.headers.get("x-cache"), r.body) == ("HIT", new),
        VISIBLE_WITHIN,
        interval=0.05,
    )
    header = "xkey-softpurge" if mode == "soft" else "xkey-purge"
    assert recorder.calls[-1].headers[header] == edge_key(tag)


def test_a_layout_revalidation_purges_the_section_at_the_edge(
    stack: tuple[Instance, Instance, Recorder],
) -> None:
    edge, origin, recorder = stack
    paths = ["/docs/layout-a", "/docs/layout-b"]
    old = {p: cached_at_edge(edge, p) for p in paths}
    outside = cached_at_edge(edge, "/preview")
    revalidate(origin, recorder, {"path": "/docs", "type": "layout", "mode": "hard"})
    for p in paths:
        poll(lambda p=p: [edge.fetch(p)], lambda r, p=p: r.body != old[p], VISIBLE_WITHIN, 0.05)
    # one key for the whole section, not URL by URL
    assert recorder.calls[-1].headers["xkey-purge"] == edge_key(layout_tag("/docs"))
    after = edge.fetch("/preview")
    assert (after.headers.get("x-cache"), after.body) == ("HIT", outside)


def test_purge_is_refused_from_addresses_outside_the_acl(
    stack: tuple[Instance, Instance, Recorder],
) -> None:
    edge, _, _ = stack
    body = cached_at_edge(edge, "/docs/acl")
    conn = http.client.HTTPConnection(
        "127.0.0.1", edge.port, timeout=10, source_address=("127.0.0.2", 0)
    )
    try:
        conn.request("PURGE", "/", headers={"xkey-purge": edge_key("doc-acl")})
        refused = conn.getresponse()
        refused.read()
    finally:
        conn.close()
    assert refused.status == 403
    after = edge.fetch("/docs/acl")
    assert (after.headers.get("x-cache"), after.body) == ("HIT", body)


def test_the_ttl_counts_the_remaining_s_maxage_from_now(
    stack: tuple[Instance, Instance, Recorder],
) -> None:
    # wsgi_isr's s-maxage is what remains; Varnish alone would subtract Age once more
    # (29 - 31 < 0: never cached)
    edge, _, _ = stack
    first = edge.fetch("/aged/a")
    assert first.headers["cache-control"] == "public, s-maxage=29"
    second = edge.fetch("/aged/a")
    assert (second.headers.get("x-cache"), second.body) == ("HIT", first.body)


def test_personal_answers_are_never_stored_at_the_edge(
    stack: tuple[Instance, Instance, Recorder],
) -> None:
    edge, _, _ = stack
    alice = edge.fetch("/whoami", headers={"Cookie": "user=alice"})
    assert alice.body.startswith("hello alice"), alice
    assert alice.headers.get("x-cache") == "MISS"
    for _ in range(3):
        anonymous = edge.fetch("/whoami")
        assert "alice" not in anonymous.body, anonymous
    assert anonymous.headers.get("x-cache") == "HIT"  # the shared page is cached...
    bob = edge.fetch("/whoami", headers={"Cookie": "user=bob"})
    assert bob.headers.get("x-cache") == "MISS"  # ...but never served to a cookie
    assert "alice" not in bob.body


@pytest.mark.parametrize(
    "preview",
    [
        pytest.param({"X-ISR-Bypass": BYPASS}, id="header"),
        pytest.param({"Cookie": f"__isr_bypass={BYPASS}"}, id="cookie"),
    ],
)
def test_preview_answers_are_never_stored_at_the_edge(
    stack: tuple[Instance, Instance, Recorder], preview: dict[str, str]
) -> None:
    edge, _, _ = stack
    draft = edge.fetch("/preview", headers=preview)
    assert draft.body.startswith("draft"), draft
    published = cached_at_edge(edge, "/preview")
    assert published.startswith("published")
    # with the published page at the edge, a preview still reaches the application
    again = edge.fetch("/preview", headers=preview)
    assert again.body.startswith("draft") and again.body != draft.body, again
    assert again.headers.get("x-cache") == "MISS"
    assert edge.fetch("/preview").body == published


def test_one_purge_per_invalidation_across_workers(
    stack: tuple[Instance, Instance, Recorder],
) -> None:
    _, origin, recorder = stack
    start = len(recorder.calls)
    tags = [f"count-{i}" for i in range(4)]
    for tag in tags:
        revalidate(origin, recorder, {"tag": tag})
    # a further revalidation's purge arrives after any duplicate of the ones above would
    revalidate(origin, recorder, {"tag": "count-last", "mode": "hard"})
    calls = recorder.calls[start:]
    assert [c.headers.get("xkey-softpurge") for c in calls[:-1]] == [edge_key(t) for t in tags]
    assert [c.headers.get("xkey-purge") for c in calls[-1:]] == [edge_key("count-last")]
    assert len(calls) == 5
