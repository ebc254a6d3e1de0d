"""The revalidation endpoint (DESIGN §6)."""

from __future__ import annotations

import unicodedata
from typing import Any

import pytest
from helpers import CountingApp, make, metric_values

SECRET = "a-long-enough-secret-for-the-tests-0123"


def tagged_app() -> CountingApp:
    return CountingApp(default=[("X-ISR-Revalidate", "false"), ("X-ISR-Tags", "post-1, posts")])


def post(client: Any, body: Any = None, **kw: Any) -> Any:
    return client.post("/_isr/revalidate", json=body, **kw)


def test_webhook_shape_with_secret_in_body() -> None:
    mw, client, clock, app = make(tagged_app(), secret=SECRET)
    client.get("/blog/1")
    clock.advance(1)
    r = post(client, {"tag": "post-1", "secret": SECRET})
    assert r.status_code == 200
    assert r.json == {
        "revalidated": True,
        "tags": ["post-1"],
        "paths": [],
        "mode": "soft",
        "now": clock.now,
    }
    clock.advance(1)
    assert client.get("/blog/1").headers["X-ISR-Cache"] == "STALE"
    mw.join(5)


def test_a_tag_beyond_ascii_from_a_cms_reaches_the_pages_tagged_with_it() -> None:
    """A CMS sends the slug as it is ("café"); the page was tagged through the Python
    API (wsgi_isr.tag), so both are kept in the one percent-encoded form."""
    import wsgi_isr

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        wsgi_isr.tag("post-café")
        start_response("200 OK", [("X-ISR-Revalidate", "false")])
        return [b"page"]

    mw, client, clock, _ = make(app, secret=SECRET)
    assert client.get("/blog/caf%C3%A9").headers["X-ISR-Cache"] == "MISS"
    clock.advance(1)
    decomposed = unicodedata.normalize("NFD", "post-café")  # as another keyboard types it
    r = post(client, {"tags": [decomposed], "secret": SECRET})
    assert r.status_code == 200 and r.json["tags"] == [decomposed], r.json  # as sent
    clock.advance(1)
    assert client.get("/blog/caf%C3%A9").headers["X-ISR-Cache"] == "STALE"
    mw.join(5)


def test_bearer_header_paths_and_hard_mode() -> None:
    mw, client, clock, app = make(tagged_app(), secret=SECRET)
    client.get("/docs/a")
    client.get("/other")
    clock.advance(1)
    r = post(
        client,
        {"paths": ["/docs"], "type": "layout", "mode": "hard"},
        headers={"Authorization": f"Bearer {SECRET}"},
    )
    assert r.status_code == 200 and r.json["paths"] == ["/docs"]
    clock.advance(1)
    assert client.get("/docs/a").headers["X-ISR-Cache"] == "MISS"
    assert client.get("/other").headers["X-ISR-Cache"] == "HIT"


@pytest.mark.parametrize(
    ("body", "headers", "status", "message"),
    [
        pytest.param({"tag": "x"}, {}, 401, "secret", id="missing-secret"),
        pytest.param({"tag": "x", "secret": "nope"}, {}, 401, "secret", id="wrong-secret"),
        pytest.param(
            {"tag": "x"}, {"Authorization": "Bearer nope"}, 401, "secret", id="bad-bearer"
        ),
        pytest.param({"secret": SECRET}, {}, 400, "give 'tag'", id="nothing-to-do"),
        pytest.param({"tag": 5, "secret": SECRET}, {}, 400, "'tag' must be", id="tag-type"),
        pytest.param({"tags": [], "secret": SECRET}, {}, 400, "'tags' must be", id="tags-empty"),
        pytest.param({"tag": "a b", "secret": SECRET}, {}, 400, "invalid tag", id="tag-space"),
        pytest.param({"path": "blog", "secret": SECRET}, {}, 400, "start with", id="relative-path"),
        pytest.param(
            {"path": "/b", "type": "site", "secret": SECRET}, {}, 400, "type must be", id="bad-type"
        ),
        pytest.param(
            {"tag": "x", "mode": "nuke", "secret": SECRET}, {}, 400, "mode must be", id="bad-mode"
        ),
        pytest.param([1, 2], {"Authorization": f"Bearer {SECRET}"}, 400, "JSON object", id="array"),
    ],
)
def test_bad_requests_get_a_clear_json_error(
    body: Any, headers: dict[str, str], status: int, message: str
) -> None:
    mw, client, clock, app = make(secret=SECRET)
    r = post(client, body, headers=headers)
    assert r.status_code == status
    assert message in r.json["error"]


