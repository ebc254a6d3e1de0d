"""What cached answers tell the caches in front: their tags, and a capped ``s-maxage``.

:meth:`EdgeHeaders.apply` is the one hook the middleware calls on the header list
of a cached answer (hit, stale, miss, coalesced, 304). It

- adds the page's tags, implicit path tags included, as edge keys in each target's
  header (``xkey``, ``Surrogate-Key``, ``Cache-Tag``), replacing any such header the
  application set (its tags are among the page's tags already);
- caps ``s-maxage`` and ``stale-while-revalidate`` at ``cdn_max_age``, for caches
  that cannot be purged by tag (nginx ``proxy_cache``) or as a safety net when a purge
  is lost: a cache in front then serves an invalidated page at most ``2 *
  cdn_max_age`` (fresh, then stale while it fetches) before it asks again. Capping
  ``s-maxage`` alone leaves the year-long stale window of a ``revalidate=False``
  page, and the first visitor after any pause would get the old copy.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .. import responses as R
from ..entry import Entry
from .base import Purger, edge_key

_CAPPED = re.compile(r"(?i)\b(s-maxage|stale-while-revalidate)=(\d+)")
_MEMO_SIZE = 4096


class EdgeHeaders:
    """Tag headers for ``targets`` and the ``cdn_max_age`` cap (either may be empty)."""

    def __init__(self, targets: Sequence[Purger], cdn_max_age: int | None) -> None:
        self.cdn_max_age = cdn_max_age
        # one header per name: two Varnish targets read the same xkey
        self.headers: dict[str, Purger] = {}
        for target in targets:
            if target.header and target.header.lower() not in {h.lower() for h in self.headers}:
                self.headers[target.header] = target
        self._drop = frozenset(h.lower() for h in self.headers)
        self._capped_memo: dict[str, str] = {}

    def tag_headers(self, entry: Entry) -> tuple[tuple[tuple[str, str], ...], bool]:
        """The tag headers of ``entry``, and whether the application set one of those
        headers itself (computed once per stored entry)."""
        # kept with the entry (not in a memo of this object's, which a site with more
        # pages than it holds would empty again and again)
        prepared = entry.prepared or R.prepared(entry)
        held = prepared.edge
        if held is not None and held[0] is self:
            return held[1], held[2]
        keys = list(dict.fromkeys(edge_key(t) for t in entry.tags))
        value = tuple(
            (name, target.header_value(keys)) for name, target in self.headers.items() if keys
        )
        app_tagged = any(k.lower() in self._drop for k, _ in entry.headers)
        prepared.edge = (self, value, app_tagged)
        return value, app_tagged

    def apply(self, entry: Entry, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """``headers`` (the client headers of a cached answer, a list of the caller's
        own) with the tag headers added and ``s-maxage`` and the stale window capped."""
        if self._drop:
            tag_headers, app_tagged = self.tag_headers(entry)
            if app_tagged:  # the application set such a header itself: ours replace it
                headers = [(k, v) for k, v in headers if k.lower() not in self._drop]
            headers += tag_headers
        if self.cdn_max_age is not None:
            for i, (k, v) in enumerate(headers):
                if k.lower() == "cache-control":
                    headers[i] = (k, self._capped(v))
        return headers

    def _capped(self, value: str) -> str:
        # the same few values come back for every hit within a second: remember them
        capped = self._capped_memo.get(value)
        if capped is None:
            cap = self.cdn_max_age
            assert cap is not None
            capped = _CAPPED.sub(lambda m: f"{m.group(1)}={min(int(m.group(2)), cap)}", value)
            if len(self._capped_memo) >= _MEMO_SIZE:
                self._capped_memo.clear()
            self._capped_memo[value] = capped
        return capped
