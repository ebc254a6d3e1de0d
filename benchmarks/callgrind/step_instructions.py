"""Instructions per step of an ISR hit, counted by callgrind: each step runs inside its own C
iterator (``map`` = request key, ``filter`` = store lookup, ``starmap`` = store clock,
``dropwhile`` = freshness, ``takewhile`` = header list, ``filterfalse`` = 304 check,
``accumulate`` = counter, ``functools.reduce`` = the whole hit, ``min`` = the bare app,
``groupby`` = a no-op lambda: the harness' own cost), so callgrind_annotate's inclusive cost of
that C function is the step's. ``steps.sh REPO STORE PAGES [local]`` runs it for N=500 and
N=1000 and prints the difference per call (setup cancels out).
"""

import collections
import functools
import itertools
import logging
import random
import sys

repo = sys.argv[1]
sys.path.insert(0, repo)
logging.disable(logging.WARNING)
from benchmarks import probes  # noqa: E402
from benchmarks.apps import page_app  # noqa: E402
from wsgi_isr import ISRMiddleware  # noqa: E402
from wsgi_isr import responses as R  # noqa: E402
from wsgi_isr.keys import request_key  # noqa: E402

store, npages, n = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
app = page_app(render_seconds=0)
opts = {"local_ttl": 3600.0} if sys.argv[5:] == ["local"] else {}
app.wsgi_app = ISRMiddleware(app.wsgi_app, store=store, **opts)
mw = app.wsgi_app
pages = probes.many_pages(npages)
for p in pages:
    probes.call(app, p)
    probes.call(app, p)
rng = random.Random(1)
visits = [rng.choice(pages) for _ in range(n)]
rks = [request_key(e) for e in visits]
keys = [rk.key for rk in rks]
found = [mw.store.lookup(k) for k in keys]
now = mw.store.now()
sink = collections.deque(maxlen=0).extend
bare = probes.bare_app()
sink(map(lambda e: request_key(e), visits))  # map_next
sink(filter(lambda k: mw.store.lookup(k), keys))  # filter_next
sink(itertools.starmap(lambda: mw.store.now(), [()] * n))  # starmap_next
sink(itertools.dropwhile(lambda p: p[0].state(now, p[1]), found))  # dropwhile_next
sink(itertools.takewhile(lambda p: R.entry_headers(p[0], now, R.HIT), found))  # takewhile_next
sink(
    itertools.filterfalse(lambda i: R.not_modified(found[i][0], visits[i]), range(n))
)  # filterfalse_next
sink(itertools.accumulate(range(n), lambda a, b: mw.stats.incr("hits")))  # accumulate_next
functools.reduce(lambda a, e: probes.call(app, e), visits, None)  # functools_reduce
sink(itertools.groupby(range(n), key=lambda i: None))  # groupby_next (the lambda and loop alone)
min(range(n), key=lambda i: probes.call(bare, visits[i]) and 0)  # min_max
