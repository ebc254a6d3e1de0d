"""Caches in front (DESIGN §11): tag headers out, purges on every invalidation.

In process, with werkzeug's test client; the Fastly and Cloudflare APIs are real
HTTP servers on loopback that check every call against the vendors' documents
(see ``purge_api.py``). The real Varnish in front of gunicorn is ``test_edge.py``.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Sequence
from typing import Any

import pytest
from flask import Flask
from helpers import CountingApp, FakeClock, make
from purge_api import CloudflareAPI, FastlyAPI, Recorder

from wsgi_isr import MemoryStore, StoreError
from wsgi_isr.flask import ISR
from wsgi_isr.keys import layout_tag, page_tag
from wsgi_isr.policy import MAX_TAG_LENGTH, MAX_TAGS
from wsgi_isr.purge import (
    CloudflarePurger,
    FastlyPurger,
    PurgeError,
    PurgeQueue,
    Purger,
    VarnishPurger,
    edge_key,
    open_purger,
)

SECRET = "a-long-enough-secret-for-the-tests-0123"
TOKEN = "tok-" + "s3cr3t" * 4


class Recording(Purger):
    """A custom target: records what it is asked to purge; may fail or block."""

    header = "X-Test-Keys"
    separator = ","

    def __init__(self, fail: Sequence[PurgeError] = (), gate: threading.Event | None = None):
        self.description = "recording://test"
        self.calls: list[tuple[list[str], bool]] = []
        self.fail = list(fail)
        self.gate = gate

    def purge(self, keys: Sequence[str], *, soft: bool) -> None:
        if self.gate is not None:
            self.gate.wait(30)
        self.calls.append((list(keys), soft))
        if self.fail:
            raise self.fail.pop(0)


def keys(headers: Any, name: str, sep: str = " ") -> list[str]:
    return headers[name].split(sep)


def tagged(tags: str = "post-1, posts") -> CountingApp:
    return CountingApp(default=[("X-ISR-Revalidate", "false"), ("X-ISR-Tags", tags)])


# -- tags out ---------------------------------------------------------------------------


def test_every_cached_answer_carries_its_tags_in_each_targets_header() -> None:
    purge = [
        VarnishPurger("varnish://127.0.0.1:6081"),
        FastlyPurger("SVC", token=TOKEN),
        CloudflarePurger("ZONE", token=TOKEN),
    ]
    mw, client, clock, app = make(tagged(), purge=purge)
    miss = client.get("/docs/intro")
    hit = client.get("/docs/intro")
    expected = [
        edge_key(t)
        for t in ("post-1", "posts", page_tag("/docs/intro"), layout_tag("/"), layout_tag("/docs"))
    ]
    for r in (miss, hit):
        assert set(expected) <= set(keys(r.headers, "xkey"))
        assert keys(r.headers, "xkey") == keys(r.headers, "Surrogate-Key")
        assert keys(r.headers, "xkey") == keys(r.headers, "Cache-Tag", ",")
        assert not [
            k for k, _ in r.headers.items() if k.lower().startswith("x-isr-") and k != "X-ISR-Cache"
        ]
    assert (miss.headers["X-ISR-Cache"], hit.headers["X-ISR-Cache"]) == ("MISS", "HIT")
    # a conditional request answered 304 carries them too (a CDN revalidating its copy)
    etag = hit.headers["ETag"]
    assert client.get("/docs/intro", headers={"If-None-Match": etag}).status_code == 304


def test_app_surrogate_headers_are_replaced_by_edge_keys() -> None:
    app = CountingApp(
        default=[("X-ISR-Revalidate", "60"), ("Surrogate-Key", "Raw/Key other"), ("xkey", "x y")]
    )
    mw, client, clock, _ = make(app, purge=[FastlyPurger("SVC", token=TOKEN)])
    r = client.get("/p")
    assert r.headers.getlist("Surrogate-Key") == [r.headers["Surrogate-Key"]]
    got = keys(r.headers, "Surrogate-Key")
    assert edge_key("Raw/Key") in got and edge_key("other") in got
    assert "Raw/Key" not in got
    # xkey is no header of this target: the app's own passes through untouched
    assert r.headers["xkey"] == "x y"


def test_personal_and_bypassed_answers_carry_no_tags() -> None:
    mw, client, clock, app = make(
        tagged(), purge=[VarnishPurger("varnish://127.0.0.1:6081")], bypass_token="preview-tok"
    )
    personal = client.get("/p", headers={"Cookie": "session=alice"})
    preview = client.get("/q", headers={"X-ISR-Bypass": "preview-tok"})
    for r in (personal, preview):
        assert "xkey" not in r.headers, r.headers
    assert "xkey" in client.get("/p").headers


def test_tag_headers_stay_within_every_vendors_limit() -> None:
    many = ", ".join(f"t{i}-" + "x" * (MAX_TAG_LENGTH - 8) for i in range(MAX_TAGS))
    targets = [
        VarnishPurger("varnish://127.0.0.1:6081"),
        FastlyPurger("SVC", token=TOKEN),
        CloudflarePurger("ZONE", token=TOKEN),
    ]
    mw, client, clock, app = make(tagged(many), purge=targets)
    deep = "/" + "/".join(f"segment-{i}" for i in range(40))
    r = client.get(deep)
    n = MAX_TAGS + 2 + 16  # the tags, the page tag, "/" and 16 layout levels
    for target in targets:
        assert target.header is not None
        value = r.headers[target.header]
        assert len(value.encode()) <= target.max_header_bytes
        assert len(set(value.split(target.separator))) == n
    assert len(r.headers["xkey"]) <= 8000  # Varnish's default http_resp_hdr_len is 8 KiB
    assert len(r.headers["Cache-Tag"]) <= 16 * 1024  # Cloudflare: 16 KB after the name


def test_edge_keys_are_cdn_safe() -> None:
    for tag in ("posts", page_tag("/blog/h%C3%A9llo"), layout_tag("/"), "A,B c"):
        key = edge_key(tag)
        assert len(key) == 16 and key == key.lower() and key.isalnum()
    assert edge_key("posts") == edge_key("posts") != edge_key("Posts")


def s_maxage(cache_control: str, directive: str = "s-maxage") -> int:
    match = re.search(rf"\b{directive}=(\d+)", cache_control)
    assert match is not None, cache_control
    return int(match.group(1))


@pytest.mark.parametrize(
    ("revalidate", "cap"),
    [
        pytest.param("false", 300, id="forever-capped"),
        pytest.param("10", 300, id="shorter-kept"),
        pytest.param("false", 0, id="zero"),
    ],
)
def test_cdn_max_age_caps_s_maxage_and_the_stale_window(revalidate: str, cap: int) -> None:
    app = CountingApp(default=[("X-ISR-Revalidate", revalidate)])
    mw, client, clock, _ = make(app, cdn_max_age=cap)
    plain_mw, plain, _, _ = make(app, clock=clock)
    for _ in range(2):  # miss, then hit
        capped = client.get("/p").headers
        natural = s_maxage(plain.get("/p").headers["Cache-Control"])
        assert s_maxage(capped["Cache-Control"]) == min(natural, cap), capped["Cache-Control"]
        # and the stale window: else the first visitor after a pause gets a year-old copy
        swr = s_maxage(plain.get("/p").headers["Cache-Control"], "stale-while-revalidate")
        assert s_maxage(capped["Cache-Control"], "stale-while-revalidate") == min(swr, cap)
        assert "xkey" not in capped  # no targets: no tag headers
    assert natural > 300 if revalidate == "false" else natural <= 10


def test_without_cdn_max_age_forever_is_a_year() -> None:
    mw, client, clock, app = make(CountingApp(default=[("X-ISR-Revalidate", "false")]))
    assert "s-maxage=31536000" in client.get("/p").headers["Cache-Control"]


# -- purges on invalidation -------------------------------------------------------------


def test_layout_revalidation_purges_the_section_by_one_key() -> None:
    target = Recording()
    mw, client, clock, app = make(tagged(), purge=[target])
    a, b, other = (client.get(p).headers for p in ("/docs/a", "/docs/b/c", "/other"))
    clock.advance(1)
    mw.revalidate_path("/docs", "layout")
    assert mw.join(10)
    assert target.calls == [([edge_key(layout_tag("/docs"))], True)]
    key = edge_key(layout_tag("/docs"))
    assert key in keys(a, "X-Test-Keys", ",") and key in keys(b, "X-Test-Keys", ",")
    assert key not in keys(other, "X-Test-Keys", ",")


@pytest.mark.parametrize(("mode", "soft"), [("soft", True), ("hard", False)])
def test_mode_reaches_the_target(mode: Any, soft: bool) -> None:
    target = Recording()
    mw, client, clock, app = make(tagged(), purge=[target])
    mw.revalidate_tag("posts", mode=mode)
    mw.revalidate_path("/blog", mode=mode)
    assert mw.join(10)
    sent = [k for call, s in target.calls for k in call if s is soft]
    assert sent == [edge_key("posts"), edge_key(page_tag("/blog"))]


def test_the_caller_does_not_wait_for_the_target() -> None:
    gate = threading.Event()
    target = Recording(gate=gate)
    mw, client, clock, app = make(tagged(), purge=[target])
    client.get("/p")
    clock.advance(1)
    mw.revalidate_tag("posts")  # returns while the target is still blocked
    assert target.calls == []
    assert client.get("/p").headers["X-ISR-Cache"] == "STALE"  # the store has it already
    assert not mw.join(0.05)
    gate.set()
    assert mw.join(10)
    assert target.calls == [([edge_key("posts")], True)]


def test_nothing_is_purged_when_the_store_did_not_record_it() -> None:
    class Broken(MemoryStore):
        def invalidate(self, tags: Any, at: float | None = None, *, hard: bool) -> float:
            raise StoreError("down")

    target = Recording()
    mw, client, clock, app = make(tagged(), purge=[target], store=Broken())
    with pytest.raises(StoreError):
        mw.revalidate_tag("posts")
    assert mw.join(1) and target.calls == []


def test_failures_are_retried_with_backoff_then_counted() -> None:
    target = Recording(fail=[PurgeError("503"), PurgeError("429", retry_after=7.0)])
    waits: list[float] = []
    queue = PurgeQueue([target], retries=3, backoff=0.5, sleep=waits.append)
    mw, client, clock, app = make(tagged(), purge=queue)
    mw.revalidate_tag("posts")
    assert mw.join(10)
    assert len(target.calls) == 3
    assert waits == [0.5, 7.0]  # doubled would be 1.0; the target asked for 7 s
    counts = queue.counts()
    assert counts[("recording://test", "ok")] == 1
    assert counts[("recording://test", "retried")] == 2
    assert counts[("recording://test", "failed")] == 0


def test_a_target_that_keeps_failing_is_logged_once_and_the_origin_still_invalidates(
    caplog: pytest.LogCaptureFixture,
) -> None:
    target = Recording(fail=[PurgeError("down")] * 8)
    waits: list[float] = []
    queue = PurgeQueue([target], retries=1, backoff=1.0, sleep=waits.append)
    mw, client, clock, app = make(tagged(), purge=queue, secret=SECRET)
    client.get("/p")
    clock.advance(1)
    with caplog.at_level(logging.ERROR, logger="wsgi_isr"):
        mw.revalidate_tag("posts")
        assert mw.join(10)
        mw.revalidate_tag("post-1", mode="hard")
        assert mw.join(10)
    assert len(target.calls) == 4 and waits == [1.0, 1.0]
    assert queue.counts()[("recording://test", "failed")] == 2
    errors = [r for r in caplog.records if "purge" in r.getMessage()]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert client.get("/p").headers["X-ISR-Cache"] == "MISS"  # hard-invalidated at the origin
    metrics = client.get("/_isr/metrics", headers={"Authorization": f"Bearer {SECRET}"}).text
    assert 'result="failed",target="recording://test"} 2.0' in metrics
    assert 'result="retried",target="recording://test"} 2.0' in metrics


def test_a_refused_call_is_not_retried() -> None:
    target = Recording(fail=[PurgeError("401", retry=False)])
    queue = PurgeQueue([target], retries=3, sleep=lambda s: None)
    mw, client, clock, app = make(tagged(), purge=queue)
    mw.revalidate_tag("posts")
    assert mw.join(10)
    assert len(target.calls) == 1
    assert queue.counts()[("recording://test", "failed")] == 1


def test_a_crashing_custom_purger_does_not_stop_later_purges() -> None:
    class Crashing(Recording):
        def purge(self, keys: Sequence[str], *, soft: bool) -> None:
            super().purge(keys, soft=soft)
            if len(self.calls) == 1:
                raise RuntimeError("bug")

    target = Crashing()
    mw, client, clock, app = make(tagged(), purge=[target])
    mw.revalidate_tag("a")
    assert mw.join(10)
    mw.revalidate_tag("b")
    assert mw.join(10)
    assert [c[0] for c in target.calls] == [[edge_key("a")], [edge_key("b")]]


def test_status_lists_targets_without_tokens_and_metrics_count_purges() -> None:
    with FastlyAPI("SVC", TOKEN) as api, Recorder() as varnish:
        url = f"fastly://SVC?token={TOKEN}&api={api.url}"
        vurl = f"varnish://127.0.0.1:{varnish.port}"
        mw, client, clock, app = make(tagged(), purge=[url, vurl], secret=SECRET)
        auth = {"Authorization": f"Bearer {SECRET}"}
        status = client.get("/_isr/status", headers=auth)
        assert status.json["purge"] == [f"fastly://SVC?api={api.url}", vurl]
        assert TOKEN not in status.text
        mw.revalidate_tag("posts")
        api.wait_for(1)
        mw.purges.join(10)  # type: ignore[union-attr]
        metrics = client.get("/_isr/metrics", headers=auth).text
        assert TOKEN not in metrics
        assert f'result="ok",target="fastly://SVC?api={api.url}"}} 1.0' in metrics


# -- the vendors' APIs ------------------------------------------------------------------


def test_fastly_soft_and_hard_purges_follow_the_api() -> None:
    with FastlyAPI("SVC-1", TOKEN) as api:
        mw, client, clock, app = make(
            tagged(), purge=[f"fastly://SVC-1?token={TOKEN}&api={api.url}"]
        )
        mw.revalidate_tag("post-1", "posts")
        assert mw.join(10)
        mw.revalidate_path("/blog", "layout", mode="hard")
        assert mw.join(10)
        soft, hard = api.calls
    assert api.violations == []
    assert soft.headers["surrogate-key"].split(" ") == [edge_key("post-1"), edge_key("posts")]
    assert soft.headers["fastly-soft-purge"] == "1"
    assert soft.headers["fastly-key"] == TOKEN
    assert hard.headers["surrogate-key"] == edge_key(layout_tag("/blog"))
    assert "fastly-soft-purge" not in hard.headers


def test_fastly_batches_at_256_keys_and_takes_the_token_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FASTLY_API_TOKEN", TOKEN)
    tags = [f"tag-{i}" for i in range(300)]
    with FastlyAPI("SVC", TOKEN) as api:
        mw, client, clock, app = make(tagged(), purge=[f"fastly://SVC?api={api.url}"])
        mw.revalidate_tag(*tags)
        assert mw.join(10)
    assert api.violations == []
    assert [len(c.headers["surrogate-key"].split(" ")) for c in api.calls] == [256, 44]
    sent = [k for c in api.calls for k in c.headers["surrogate-key"].split(" ")]
    assert sent == [edge_key(t) for t in tags]


def test_cloudflare_purges_by_tag_in_calls_of_100() -> None:
    tags = [f"tag-{i}" for i in range(250)]
    with CloudflareAPI("ZONE-9", TOKEN) as api:
        url = f"cloudflare://ZONE-9?token={TOKEN}&api={api.url}"
        mw, client, clock, app = make(tagged(), purge=[url])
        mw.revalidate_tag(*tags, mode="hard")
        assert mw.join(10)
        mw.revalidate_tag("posts")  # no soft purge by tag at Cloudflare: a purge all the same
        assert mw.join(10)
    assert api.violations == []
    assert [len(c.json["tags"]) for c in api.calls] == [100, 100, 50, 1]
    assert [k for c in api.calls[:3] for k in c.json["tags"]] == [edge_key(t) for t in tags]
    assert api.calls[3].json == {"tags": [edge_key("posts")]}


def test_cloudflare_errors_are_retried_and_a_refused_token_is_not() -> None:
    with CloudflareAPI("Z", TOKEN) as api:
        api.failures.append((429, {"Retry-After": "2"}))
        waits: list[float] = []
        good = open_purger(f"cloudflare://Z?token={TOKEN}&api={api.url}&batch=30")
        queue = PurgeQueue([good], sleep=waits.append)
        mw, client, clock, app = make(tagged(), purge=queue)
        mw.revalidate_tag(*[f"t{i}" for i in range(40)])
        assert mw.join(10)
        assert [len(c.json["tags"]) for c in api.calls] == [30, 30, 10]  # the first was a 429
        bad = CloudflarePurger("Z", token="wrong", api=api.url)
        bad_queue = PurgeQueue([bad], sleep=waits.append)
        mw, client, clock, app = make(tagged(), purge=bad_queue)
        mw.revalidate_tag("posts")
        assert mw.join(10)
    assert api.violations == []
    name = f"cloudflare://Z?api={api.url}"
    assert queue.counts()[(name, "ok")] == 2
    assert queue.counts()[(name, "retried")] == 1 and waits == [2.0]
    assert bad_queue.counts()[(name, "failed")] == 1
    assert bad_queue.counts()[(name, "retried")] == 0


def test_varnish_purge_protocol() -> None:
    with Recorder() as varnish:
        mw, client, clock, app = make(tagged(), purge=[f"varnish://127.0.0.1:{varnish.port}"])
        mw.revalidate_tag("posts")
        assert mw.join(10)
        mw.revalidate_tag("post-1", mode="hard")
        assert mw.join(10)
    soft, hard = varnish.calls
    assert (soft.method, soft.path, soft.headers["xkey-softpurge"]) == (
        "PURGE",
        "/",
        edge_key("posts"),
    )
    assert (hard.method, hard.path, hard.headers["xkey-purge"]) == (
        "PURGE",
        "/",
        edge_key("post-1"),
    )
    assert "xkey-purge" not in soft.headers and "xkey-softpurge" not in hard.headers


def test_a_custom_http_ban_purger() -> None:
    class BanPurger(Purger):
        header = "X-Cache-Tags"
        separator = ","

        def __init__(self, url: str) -> None:
            self.url = self.description = url

        def purge(self, keys: Sequence[str], *, soft: bool) -> None:
            self.request("BAN", self.url, {"X-Ban-Tags": "|".join(keys)})

    with Recorder() as edge:
        mw, client, clock, app = make(tagged(), purge=[BanPurger(edge.url + "/")])
        r = client.get("/p")
        mw.revalidate_tag("post-1", "posts")
        assert mw.join(10)
    assert keys(r.headers, "X-Cache-Tags", ",")[:2] == [edge_key("post-1"), edge_key("posts")]
    (ban,) = edge.calls
    assert (ban.method, ban.headers["x-ban-tags"]) == (
        "BAN",
        f"{edge_key('post-1')}|{edge_key('posts')}",
    )


@pytest.mark.parametrize(
    ("target", "message"),
    [
        pytest.param("memcached://x", "unknown purge target", id="scheme"),
        pytest.param("fastly://SVC", "no API token", id="fastly-token"),
        pytest.param("cloudflare://Z", "no API token", id="cloudflare-token"),
        pytest.param("cloudflare://Z?token=t&batch=500", "batch", id="cloudflare-batch"),
        pytest.param("varnish://", "varnish://host:port", id="varnish-host"),
    ],
)
def test_bad_targets_fail_at_start_up(
    target: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FASTLY_API_TOKEN", raising=False)
    monkeypatch.delenv("CLOUDFLARE_API_TOKEN", raising=False)
    with pytest.raises(ValueError, match=message):
        make(tagged(), purge=[target])


def test_bad_cdn_max_age_fails_at_start_up() -> None:
    for bad in (-1, 1.5, True, "60"):
        with pytest.raises(ValueError, match="cdn_max_age"):
            make(tagged(), cdn_max_age=bad)


# -- Flask ------------------------------------------------------------------------------


def test_flask_config_and_cli_purge(tmp_path: Any) -> None:
    with Recorder() as varnish, Recorder() as other:
        app = Flask(__name__, instance_path=str(tmp_path / "instance"))
        app.config.update(
            ISR_STORE="memory://",
            ISR_PURGE=f"varnish://127.0.0.1:{varnish.port}, varnish://127.0.0.1:{other.port}",
            ISR_CDN_MAX_AGE=600,
        )
        isr = ISR(app)

        @app.get("/post")
        @isr.page(tags=["post-a"])
        def post() -> str:
            return "post"

        r = app.test_client().get("/post")
        assert "s-maxage=600" in r.headers["Cache-Control"]
        assert edge_key("post-a") in r.headers["xkey"].split(" ")
        mw = isr.middleware
        assert mw.purges is not None
        assert mw.purges.descriptions == [
            f"varnish://127.0.0.1:{varnish.port}",
            f"varnish://127.0.0.1:{other.port}",
        ]
        status = app.test_cli_runner().invoke(args=["isr", "status"])
        assert f"purge:   varnish://127.0.0.1:{varnish.port}, varnish://" in status.output
        result = app.test_cli_runner().invoke(args=["isr", "revalidate", "--tag", "post-a"])
        assert result.exit_code == 0, result.output
        for edge in (varnish, other):
            sent = [c.headers.get("xkey-softpurge") for c in edge.wait_for(1)]
            assert sent == [edge_key("post-a")]


def purges_sent_by(args: list[str]) -> list[str | None]:
    """Run ``python *args <varnish target>`` to its end against a Varnish that answers
    its first purge 503 (so the one that lands is the retry, after the backoff): the
    soft-purge keys it received, in order."""
    with Recorder() as varnish:
        varnish.failures.append((503, {}))
        target = f"varnish://127.0.0.1:{varnish.port}"
        done = subprocess.run([sys.executable, *args, target], capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return [c.headers.get("xkey-softpurge") for c in varnish.calls]


EXITS_AT_ONCE = """
import sys
from wsgi_isr import ISRMiddleware
mw = ISRMiddleware(lambda e, s: [], store="memory://", purge=[sys.argv[1]])
mw.revalidate_tag("from-a-script")
"""


def test_a_process_that_exits_at_once_sends_its_purges_first(tmp_path: Any) -> None:
    """A cron script, a shell or a CLI revalidates and exits: the purge workers are
    daemon threads, so the exit waits for what they queued (here a 503 first, retried
    after the backoff) instead of leaving the CDN with the old page."""
    sent = purges_sent_by(["-c", EXITS_AT_ONCE])
    assert sent == [edge_key("from-a-script")] * 2, sent


IN_A_MULTIPROCESSING_CHILD = """
import multiprocessing, sys
from wsgi_isr import ISRMiddleware

