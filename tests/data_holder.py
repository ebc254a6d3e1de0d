"""A cached function's body for ``tests/test_datacache.py``, importable by the test and
by the child process it kills (the same module and name: the same data key).

With ``DATA_HOLDER_HANG`` set, the body says it started (the file ``flag``) and hangs,
as a process stuck on its database would, until the test kills it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def report(flag: str) -> dict[str, int]:
    if os.environ.get("DATA_HOLDER_HANG"):
        Path(flag).write_text("started")
        time.sleep(120)
    return {"pid": os.getpid()}
