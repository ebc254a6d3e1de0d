"""Cloudflare: ``cloudflare://ZONE_ID[?token=...&api=https://api.cloudflare.com&batch=100]``.

Responses carry ``Cache-Tag: k1,k2`` (Cloudflare strips it before the visitor sees
it; the header may hold 16 KB). A purge follows Cloudflare's API reference, "Purge
Cached Content" by tag: ``POST {api}/client/v4/zones/{zone_id}/purge_cache`` with the
JSON body ``{"tags": [...]}`` and ``Authorization: Bearer <token>``, at most 100 tags
per call (the documented "operations per request" of every plan; ``?batch=`` lowers
it). Cloudflare has no soft purge by tag: soft and hard both purge, and the origin
then answers at once from its own stale copy. The token comes from ``?token=`` or
``$CLOUDFLARE_API_TOKEN``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from urllib.parse import parse_qs, quote, urlsplit

from .base import PurgeError, Purger

DEFAULT_API = "https://api.cloudflare.com"
MAX_TAGS_PER_CALL = 100


class CloudflarePurger(Purger):
    """Purge by cache tag through the Cloudflare API."""

    header = "Cache-Tag"
    separator = ","
    max_header_bytes = 16 * 1024

    def __init__(
        self,
        zone_id: str,
        *,
        token: str | None = None,
        api: str = DEFAULT_API,
        batch: int = MAX_TAGS_PER_CALL,
        timeout: float = 5.0,
    ) -> None:
        token = token or os.environ.get("CLOUDFLARE_API_TOKEN")
        if not zone_id:
            raise ValueError("a Cloudflare target needs a zone id: cloudflare://ZONE_ID")
        if not token:
            raise ValueError(
                f"cloudflare://{zone_id}: no API token (?token= or CLOUDFLARE_API_TOKEN)"
            )
        if not 1 <= batch <= MAX_TAGS_PER_CALL:
            raise ValueError(f"batch must be between 1 and {MAX_TAGS_PER_CALL}, got {batch}")
        self.zone_id = zone_id
        self.token = token
        self.api = api.rstrip("/")
        self.max_keys_per_call = batch
        self.timeout = timeout
        self.description = f"cloudflare://{zone_id}"
        if self.api != DEFAULT_API:
            self.description += f"?api={self.api}"

    @classmethod
    def from_url(cls, url: str) -> CloudflarePurger:
        parts = urlsplit(url)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        try:
            batch = int(query.get("batch", MAX_TAGS_PER_CALL))
        except ValueError:
            raise ValueError(f"batch must be a number in {url!r}") from None
        return cls(
            parts.netloc,
            token=query.get("token"),
            api=query.get("api", DEFAULT_API),
            batch=batch,
        )

    def purge(self, keys: Sequence[str], *, soft: bool) -> None:
        body = json.dumps({"tags": list(keys)}).encode()
        reply = self.request(
            "POST",
            f"{self.api}/client/v4/zones/{quote(self.zone_id, safe='')}/purge_cache",
            {
                "Authorization": f"Bearer {self.token}",
                "Content-Type": "application/json",
                "Accept": "application/json",
            },
            body,
        )
        try:
            success = json.loads(reply.body).get("success")
        except (ValueError, AttributeError):
            success = None
        if success is not True:
            raise PurgeError(f"POST {self.description}: answer without success: true")
