"""The example Django site as the real-server tests run it (``tests/test_django.py``):
``examples/django_site``'s own ``application``, plus, outside the cache, the two
things ``tests/servers.py`` needs: ``/health`` and an ``X-Worker-Pid`` header (what a
load balancer's health check and access log would see)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from mysite.wsgi import application as site

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment


def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    pid = ("X-Worker-Pid", str(os.getpid()))
    if environ.get("PATH_INFO") == "/health":
        start_response("200 OK", [("Content-Type", "text/plain"), pid])
        return [b"ok"]

    def with_pid(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        return start_response(status, [*headers, pid], exc_info)

    return site(environ, with_pid)
