"""What every end-to-end app under gunicorn shares (imported as ``tests.e2e_common``:
gunicorn runs the apps from the repository root)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment


def served_by(wsgi_app: WSGIApplication) -> WSGIApplication:
    """Add ``X-Worker-Pid`` (the serving process) to every response."""

    def wrapper(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        def sr(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            return start_response(status, [*headers, ("X-Worker-Pid", str(os.getpid()))], exc_info)

        return wsgi_app(environ, sr)

    return wrapper
