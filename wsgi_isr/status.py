"""What ``flask isr status`` and ``manage.py isr status`` print: the store, its size,
the purge targets, and a running server's counters (from its ``/status`` endpoint).

    for line in status_lines(mw, "http://127.0.0.1:8000"):
        print(line)
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .middleware import ISRMiddleware


def status_lines(mw: ISRMiddleware, url: str | None = None) -> list[str]:
    """The lines to print; a ``ValueError`` saying what is wrong when the server's
    counters cannot be had (no secret configured, the server unreachable)."""
    count = mw.store.count()
    lines = [
        f"store:   {mw.store.description}",
        f"entries: {count if count is not None else 'unknown'}",
    ]
    if mw.purges is not None:
        lines.append(f"purge:   {', '.join(mw.purges.descriptions)}")
    if url:
        if mw.secret is None:
            raise ValueError("no secret is configured: the status endpoint is off")
        req = urllib.request.Request(
            url.rstrip("/") + mw.endpoint + "/status",
            headers={"Authorization": f"Bearer {mw.secret}"},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                data = json.load(resp)
        except (OSError, ValueError) as exc:  # URLError is an OSError
            raise ValueError(f"cannot read the counters of {url}: {exc}") from None
        for name, value in data.get("counters", {}).items():
            lines.append(f"{name + ':':24}{value}")
    return lines