def test_malformed_json_is_400_after_auth() -> None:
    mw, client, clock, app = make(secret=SECRET)
    headers = {"Authorization": f"Bearer {SECRET}", "Content-Type": "application/json"}
    r = client.post("/_isr/revalidate", data=b"{not json", headers=headers)
    assert r.status_code == 400 and "JSON" in r.json["error"]
    assert client.post("/_isr/revalidate", data=b"{not json").status_code == 401


def test_other_methods_are_405() -> None:
    mw, client, clock, app = make(secret=SECRET)
    r = client.get("/_isr/revalidate")
    assert r.status_code == 405 and r.headers["Allow"] == "POST"
    assert client.post("/_isr/status").status_code == 405


def test_large_bodies_are_413() -> None:
    mw, client, clock, app = make(secret=SECRET, max_request_bytes=1024)
    r = client.post(
        "/_isr/revalidate", data=b"x" * 2048, headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 413


def test_no_secret_no_endpoint() -> None:
    mw, client, clock, app = make()
    r = post(client, {"tag": "x"})
    assert app.count("/_isr/revalidate") == 1  # the app answered, not us
    assert "error" not in r.data.decode()


def test_status_reports_counters_and_store() -> None:
    mw, client, clock, app = make(secret=SECRET)
    client.get("/p")
    client.get("/p")
    assert client.get("/_isr/status").status_code == 401
    r = client.get("/_isr/status", headers={"Authorization": f"Bearer {SECRET}"})
    assert r.status_code == 200
    assert r.json["store"].startswith("memory")
    assert r.json["counters"]["hits"] == 1 and r.json["counters"]["misses"] == 1
    assert r.headers["Cache-Control"] == "no-store"


def test_short_secret_warns(caplog: pytest.LogCaptureFixture) -> None:
    make(secret="short")
    assert "shorter than 32" in caplog.text


def test_metrics_in_prometheus_text_format() -> None:
    mw, client, clock, app = make(secret=SECRET)
    client.get("/p")
    client.get("/p")
    clock.advance(61)
    client.get("/p")
    mw.join(5)
    assert client.get("/_isr/metrics").status_code == 401
    r = client.get("/_isr/metrics", headers={"Authorization": f"Bearer {SECRET}"})
    assert r.status_code == 200 and r.mimetype == "text/plain"
    text = r.get_data(as_text=True)
    values = metric_values(text)
    assert values['wsgi_isr_requests_total{state="hit"}'] == 1
    assert values['wsgi_isr_requests_total{state="miss"}'] == 1
    assert values['wsgi_isr_requests_total{state="stale"}'] == 1
    assert values['wsgi_isr_regenerations_total{result="ok"}'] == 1
    assert values['wsgi_isr_regeneration_duration_seconds_bucket{le="+Inf"}'] == 1
    assert "# TYPE wsgi_isr_regeneration_duration_seconds histogram" in text


def test_metrics_without_a_multiprocess_dir_count_one_middleware() -> None:
    first, client_a, _, _ = make(secret=SECRET)
    second, client_b, _, _ = make(secret=SECRET)
    client_a.get("/p")
    client_a.get("/p")
    client_b.get("/p")
    auth = {"Authorization": f"Bearer {SECRET}"}
    a = metric_values(client_a.get("/_isr/metrics", headers=auth).get_data(as_text=True))
    b = metric_values(client_b.get("/_isr/metrics", headers=auth).get_data(as_text=True))
    assert a['wsgi_isr_requests_total{state="miss"}'] == 1
    assert a['wsgi_isr_requests_total{state="hit"}'] == 1
    assert b['wsgi_isr_requests_total{state="miss"}'] == 1
    assert b['wsgi_isr_requests_total{state="hit"}'] == 0
