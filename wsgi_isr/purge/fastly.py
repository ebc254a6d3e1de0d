"""Fastly: ``fastly://SERVICE_ID[?token=...&api=https://api.fastly.com]``.

Responses carry ``Surrogate-Key: k1 k2``. A purge follows Fastly's API reference,
"Purge multiple surrogate key tags": ``POST {api}/service/{service_id}/purge`` with
the keys in a ``Surrogate-Key`` request header (up to 256 keys per call),
``Fastly-Key: <token>``, and ``Fastly-Soft-Purge: 1`` for a soft purge (the objects
are marked stale instead of removed). The token comes from ``?token=`` or
``$FASTLY_API_TOKEN``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from urllib.parse import parse_qs, quote, urlsplit

from .base import Purger

DEFAULT_API = "https://api.fastly.com"


class FastlyPurger(Purger):
    """Batch surrogate-key purges through the Fastly API."""

    header = "Surrogate-Key"
    separator = " "
    # Fastly: keys of at most 1 KB, and only keys within the first 16 KB of the header apply
    max_header_bytes = 16384
    max_keys_per_call = 256

    def __init__(
        self,
        service_id: str,
        *,
        token: str | None = None,
        api: str = DEFAULT_API,
        timeout: float = 5.0,
    ) -> None:
        token = token or os.environ.get("FASTLY_API_TOKEN")
        if not service_id:
            raise ValueError("a Fastly target needs a service id: fastly://SERVICE_ID")
        if not token:
            raise ValueError(f"fastly://{service_id}: no API token (?token= or FASTLY_API_TOKEN)")
        self.service_id = service_id
        self.token = token
        self.api = api.rstrip("/")
        self.timeout = timeout
        self.description = f"fastly://{service_id}"
        if self.api != DEFAULT_API:
            self.description += f"?api={self.api}"

    @classmethod
    def from_url(cls, url: str) -> FastlyPurger:
        parts = urlsplit(url)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        return cls(parts.netloc, token=query.get("token"), api=query.get("api", DEFAULT_API))

    def purge(self, keys: Sequence[str], *, soft: bool) -> None:
        headers = {
            "Fastly-Key": self.token,
            "Surrogate-Key": " ".join(keys),
            "Accept": "application/json",
        }
        if soft:
            headers["Fastly-Soft-Purge"] = "1"
        self.request("POST", f"{self.api}/service/{quote(self.service_id, safe='')}/purge", headers)
