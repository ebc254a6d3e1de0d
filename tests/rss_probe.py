"""How much memory an in-process page holder really takes, against its byte bound.

    python tests/rss_probe.py HOLDER BUDGET_BYTES HEADERS TAGS BODY_BYTES

HOLDER: ``memory`` (a memory store's ``max_bytes``), ``file-memo`` (a file store's
``memo_bytes``), ``local`` (the local layer's ``max_bytes``, over a backend that decodes every
lookup afresh). The holder is filled with twice as many pages as its bound can keep,
then every page is looked up in random order, three times over, and served as a hit
would be (its :class:`~wsgi_isr.responses.Prepared` built): the holder churns at its
bound. Prints ``{"growth": bytes, "budget": bytes}`` as JSON: the growth of the process'
resident set over what it was before the pages came in. Run in a process of its own, so
that nothing else the test run allocated is counted.
"""

from __future__ import annotations

import gc
import json
import os
import random
import sys
import tempfile

from cachelib import SimpleCache

from wsgi_isr import responses
from wsgi_isr.entry import Entry
from wsgi_isr.stores import FileStore, LocalLayer, MemoryStore


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def page(i: int, headers: int, tags: int, body: int) -> Entry:
    """A page with strings of its own, as a render or a decode gives them."""
    extra = tuple((f"X-Header-{j}", f"value {j} of page {i}") for j in range(headers))
    return Entry(
        "".join(("200", " OK")),
        (("".join(("Content-", "Type")), "text/html; charset=utf-8"), *extra),
        os.urandom(body // 2 + 1).hex().encode()[:body],
        1.7e9,
        60.0,
        None,
        tuple(f"_isr_page:/p/{i}/{j}" for j in range(tags)),
        f'"{i:024x}"',
        "Wed, 02 Dec 2026 00:43:56 GMT",
    )


def main(
    workdir: str, holder: str, budget: int, headers: int, tags: int, body: int
) -> dict[str, int]:
    count = 2 * budget // (body + 400)
    keys = [f"http://127.0.0.1/p/{i}?" for i in range(count)]
    store: FileStore | LocalLayer | MemoryStore
    if holder == "memory":
        gc.collect()
        before = rss()
        store = MemoryStore(max_entries=10**7, max_bytes=budget)
        for i, key in enumerate(keys):
            store.put(key, page(i, headers, tags, body), None)
    else:
        if holder == "file-memo":  # unbounded on disk: its writes are the cheaper ones
            store = FileStore(os.path.join(workdir, "store"), max_entries=0, memo_bytes=budget)
            backend: FileStore | MemoryStore = store
        else:
            # a backend that decodes every lookup from bytes (cachelib's SimpleCache, as
            # a user can pass it): every record the layer keeps is an object of its own
            backend = MemoryStore(cache=SimpleCache(threshold=10**7, default_timeout=0))
            store = LocalLayer(backend, ttl=3600, max_entries=10**7, max_bytes=budget)
        for i, key in enumerate(keys):
            backend.put(key, page(i, headers, tags, body), None)
        gc.collect()
        before = rss()
    for _ in range(3):
        for key in random.sample(keys, len(keys)):
            record = store.lookup(key)[0]
            if isinstance(record, Entry):
                responses.prepared(record)
    gc.collect()
    return {"growth": rss() - before, "budget": budget}


if __name__ == "__main__":
    name, *numbers = sys.argv[1:]
    with tempfile.TemporaryDirectory(prefix="rss-probe-") as workdir:
        print(json.dumps(main(workdir, name, *(int(n) for n in numbers))))
