"""Calling the application and capturing what it answers."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .datascope import cap_headers, page_scope
from .keys import path_tags, quote_path
from .policy import _render_tags

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication, WSGIEnvironment


@dataclasses.dataclass(slots=True)
class Captured:
    """A response read into memory up to a size limit.

    When the body was larger than the limit, ``rest`` holds the unread part and
    ``close`` must be called once the caller has streamed it.
    """

    status: str
    headers: list[tuple[str, str]]
    chunks: list[bytes]
    size: int
    tags: list[str]
    overflow: bool = False
    rest: Iterator[bytes] | None = None
    closer: Any = None

    def body(self) -> bytes:
        return b"".join(self.chunks)

    def close(self) -> None:
        closer, self.closer = self.closer, None
        _close(closer)

    def drain(self) -> None:
        """Read and drop what was left unread past the limit, and close (a background
        render has nobody to stream it to)."""
        try:
            for _ in self.rest or ():
                pass
        finally:
            self.rest = None
            self.close()

    def stream(self) -> Body:
        """The whole body as a WSGI iterable, buffered part first; its ``close()``
        closes the app's iterable, even if the server never started reading it."""
        return Body(self)


class Body:
    """A captured response handed to the server (PEP 3333: ``close()`` is always
    called by the server, iterated or not, and closes the application's iterable)."""

    __slots__ = ("_captured",)

    def __init__(self, captured: Captured) -> None:
        self._captured = captured

    def __iter__(self) -> Iterator[bytes]:
        yield from self._captured.chunks
        if self._captured.rest is not None:
            yield from self._captured.rest

    def close(self) -> None:
        self._captured.close()


def _close(iterable: Any) -> None:
    """Call the ``close()`` a WSGI response iterable may have (PEP 3333)."""
    close = getattr(iterable, "close", None)
    if close is not None:
        close()


def capture(app: WSGIApplication, environ: WSGIEnvironment, limit: int) -> Captured:
    """Call ``app`` and read its response, collecting tags added with :func:`wsgi_isr.tag`
    and by cached data (:mod:`wsgi_isr.datacache`), whose remaining freshness caps the page's.

    Exceptions from the application propagate.
    """
    path = quote_path(environ.get("SCRIPT_NAME", "") + (environ.get("PATH_INFO", "") or "/"))
    with page_scope(path_tags(path)) as data:
        captured = _capture(app, environ, limit)
    captured.headers = cap_headers(captured.headers, data.cap)
    return captured


def _capture(app: WSGIApplication, environ: WSGIEnvironment, limit: int) -> Captured:
    tags: list[str] = []
    token = _render_tags.set(tags)
    chunks: list[bytes] = []
    started: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        if exc_info is not None and started and chunks:
            raise exc_info[1].with_traceback(exc_info[2])
        started[:] = [status, list(headers)]
        return chunks.append

    try:
        result = app(environ, start_response)
        size = sum(len(c) for c in chunks)
        iterator = iter(result)
        try:
            for chunk in iterator:
                if chunk:
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > limit:
                        return Captured(
                            started[0], started[1], chunks, size, tags, True, iterator, result
                        )
        except BaseException:
            _close(result)
            raise
        _close(result)
        if not started:
            raise RuntimeError("the application returned without calling start_response")
        return Captured(started[0], started[1], chunks, size, tags)
    finally:
        _render_tags.reset(token)
