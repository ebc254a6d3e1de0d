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

The keeper's thread runs only while leases are held: it starts at a ``hold``
when none is running in this process (so after a fork, and after gevent patched
``threading`` — under ``gunicorn -k gevent`` it is a greenlet), ends when the
last lease is given back, and holds no lock across I/O.
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
        # so the keeper iterates a snapshot
        self._held: dict[str, tuple[str, float]] = {}
        self._pid = 0  # the process whose keeper thread runs, 0 for none
        self._mutex: threading.Lock | None = None

    @contextlib.contextmanager
    def hold(self, name: str, token: str, limit: float | None = None) -> Iterator[None]:
        """Renew the lease on ``name`` while the block runs, for at most ``limit``
        seconds (default: the keeper's)."""
        mutex = self._start()
        until = time.monotonic() + (self.limit if limit is None else limit)
        with mutex:
            self._held = {**self._held, name: (token, until)}
        try:
            yield
        finally:
            with mutex:
                held = dict(self._held)
                if held.get(name, ("",))[0] == token:
                    del held[name]
                self._held = held

    def _start(self) -> threading.Lock:
        """The mutex of this process' keeper, starting the keeper thread if needed."""
        pid = os.getpid()
        if self._mutex is None or self._pid not in (0, pid):
            # first use in this process, or a forked child: objects of its own, made
            # now, after gevent had its chance to patch threading
            self._mutex, self._held, self._pid = threading.Lock(), {}, 0
        with self._mutex:
            if self._pid == pid:
                return self._mutex
            self._pid = pid
        threading.Thread(target=self._run, name="wsgi_isr-leases", daemon=True).start()
        return self._mutex

    def _run(self) -> None:
        interval = self.lease / 3.0
        mutex = self._mutex
        assert mutex is not None
        while True:
            time.sleep(interval)
            with mutex:
                if not self._held:  # the last lease was given back: stop until the next
                    self._pid = 0
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
