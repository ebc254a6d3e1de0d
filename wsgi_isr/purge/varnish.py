"""Varnish with vmod xkey (Debian ``varnish-modules``): ``varnish://host:port``.

Responses carry ``xkey: k1 k2``; a purge is ``PURGE /`` to the Varnish with
``xkey-softpurge: k1 k2`` (soft: the objects stay usable in grace while Varnish
fetches them again) or ``xkey-purge: k1 k2`` (hard). The VCL that answers it ships
as ``wsgi_isr/contrib/varnish.vcl``.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

from .base import Purger


class VarnishPurger(Purger):
    """``PURGE /`` with ``xkey-softpurge`` / ``xkey-purge`` to one Varnish."""

    header = "xkey"
    separator = " "
    # Varnish's default http_req_hdr_len and http_resp_hdr_len are 8 KiB per header line
    max_header_bytes = 8000
    max_keys_per_call = 256

    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("varnish", "http", "https") or not parts.hostname:
            raise ValueError(f"a Varnish target looks like varnish://host:port, got {url!r}")
        scheme = "https" if parts.scheme == "https" else "http"
        self.url = f"{scheme}://{parts.netloc}/"
        self.host = parts.netloc
        self.timeout = timeout
        self.description = f"varnish://{parts.netloc}"

    def purge(self, keys: Sequence[str], *, soft: bool) -> None:
        name = "xkey-softpurge" if soft else "xkey-purge"
        self.request("PURGE", self.url, {"Host": self.host, name: " ".join(keys)})
