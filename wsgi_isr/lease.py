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

:class:`HeldLocks` is what a process knows of render locks without asking the
store (its own regeneration, another holder found within the last lease), so
that the visitors of a page being regenerated cost no lock attempt each.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, NamedTuple

from .errors import StoreError
from .forks import generation

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


class Ticket(NamedTuple):
    """When an attempt on a lock began: its number (in this process' order of attempts
    and landings), on the monotonic clock, and on the store's clock."""

    n: int
    monotonic: float
    clock: float


class HeldLocks:
    """What this process knows of render locks without asking the store, so that the
    visitors of a page being regenerated do not each try its lock (on Redis a round
    trip each: a STALE visitor would cost two or three where a HIT costs one).

    A note says: lock ``name`` is held, for visitors who saw the record created at
    ``seen``. It is taken when this process took the lock (its own regeneration) or
    found another holder's — and, for as long as a visitor's attempt is under way,
    so that the others who saw the same record wait for its answer (they would have
    lost the race for the lock) instead of each asking at once — and it lapses at the
    first of

    - its deadline, at most one lease from when the attempt began, on the monotonic
      clock and on the store's (a test's fake clock): a holder that died, or hung past
      ``lock_timeout``, stops renewing, and its lease runs out within one;
    - a visitor who saw another record (a render landed: the next one must be free to
      start at once, say after an invalidation made the landed page stale already);
    - a landing of the key, heard here or announced by another process
      (:meth:`forget`). That also voids a note of an attempt that was under way when
      the landing was heard (its ticket is older), which the store may have answered
      "held" just before the holder let go.

        ticket = held.ticket()
        if store.acquire(name, lease) is None:
            held.note(name, seen, ticket, lease)
        ...
        held.quiet(name, seen)   # True: do not ask
    """

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        monotonic: Callable[[], float] = time.monotonic,
        max_bytes: int = 4 << 20,
    ) -> None:
        self.clock = clock
        self.monotonic = monotonic
        self.max_bytes = max_bytes
        self._numbers = itertools.count(1)  # next() is atomic: no mutex on this path
        self._reset()

    def _reset(self) -> None:
        # tickets up to the floor are void: those of another process (before a fork),
        # or of attempts under way when the forgotten landings were dropped (size bound)
        self._floor = next(self._numbers)
        self._notes: dict[str, tuple[float | None, int, float, float]] = {}
        self._forgotten: dict[str, int] = {}  # name -> the number of its last landing
        self._bytes = 0
        self._fork = generation()

    def ticket(self) -> Ticket:
        return Ticket(next(self._numbers), self.monotonic(), self.clock())

    def quiet(self, name: str, seen: float | None) -> bool:
        """True if lock ``name`` is known to be held for visitors who saw ``seen``."""
        if self._fork != generation():  # a forked child: its parent's holds are not its own
            self._reset()
            return False
        note = self._notes.get(name)
        if note is None or note[0] != seen:
            return False
        n = note[1]
        if n <= self._floor or n <= self._forgotten.get(name, 0):
            return False  # checked here too: a landing may come between note()'s two steps
        return self.monotonic() < note[2] and self.clock() < note[3]

    def note(self, name: str, seen: float | None, ticket: Ticket, seconds: float) -> None:
        """Lock ``name`` was found held (or taken) by the attempt of ``ticket``, and stays
        so for ``seconds`` from when it began, unless a landing is heard sooner."""
        if self._fork != generation() or seconds <= 0:
            return
        if ticket.n <= self._floor or ticket.n <= self._forgotten.get(name, 0):
            return  # a landing was heard meanwhile: the answer may be out of date
        self._grow(len(name))
        self._notes[name] = (seen, ticket.n, ticket.monotonic + seconds, ticket.clock + seconds)

    def drop(self, name: str, ticket: Ticket) -> None:
        """Drop the note of ``ticket``'s attempt (not a later one's), if it is there."""
        note = self._notes.get(name)
        if note is not None and note[1] == ticket.n:
            self._notes.pop(name, None)

    def forget(self, name: str) -> None:
        """The render under ``name`` landed (or gave up): ask again, from now on."""
        if self._fork != generation():
            self._reset()
        self._grow(len(name))
        self._forgotten[name] = next(self._numbers)
        self._notes.pop(name, None)

    def _grow(self, size: int) -> None:
        self._bytes += size + 150  # the key, the tuple, the dict slot: a rough count
        if self._bytes > self.max_bytes:  # many keys: start afresh (notes only save trips)
            self._reset()
