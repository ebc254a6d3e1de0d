"""How much memory an in-process holder of records really takes, against its byte bound.

    python tests/rss_probe.py HOLDER BUDGET_BYTES KIND HEADERS TAGS SIZE

HOLDER: ``memory`` (a memory store's ``max_bytes``), ``file-memo`` (a file store's
``memo_bytes``), ``local`` (the local layer's ``max_bytes``, over a backend that decodes every
lookup afresh). KIND: ``page`` (HEADERS headers beyond Content-Type, TAGS tags, a body of
SIZE bytes), ``data`` (a cached function's JSON result of SIZE characters, ASCII but for
HEADERS characters outside Latin-1 — one makes CPython keep every character in 2 bytes,
or in 4 for an emoji, which HEADERS=2 puts in — and TAGS tags) or ``vary`` (a Vary marker
naming HEADERS request headers). The holder is filled with twice as many records as its
bound can keep, then every one is looked up in random order, three times over, a page
served as a hit would be (its :class:`~wsgi_isr.responses.Prepared` built): the holder
churns at its bound. Prints ``{"growth": bytes, "budget": bytes}`` as JSON: the growth of
the process' resident set over what it was before the records came in. Run in a process of
its own, so that nothing else the test run allocated is counted.
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
from wsgi_isr.entry import DataEntry, Entry, Record, VaryMarker
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


def data(i: int, wide: int, tags: int, size: int) -> DataEntry:
    """A cached function's result: JSON text of ``size`` characters."""
    text = f"{i:08d}" + "x" * size
    if wide:  # a typographic quote (2 bytes a character), an emoji (4)
        text = ("\u2019" if wide == 1 else "\U0001f600") + text
    value = json.dumps(text[:size], ensure_ascii=False)
    return DataEntry(value, 1.7e9, 60.0, None, tuple(f"data:{i}/{j}" for j in range(tags)))


def vary(i: int, headers: int) -> VaryMarker:
    return VaryMarker(tuple(f"x-vary-{j}-{i % 7}" for j in range(headers)))


def record(kind: str, i: int, headers: int, tags: int, size: int) -> Record:
    if kind == "page":
        return page(i, headers, tags, size)
    if kind == "data":
        return data(i, headers, tags, size)
    return vary(i, headers)


def main(
    workdir: str, holder: str, budget: int, kind: str, headers: int, tags: int, size: int
) -> dict[str, int]:
    per = {"page": size + 400, "data": size + 300, "vary": 30 * headers + 300}[kind]
    count = 2 * budget // per
    keys = [f"http://127.0.0.1/p/{i}?" for i in range(count)]
    store: FileStore | LocalLayer | MemoryStore
    if holder == "memory":
        gc.collect()
        before = rss()
        store = MemoryStore(max_entries=10**7, max_bytes=budget)
        for i, key in enumerate(keys):
            store.put(key, record(kind, i, headers, tags, size), None)
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
            backend.put(key, record(kind, i, headers, tags, size), None)
        gc.collect()
        before = rss()
    for _ in range(3):
        for key in random.sample(keys, len(keys)):
            found = store.lookup(key)[0]
            if isinstance(found, Entry):
                responses.prepared(found)
    gc.collect()
    return {"growth": rss() - before, "budget": budget}


if __name__ == "__main__":
    holder, budget, kind, *numbers = sys.argv[1:]
    with tempfile.TemporaryDirectory(prefix="rss-probe-") as workdir:
        print(json.dumps(main(workdir, holder, int(budget), kind, *(int(n) for n in numbers))))
