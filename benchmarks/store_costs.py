"""What a store's bytes and bounds cost (issue 10): the ``stores`` section.

    python -m benchmarks.store_costs            # 100,000 entries, ~1 minute
    python -m benchmarks.store_costs 10000      # a quicker look

1. Decoding one record, as every hit that is not memoised does: the record format of
   :mod:`wsgi_isr.codec` against the pickled tuples stored before (cachelib's
   ``FileSystemCache`` and ``RedisSerializer`` framing), for a 2 KiB and a 100 KiB page.
2. Writing a new page into a store that is full (``max_entries`` records, so every write
   evicts one) against writing into an empty one, for ``memory://``, ``file://`` and the
   local layer: the median and mean µs per write, and full / empty (the target is ≤ 2).
"""

from __future__ import annotations

import json
import os
import pickle
import statistics
import sys
import tempfile
import time
import timeit
from typing import Any

from wsgi_isr import codec
from wsgi_isr.entry import Entry
from wsgi_isr.stores import FileStore, LocalLayer, MemoryStore, Store
from wsgi_isr.stores.shelf import COMPACT_PAIRS

HEADERS = (
    ("Content-Type", "text/html; charset=utf-8"),
    ("Content-Language", "en"),
    ("Vary", "Accept-Encoding"),
    ("X-Frame-Options", "DENY"),
    ("Link", "</static/site.css>; rel=preload; as=style"),
)
TAGS = ("posts", "post-hello-world", "authors", "author-1", "/", "/blog", "/blog/hello-world")


def page(size: int) -> Entry:
    return Entry(
        "200 OK",
        HEADERS,
        (b"<p>lorem ipsum dolor sit amet</p>\n" * (size // 34 + 1))[:size],
        1_700_000_000.25,
        60.0,
        None,
        TAGS,
        '"3f2a9c"',
        "Tue, 14 Nov 2023 22:13:20 GMT",
    )


def _old_tuple(e: Entry) -> tuple[Any, ...]:
    """The record as it was pickled before (format version 1, ``Entry.to_record``)."""
    return (
        1,
        "E",
        e.status,
        e.headers,
        e.body,
        e.created,
        e.revalidate,
        e.expire,
        e.tags,
        e.etag,
        e.last_modified,
    )


def _old_decode(data: bytes) -> Entry | None:
    """What a hit paid before: unpickle, then the checks of the old ``entry.decode``."""
    value = pickle.loads(data)
    if type(value) is not tuple or len(value) != 11 or value[0] != 1 or value[1] != "E":
        return None
    _, _, status, headers, body, created, reval, expire, tags, etag, lm = value
    if not (
        type(status) is str
        and type(headers) is tuple
        and all(
            type(h) is tuple and len(h) == 2 and type(h[0]) is str and type(h[1]) is str
            for h in headers
        )
        and type(body) is bytes
        and type(created) is float
        and (reval is None or type(reval) is float)
        and (expire is None or type(expire) is float)
        and type(tags) is tuple
        and all(type(t) is str for t in tags)
        and type(etag) is str
        and type(lm) is str
    ):
        return None
    return Entry(status, headers, body, created, reval, expire, tags, etag, lm)


def _best_us(fn: Any, number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=7)) / number * 1e6


def decode_costs() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label, size in (("2 KiB", 2048), ("100 KiB", 100 * 1024)):
        e = page(size)
        new = codec.dumps(e)
        old = pickle.dumps(_old_tuple(e), pickle.HIGHEST_PROTOCOL)
        assert codec.loads(new) == e
        number = 20_000 if size < 10_000 else 5_000
        out[label] = {
            "codec_bytes": len(new),
            "pickle_bytes": len(old),
            "codec_decode_us": _best_us(lambda d=new: codec.loads(d), number),
            "pickle_decode_us": _best_us(lambda d=old: _old_decode(d), number),
            "codec_encode_us": _best_us(lambda e=e: codec.dumps(e), number),
            "pickle_encode_us": _best_us(
                lambda e=e: pickle.dumps(_old_tuple(e), pickle.HIGHEST_PROTOCOL), number
            ),
        }
    return out


def _put_times(store: Store, prefix: str, n: int, record: Entry) -> list[float]:
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        store.put(f"https://bench.local/{prefix}/{i}", record, None)
        times.append((time.perf_counter() - t0) * 1e6)
    return times


def _stats(times: list[float]) -> dict[str, float]:
    return {"median_us": statistics.median(times), "mean_us": statistics.fmean(times)}


def write_costs(entries: int, samples: int = 3_000) -> dict[str, Any]:
    """Write cost into an empty and a full store of ``entries`` records (2 KiB pages)."""
    record = page(2048)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="isr-bench-") as tmp:
        makers = {
            "memory": lambda: MemoryStore(max_entries=entries),
            "file": lambda: FileStore(
                os.path.join(tmp, f"f{time.monotonic_ns()}"), max_entries=entries
            ),
            "local layer": lambda: LocalLayer(
                MemoryStore(max_entries=entries * 2), max_entries=entries, max_bytes=0
            ),
        }
        for name, make in makers.items():
            empty_store, store = make(), make()
            t0 = time.perf_counter()
            for i in range(entries):
                store.put(f"https://bench.local/fill/{i}", record, None)
            fill_s = time.perf_counter() - t0
            # alternate blocks between the two stores, so a change in the machine's load
            # (other processes, the page cache) weighs on both alike
            empty: list[float] = []
            full: list[float] = []
            for block in range(samples // 100):
                empty += _put_times(empty_store, f"empty/{block}", 100, record)
                full += _put_times(store, f"full/{block}", 100, record)
            if name != "local layer":
                assert store.count() == entries, (name, store.count())
            e, f = _stats(empty), _stats(full)
            extra: dict[str, float] = {}
            if isinstance(store, FileStore):
                # the journal compaction a full file store runs once per entries + 65,536
                # writes (not inside the samples above): its cost, and spread per write
                with store.pages._locked() as state:
                    t0 = time.perf_counter()
                    store.pages._compact(state)
                    seconds = time.perf_counter() - t0
                extra = {
                    "compaction_seconds": seconds,
                    "compaction_us_per_write": seconds * 1e6 / (entries + COMPACT_PAIRS),
                }
            out[name] = {
                **extra,
                "empty": e,
                "full": f,
                "ratio_median": f["median_us"] / e["median_us"],
                "ratio_mean": f["mean_us"] / e["mean_us"],
                "fill_seconds": fill_s,
            }
            store.close()
            empty_store.close()
    return {"entries": entries, "samples": samples, "stores": out}


def run(entries: int = 100_000) -> dict[str, Any]:
    return {"decode": decode_costs(), "writes": write_costs(entries)}


if __name__ == "__main__":
    print(json.dumps(run(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000), indent=1))
