"""Local stand-ins for the purge APIs of Fastly and Cloudflare, and a plain recorder.

There is no network here, so ``tests/test_purge.py`` points the purgers at these
real HTTP servers on 127.0.0.1 (``?api=http://127.0.0.1:<port>``). Each one checks
every request against the vendor's documented API and answers as the vendor does;
a request that breaks the rules is answered 400 and recorded in ``violations``.

- :class:`FastlyAPI` follows Fastly's API reference, "Purging" → "Purge multiple
  surrogate key tags": ``POST /service/{service_id}/purge``, ``Fastly-Key: <token>``,
  the keys space-separated in a ``Surrogate-Key`` request header, at most 256 keys
  per call, ``Fastly-Soft-Purge: 1`` for a soft purge; it answers 200 with a JSON
  object mapping each key to a purge id. Keys are at most 1 KB ("Fastly VCL
  constraints and limitations": surrogate key size).
- :class:`CloudflareAPI` follows Cloudflare's API reference, "Purge Cached Content"
  (``POST /client/v4/zones/{zone_id}/purge_cache``) with a JSON body ``{"tags": [...]}``,
  ``Authorization: Bearer <token>``, ``Content-Type: application/json``, and the
  per-request limit of "Purge cache" → "Purge limits": at most 100 operations (tags)
  per call on every plan. It answers ``{"success": true, "errors": [], "messages": [],
  "result": {"id": ...}}``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class Recorder:
    """An HTTP server on 127.0.0.1 that records every request and answers with
    ``answer(call) -> (status, headers, body)`` (default: 200, empty)."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.violations: list[str] = []
        self.failures: list[tuple[int, dict[str, str]]] = []  # answered first, one per call
        self.cond = threading.Condition()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                call = Call(
                    self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body
                )
                status, headers, out = recorder.handle(call)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST = do_PURGE = do_BAN = _any

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def handle(self, call: Call) -> tuple[int, dict[str, str], bytes]:
        with self.cond:
            self.calls.append(call)
            self.cond.notify_all()
            if self.failures:
                status, headers = self.failures.pop(0)
                return status, headers, b'{"error": "injected"}'
        return self.answer(call)

    def answer(self, call: Call) -> tuple[int, dict[str, str], bytes]:
        return 200, {}, b""

    def reject(self, message: str) -> tuple[int, dict[str, str], bytes]:
        self.violations.append(message)
        return 400, {"Content-Type": "application/json"}, json.dumps({"msg": message}).encode()

    def wait_for(self, n: int, timeout: float = 10.0) -> list[Call]:
        """Block until ``n`` calls arrived (or ``timeout``); return the calls so far."""
        with self.cond:
            self.cond.wait_for(lambda: len(self.calls) >= n, timeout)
            return list(self.calls)

    def __enter__(self) -> Recorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class FastlyAPI(Recorder):
    def __init__(self, service_id: str, token: str) -> None:
        super().__init__()
        self.service_id, self.token = service_id, token

    def answer(self, call: Call) -> tuple[int, dict[str, str], bytes]:
        if call.method != "POST" or call.path != f"/service/{self.service_id}/purge":
            return self.reject(f"not the bulk purge endpoint: {call.method} {call.path}")
        if call.headers.get("fastly-key") != self.token:
            return 401, {}, b'{"msg": "Provided credentials are missing or invalid"}'
        keys = call.headers.get("surrogate-key", "").split(" ")
        if not all(keys) or len(keys) > 256:
            return self.reject(f"Surrogate-Key must list 1..256 keys, got {len(keys)}")
        if any(len(k.encode()) > 1024 for k in keys):
            return self.reject("a surrogate key is longer than 1 KB")
        if call.headers.get("fastly-soft-purge", "1") != "1":
            return self.reject("Fastly-Soft-Purge must be 1 when present")
        out = {k: f"purge-{i}" for i, k in enumerate(keys)}
        return 200, {"Content-Type": "application/json"}, json.dumps(out).encode()


class CloudflareAPI(Recorder):
    def __init__(self, zone_id: str, token: str) -> None:
        super().__init__()
        self.zone_id, self.token = zone_id, token

    def answer(self, call: Call) -> tuple[int, dict[str, str], bytes]:
        if call.method != "POST" or call.path != f"/client/v4/zones/{self.zone_id}/purge_cache":
            return self.reject(f"not the purge_cache endpoint: {call.method} {call.path}")
        if call.headers.get("authorization") != f"Bearer {self.token}":
            failure = {"success": False, "errors": [{"code": 10000, "message": "Auth error"}]}
            return 403, {"Content-Type": "application/json"}, json.dumps(failure).encode()
        if call.headers.get("content-type", "").split(";")[0] != "application/json":
            return self.reject("Content-Type must be application/json")
        try:
            body = call.json
        except ValueError:
            return self.reject("body is not JSON")
        tags = body.get("tags") if isinstance(body, dict) else None
        if set(body) != {"tags"} or not isinstance(tags, list):
            return self.reject(f"body must be {{'tags': [...]}}, got {body!r}")
        if not 1 <= len(tags) <= 100 or not all(isinstance(t, str) and t for t in tags):
            return self.reject(f"1..100 non-empty string tags per call, got {len(tags)}")
        if any(" " in t for t in tags):
            return self.reject("spaces are not allowed in cache tags")
        ok = {"success": True, "errors": [], "messages": [], "result": {"id": self.zone_id}}
        return 200, {"Content-Type": "application/json"}, json.dumps(ok).encode()


def keys_of(calls: list[Call], read: Callable[[Call], list[str]]) -> Iterator[str]:
    for call in calls:
        yield from read(call)
