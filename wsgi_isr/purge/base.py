"""The contract of a purge target, and the CDN-safe form of a tag.

A :class:`Purger` does two things: it names the response header the edge reads
tags from (``xkey``, ``Surrogate-Key``, ``Cache-Tag``), and it sends one purge
call for a batch of keys. Batching to the vendor's per-call limit lives here;
retries, back-off and the background thread live in
:class:`~wsgi_isr.purge.queue.PurgeQueue`.

A target of your own, e.g. a Varnish set up for ``BAN`` by tag::

    from wsgi_isr.purge import Purger

    class BanPurger(Purger):
        header = "X-Cache-Tags"          # the edge stores this with the object
        separator = ","

        def __init__(self, url: str) -> None:
            self.url = self.description = url

        def purge(self, keys, *, soft):
            # VCL: ban("obj.http.X-Cache-Tags ~ " + req.http.X-Ban-Tags)
            self.request("BAN", self.url, {"X-Ban-Tags": "(^|,)(" + "|".join(keys) + ")(,|$)"})

    ISRMiddleware(app, purge=[BanPurger("http://127.0.0.1:6081/")])
"""

from __future__ import annotations

import hashlib
import http.client
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import ClassVar
from urllib.parse import urlsplit

from ..errors import ISRError

#: Length of an edge key: 64 bits of BLAKE2b in lower-case hex.
KEY_LENGTH = 16


def edge_key(tag: str) -> str:
    """The form of ``tag`` sent to CDNs: 16 lower-case hex digits.

    Every vendor accepts it (no spaces, commas or case to fold), it has a fixed
    length whatever the tag (implicit path tags hold ``/`` and ``%``), and the
    same tag gives the same key in every process. A collision only purges more.

    >>> edge_key("posts")
    '11ac81f3726ea4c7'
    """
    return hashlib.blake2b(tag.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


#: The most of a purge answer read (its status is what counts).
MAX_REPLY_BYTES = 64 * 1024


class PurgeError(ISRError):
    """A purge call failed. ``retry`` says whether trying again may help (network
    errors, 429, 5xx) or not (a refused token, a bad request); ``retry_after`` is
    the wait the target asked for, in seconds, if it said."""

    def __init__(self, message: str, *, retry: bool = True, retry_after: float | None = None):
        super().__init__(message)
        self.retry = retry
        self.retry_after = retry_after


class Response:
    """What :meth:`Purger.request` got back."""

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class Purger:
    """Base class of purge targets.

    Subclasses set :attr:`header` (``None``: the target reads no tags from
    responses), :attr:`separator`, the vendor's limits, a :attr:`description` for
    ``/status`` and metrics that holds no secret, and implement :meth:`purge`.
    """

    #: Response header that carries the page's keys to this target.
    header: ClassVar[str | None] = None
    #: Between two keys in that header and in purge requests.
    separator: ClassVar[str] = " "
    #: Longest value of that header the target documents (bytes, after the name).
    max_header_bytes: int = 8192
    #: Most keys one purge call may carry.
    max_keys_per_call: int = 256
    #: Seconds one HTTP call may take.
    timeout: float = 5.0
    #: Shown in ``/status`` and as the ``target`` label of metrics: never a token.
    description: str = "purger"

    def purge(self, keys: Sequence[str], *, soft: bool) -> None:
        """Purge every object tagged with one of ``keys`` (at most
        :attr:`max_keys_per_call`): mark it stale if ``soft`` and the target can,
        else remove it. Raise :class:`PurgeError` on failure."""
        raise NotImplementedError

    def batches(self, keys: Sequence[str]) -> Iterator[list[str]]:
        """``keys`` cut into calls the target accepts."""
        size = max(1, self.max_keys_per_call)
        for i in range(0, len(keys), size):
            yield list(keys[i : i + size])

    def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes = b"",
        *,
        ok: Sequence[int] = (200,),
    ) -> Response:
        """One HTTP(S) request; :class:`PurgeError` unless the status is in ``ok``."""
        parts = urlsplit(url)
        conn_type = (
            http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        )
        if parts.hostname is None:
            raise PurgeError(f"no host in {url!r}", retry=False)
        conn = conn_type(parts.hostname, parts.port, timeout=self.timeout)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        # the socket timeout bounds each read; a target that trickles its answer a byte
        # at a time is bounded by this deadline for the whole call, and its body by size
        deadline = time.monotonic() + self.timeout
        try:
            conn.request(method, path, body=body, headers=dict(headers))
            resp = conn.getresponse()
            chunks: list[bytes] = []
            size = 0
            while size <= MAX_REPLY_BYTES:
                if time.monotonic() > deadline:
                    raise PurgeError(f"{method} {self.description}: no full answer in time")
                chunk = resp.read1(16384)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            data = b"".join(chunks)
            reply = Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
        except (OSError, http.client.HTTPException) as exc:
            raise PurgeError(f"{method} {self.description}: {exc!r}") from exc
        finally:
            conn.close()
        if reply.status not in ok:
            retry = reply.status == 429 or reply.status >= 500
            after = _seconds(reply.headers.get("retry-after"))
            text = reply.body[:200].decode("utf-8", "replace")
            raise PurgeError(
                f"{method} {self.description}: HTTP {reply.status} {text}",
                retry=retry,
                retry_after=after,
            )
        return reply

    def header_value(self, keys: Sequence[str]) -> str:
        """The keys as this target's header value, cut at :attr:`max_header_bytes`
        (a whole key at a time: keys past the limit would be ignored by the edge)."""
        out: list[str] = []
        size = 0
        for key in keys:
            size += len(key) + (len(self.separator) if out else 0)
            if size > self.max_header_bytes:
                break
            out.append(key)
        return self.separator.join(out)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.description}>"


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None