def job(target):
    mw = ISRMiddleware(lambda e, s: [], store="memory://", purge=[target])
    mw.revalidate_tag("from-a-child")  # then the child ends with os._exit

if __name__ == "__main__":
    child = multiprocessing.get_context("fork").Process(target=job, args=(sys.argv[1],))
    child.start()
    child.join(60)
    sys.exit(child.exitcode)
"""


def test_a_multiprocessing_child_sends_its_purges_before_it_ends(tmp_path: Any) -> None:
    """multiprocessing ends its children with os._exit, past atexit: the queue sends
    what they queued from multiprocessing's own exit finalizers (a 503, then the retry)."""
    script = tmp_path / "child.py"
    script.write_text(IN_A_MULTIPROCESSING_CHILD)
    sent = purges_sent_by([str(script)])
    assert sent == [edge_key("from-a-child")] * 2, sent


GUNICORN_WORKER_EXITS = """
import socket, sys, time
from types import SimpleNamespace
from wsgi_isr import ISRMiddleware
from wsgi_isr.gunicorn import worker_exit

mw = ISRMiddleware(lambda e, s: [], store="memory://", purge=[sys.argv[1]])
mw.revalidate_tag("at-shutdown")
worker_exit(None, SimpleNamespace(cfg=SimpleNamespace(graceful_timeout=1)))
"""


