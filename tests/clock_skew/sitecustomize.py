"""Skews this process' ``time.time`` (a host whose clock stepped), for the one-clock
tests of ``tests/test_one_clock.py``: put this directory first on ``PYTHONPATH`` and
name a file in ``ISR_CLOCK_SKEW_FILE``; the seconds it holds (``2``, ``-2``; absent:
0) are added to every ``time.time()``, re-read every 0.2 s, so a test can step the
clock of a running server. Only ``time.time``: monotonic clocks are left alone, as
they are when a host's wall clock is stepped.
"""

import os
import time

_path = os.environ.get("ISR_CLOCK_SKEW_FILE")
if _path:
    _real, _monotonic = time.time, time.monotonic
    _state = [float("-inf"), 0.0]  # when last read, the skew

    def _skewed() -> float:
        now = _monotonic()
        if now - _state[0] > 0.2:
            _state[0] = now
            try:
                with open(_path) as f:  # type: ignore[arg-type]
                    _state[1] = float(f.read().strip() or 0)
            except (OSError, ValueError):
                _state[1] = 0.0
        return _real() + _state[1]

    time.time = _skewed
