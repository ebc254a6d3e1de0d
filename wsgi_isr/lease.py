"""Short leases on render locks, renewed while their render runs.

A render lock is taken for a short lease (a few seconds), not for the longest a
render may take: if the process holding it dies, or hangs as a whole (stopped,
stuck in C code), the lease runs out within seconds and a waiting request takes
over. While the holder is alive, a keeper renews the lease with the store's
``extend`` every third of its length, for at most ``limit`` seconds in all (the
``lock_timeout``): a render that hangs past that loses its lock, and the
regenerator drops its late result.

    keeper = LeaseKeeper(store, lease=5.0, limit=60.0, on_error=log_it)
    with keeper.hold("render:" + key, token):
        render()

The keeper's thread starts at the first ``hold`` in each process (after a fork,
and after gevent patched ``threading``, so under ``gunicorn -k gevent`` it is a
greenlet), and holds no lock across I/O.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from .errors import StoreError

if TYPE_CHECKING:
    from .stores import Store

#: The longest a render lock outlives a dead holder.
LEASE = 5.0


class LeaseKeeper:
    def __init__(
        self,
        store: Store,
        *,
        lease: float,
        limit: float,
        on_error: Callable[[StoreError], None],
    ) -> None:
        self.store = store
        self.lease = lease
        self.limit = limit
        self._on_error = on_error
        # name -> (token, monotonic deadline for renewals); replaced, never mutated,
        # so the keeper iterates a snapshot without a lock
        self._held: dict[str, tuple[str, float]] = {}
        self._pid = 0
        self._wake: threading.Event | None = None

    @contextlib.contextmanager
    def hold(self, name: str, token: str) -> Iterator[None]:
        """Renew the lease on ``name`` while the block runs (up to ``limit`` seconds)."""
        self._ensure_running()
        self._held = {**self._held, name: (token, time.monotonic() + self.limit)}
        try:
            yield
        finally:
            held = dict(self._held)
            if held.get(name, ("",))[0] == token:
                del held[name]
            self._held = held

    def _ensure_running(self) -> None:
        if self._pid == os.getpid():
            return
        # first use in this process (or a forked child): a thread of its own, created
        # now so that it is whatever threading is after gevent patched it
        self._pid = os.getpid()
        self._held = {}
        self._wake = threading.Event()
        thread = threading.Thread(
            target=self._run, args=(self._wake,), name="wsgi_isr-leases", daemon=True
        )
        thread.start()

    def _run(self, wake: threading.Event) -> None:
        interval = self.lease / 3.0
        while not wake.wait(interval):
            if self._pid != os.getpid():
                return
            self.renew_once()

    def renew_once(self) -> None:
        """Extend every lease still within its limit (the keeper calls this)."""
        now = time.monotonic()
        for name, (token, until) in list(self._held.items()):
            if now >= until:
                continue  # hung past lock_timeout: let the lease run out
            try:
                self.store.extend(name, token, self.lease)
            except StoreError as exc:
                self._on_error(exc)

    def stop(self) -> None:
        if self._wake is not None:
            self._wake.set()
        self._pid = 0