FORKED_AFTER_THE_MASTER_RAN_THE_HOOK = """
import os, sys, time
from wsgi_isr import ISRMiddleware
from wsgi_isr.purge.queue import exit_by

exit_by(time.monotonic())  # gunicorn's master runs worker_exit itself for a vanished worker
pid = os.fork()
if pid == 0:  # a worker forked afterwards: its exit must still send what it queued
    mw = ISRMiddleware(lambda e, s: [], store="memory://", purge=[sys.argv[1]])
    mw.revalidate_tag("after-the-fork")
    sys.exit(0)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_a_deadline_set_before_a_fork_does_not_hold_in_the_child() -> None:
    sent = purges_sent_by(["-c", FORKED_AFTER_THE_MASTER_RAN_THE_HOOK])
    assert sent == [edge_key("after-the-fork")] * 2, sent


def test_a_gunicorn_worker_exits_within_its_graceful_timeout_with_a_cdn_hung() -> None:
    """The worker_exit hook waits 80 % of graceful_timeout for purges: the process's own
    exit must not wait on past it (up to 30 s), or the master kills it first and what
    was not sent goes unlogged."""
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(8)  # accepts connections (the kernel's backlog), never answers
    try:
        target = f"varnish://127.0.0.1:{hung.getsockname()[1]}"
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-c", GUNICORN_WORKER_EXITS, target],
            capture_output=True,
            text=True,
            timeout=60,
        )
        took = time.monotonic() - started
    finally:
        hung.close()
    assert done.returncode == 0, done.stderr
    assert took < 1.0 + 3.0, took  # graceful_timeout, and the interpreter's own start
    assert "not sent" in done.stderr, done.stderr


def test_a_forked_worker_sends_its_own_purges() -> None:
    """gunicorn --preload builds the middleware before it forks the workers: the purge
    thread started in the parent does not exist in the child."""
    with Recorder() as varnish:
        mw, client, clock, app = make(tagged(), purge=[f"varnish://127.0.0.1:{varnish.port}"])
        mw.revalidate_tag("in-parent")
        assert mw.join(10)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
            pid = os.fork()
        if pid == 0:  # the child: report through the exit status only
            try:
                mw.revalidate_tag("in-child")
                os._exit(0 if mw.join(10) else 3)
            finally:
                os._exit(4)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        sent = [c.headers.get("xkey-softpurge") for c in varnish.wait_for(2)]
    assert sent == [edge_key("in-parent"), edge_key("in-child")]


def test_a_render_in_flight_during_an_invalidation_is_not_announced_fresh() -> None:
    started, release = threading.Event(), threading.Event()

    def slow(environ: Any, n: int) -> list[tuple[str, str]]:
        started.set()
        release.wait(10)
        return [("X-ISR-Revalidate", "false"), ("X-ISR-Tags", "posts")]

    target = Recording()
    mw, client, clock, app = make(CountingApp(default=slow), purge=[target])
    answers: list[Any] = []
    edge_fetch = threading.Thread(target=lambda: answers.append(client.get("/p")))
    edge_fetch.start()
    assert started.wait(10)
    clock.advance(1)
    mw.revalidate_tag("posts")  # purged at the edge, which has no object yet
    assert mw.join(10) and target.calls
    release.set()
    edge_fetch.join(10)
    (answer,) = answers
    assert answer.headers["X-ISR-Cache"] == "MISS"
    assert s_maxage(answer.headers["Cache-Control"]) == 0, answer.headers["Cache-Control"]


def test_only_the_receiving_middleware_purges() -> None:
    """Two processes sharing one store (here: two middlewares on one store object): the
    one that recorded the invalidation purges; the other only sees the new tag state."""
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    a_target, b_target = Recording(), Recording()
    a, a_client, _, _ = make(tagged(), store=store, purge=[a_target], clock=clock)
    b, b_client, _, _ = make(tagged(), store=store, purge=[b_target], clock=clock)
    b_client.get("/p")
    clock.advance(1)
    a.revalidate_tag("posts")
    assert a.join(10) and b.join(10)
    assert b_client.get("/p").headers["X-ISR-Cache"] == "STALE"
    assert a_target.calls == [([edge_key("posts")], True)]
    assert b_target.calls == []
    b.join(10)
