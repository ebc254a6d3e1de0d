"""Small WSGI apps and a fake clock shared by the in-process tests."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, cast

from werkzeug.test import Client

from wsgi_isr import ISRMiddleware

T = TypeVar("T")


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class CountingApp:
    """A WSGI app that answers with headers chosen per path and counts its renders.

    ``pages`` maps a path to the extra headers (and optionally status) it answers with;
    the body is ``"<path> render <n> cookie=<cookie> auth=<auth>"`` so tests can see
    what a render saw.
    """

    def __init__(self, pages: dict[str, Any] | None = None, default: Any = None) -> None:
        self.pages = pages or {}
        self.default = default if default is not None else [("X-ISR-Revalidate", "60")]
        self.renders: dict[str, int] = {}
        self.environs: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.before: Callable[[dict[str, Any]], None] | None = None

    def count(self, path: str) -> int:
        return self.renders.get(path, 0)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ["PATH_INFO"]
        with self.lock:
            n = self.renders[path] = self.renders.get(path, 0) + 1
            self.environs.append(dict(environ))
        if self.before is not None:
            self.before(environ)
        spec = self.pages.get(path, self.default)
        status = "200 OK"
        if isinstance(spec, tuple):
            status, spec = spec
        if callable(spec):
            spec = spec(environ, n)
        seen = " ".join(
            f"{label}={environ.get(name, '-')}"
            for label, name in (
                ("cookie", "HTTP_COOKIE"),
                ("auth", "HTTP_AUTHORIZATION"),
                ("xfh", "HTTP_X_FORWARDED_HOST"),
                ("lang", "HTTP_ACCEPT_LANGUAGE"),
            )
        )
        body = f"{path}?{environ.get('QUERY_STRING', '')} render {n} {seen}".encode()
        start_response(status, [("Content-Type", "text/plain"), *spec])
        return [body]


def make(app: Any = None, **options: Any) -> tuple[ISRMiddleware, Client, FakeClock, CountingApp]:
    """A middleware over ``app`` (default: a CountingApp) with a memory store and fake clock."""
    clock = options.pop("clock", None) or FakeClock()
    app = app if app is not None else CountingApp()
    options.setdefault("store", "memory://")
    mw = ISRMiddleware(app, clock=clock, **options)
    return mw, Client(mw, use_cookies=False), clock, app


def metric_values(text: str) -> dict[str, float]:
    """A Prometheus exposition parsed by prometheus_client: ``'name{a="x"}' -> value``
    (labels sorted; no braces without labels)."""
    from prometheus_client.parser import text_string_to_metric_families

    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            values[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return values


def elsewhere(call: Callable[[], T]) -> T:
    """``call()`` in a thread of its own, as another request would make it (the store's
    circuit breaker holds back a thread whose command just timed out); its result, or
    its exception raised here."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = call()
        except BaseException as exc:
            out["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(60)
    if "error" in out:
        raise out["error"]
    return cast(T, out["value"])
