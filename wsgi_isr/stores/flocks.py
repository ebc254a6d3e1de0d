"""Locks that are atomic across processes: one small file per lock name under
``<store>/locks/``, its state (token and expiry) read and written under ``flock``.

Mixed into :class:`~wsgi_isr.stores.file.FileStore`, which provides ``path`` and ``clock``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import math
import os
from collections.abc import Callable, Iterator

from ..errors import StoreError
from .base import new_token

#: No lock lives longer than this; a lock file claiming more is corrupted.
MAX_LOCK_SECONDS = 24 * 3600


class FlockLocks:
    path: str
    clock: Callable[[], float]

    @contextlib.contextmanager
    def _flocked(self, path: str) -> Iterator[int]:
        """Hold ``flock`` on ``path`` (created if needed, with its directory).

        Lock files may be unlinked by their holder (see :meth:`release`): after taking
        the flock, check that the file is still the one at ``path``, else start over.
        """
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            except FileNotFoundError:  # the directory was removed ("cache clear")
                os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    current = os.stat(path).st_ino
                except FileNotFoundError:
                    current = None
                if current == os.fstat(fd).st_ino:
                    yield fd
                    return
            finally:
                os.close(fd)  # closing drops the flock, also when the process dies

    def _lock_path(self, name: str) -> str:
        return os.path.join(self.path, "locks", hashlib.sha256(name.encode()).hexdigest())

    def _read_lock(self, fd: int) -> tuple[str, float]:
        raw = os.pread(fd, 128, 0).decode("ascii", "replace").split()
        try:
            token, until = raw[0], float(raw[1])
        except (IndexError, ValueError):
            return "", 0.0
        # a corrupted expiry (inf, nan, 1e300) must not hold the key forever
        if not math.isfinite(until) or until > self.clock() + MAX_LOCK_SECONDS:
            return "", 0.0
        return token, until

    def _write_lock(self, fd: int, token: str, until: float) -> None:
        data = f"{token} {until!r}\n".encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)

    def acquire(self, name: str, ttl: float) -> str | None:
        try:
            with self._flocked(self._lock_path(name)) as fd:
                holder, until = self._read_lock(fd)
                now = self.clock()
                if holder and until > now:
                    return None
                token = new_token()
                self._write_lock(fd, token, now + ttl)
                return token
        except OSError as exc:
            raise StoreError(f"cannot take lock in {self.path}: {exc}") from exc

    def release(self, name: str, token: str) -> bool:
        try:
            path = self._lock_path(name)
            with self._flocked(path) as fd:
                if self._read_lock(fd)[0] != token:
                    return False
                # removed, not truncated, so one file per URL ever seen does not pile up;
                # safe because _flocked re-checks the file after taking the flock
                os.unlink(path)
                return True
        except OSError as exc:
            raise StoreError(f"cannot release lock in {self.path}: {exc}") from exc

    def extend(self, name: str, token: str, ttl: float) -> bool:
        try:
            with self._flocked(self._lock_path(name)) as fd:
                holder, until = self._read_lock(fd)
                now = self.clock()
                if holder != token or until <= now:
                    return False
                self._write_lock(fd, token, now + ttl)
                return True
        except OSError as exc:
            raise StoreError(f"cannot extend lock in {self.path}: {exc}") from exc
