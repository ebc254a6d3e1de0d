"""Which fork of the process this is, without a system call: per-process state (a
subscriber thread, lock notes) starts afresh in a forked child, checked on every
request, where ``os.getpid()`` would cost a system call each time."""

from __future__ import annotations

import os

_generation = [0]


def _forked() -> None:
    _generation[0] += 1


os.register_at_fork(after_in_child=_forked)


def generation() -> int:
    """How many forks this process is removed from the one that imported wsgi_isr
    (0 there; it changes in every child, and never goes back to a parent's value)."""
    return _generation[0]
