"""Instructions per ISR hit, counted by callgrind (noise-free on a shared machine).

    PAGES=6000 valgrind --tool=callgrind --toggle-collect=map_next \\
        python benchmarks/callgrind/hit_instructions.py REPO STORE N [local]

``REPO``: the checkout whose ``wsgi_isr`` and ``benchmarks`` to use; ``STORE``: a store URL
(``memory://?max_entries=20000``) or ``bare``. Every page is rendered and hit twice, then N
hits on random pages run inside one ``map()``: with ``--toggle-collect=map_next`` callgrind
counts only those; the total divided by N is one hit (see ``benchmarks/PROFILE.md``).
"""

import collections
import logging
import os
import random
import sys

repo = sys.argv[1]
sys.path.insert(0, repo)
logging.disable(logging.WARNING)
from benchmarks import probes  # noqa: E402
from benchmarks.apps import isr_app  # noqa: E402

store, n = sys.argv[2], int(sys.argv[3])
pages = probes.many_pages(int(os.environ.get("PAGES", "300")))
opts = {"local_ttl": 3600.0} if sys.argv[4:] == ["local"] else {}
app = isr_app(store, render_seconds=0, **opts) if store != "bare" else probes.bare_app()
for p in pages:
    probes.call(app, p)
    probes.call(app, p)
rng = random.Random(1)
visits = [rng.choice(pages) for _ in range(n)]
collections.deque(map(lambda env: probes.call(app, env), visits), maxlen=0)
