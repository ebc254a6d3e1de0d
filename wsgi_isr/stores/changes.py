"""What lets a file store hit cost no system call: a shared change mark and a record memo.

Every process of a file store maps one small file, ``changes``, holding 8 random bytes.
Whatever changes what a lookup would find (a record written, replaced, removed or
evicted; a tag invalidated) writes new random bytes there *after* the change is
complete. A reader compares the mapping with the bytes it saw last (a memory read):

* equal: nothing changed since its records were checked; a memoised record is served
  as it is, and the tag state it holds is current;
* different: every memoised record is checked once more (one ``stat``) before it is
  served again, and the tag log is read.

Random bytes instead of a counter: two writers never need a common lock (one cannot
undo the other's mark), and a torn read is merely another value (a spurious recheck).

What the mark cannot see is looked for every :data:`RECHECK_SECONDS` (four ``stat``
calls, not one per hit): the directory removed and recreated (the mapping then holds
the old file), files added or removed by hand, a tag log written by a process of an
older version. Any of these starts a new epoch as a change would. A record file
rewritten in place by hand (not how the store writes) is read again at the next change;
its bytes are checked then like any others, so planted bytes never reach a visitor.

    mark = ChangeMark("/var/cache/isr/changes")
    seen = mark.read()      # b"..." (8 bytes)
    mark.bump()             # after a change: every reader sees another value
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import secrets
import stat
import threading
from collections import OrderedDict
from typing import Generic, TypeVar

V = TypeVar("V")

#: Longest time a change made behind the store's back goes unnoticed by a process.
RECHECK_SECONDS = 1.0
_SIZE = 8


class ChangeMark:
    """The ``changes`` file of a store, read through a shared mapping.

    The mapping is used only for a file that is ours (owner = this process's user)
    and long enough; otherwise, or where ``mmap`` is refused (some network or FUSE
    file systems), each read is a ``pread`` — correct, one system call dearer.
    Writers use ``pwrite``: a full disk is then an ``OSError``, never a ``SIGBUS``.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = -1
        self._map: mmap.mmap | None = None
        self._ident: tuple[int, int] | None = None
        self._mutex = threading.Lock()
        self.reopen()

    def reopen(self) -> None:
        """(Re)open the file at ``path``, creating it whole if missing; errors leave
        the mark unusable (:meth:`read` returns ``b""``, which never equals a seen mark)."""
        with self._mutex:
            self._close()
            with contextlib.suppress(OSError):
                self._open()

    def _open(self) -> None:
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self.path, flags)
        except FileNotFoundError:
            self._create()
            fd = os.open(self.path, flags)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(errno.EINVAL, f"not a regular file: {self.path}")
            if st.st_size < _SIZE:  # damaged: made whole again (a spurious change)
                os.pwrite(fd, secrets.token_bytes(_SIZE), 0)
            elif st.st_uid == os.geteuid():
                # another user's file (a shared directory) could be truncated under the
                # mapping, and reading past the end of a mapped file kills the process
                with contextlib.suppress(OSError, ValueError):
                    self._map = mmap.mmap(fd, _SIZE, mmap.MAP_SHARED, mmap.PROT_READ)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._ident = (st.st_dev, st.st_ino)

    def _create(self) -> None:
        """Create the file with its bytes in one step (``link`` of a full temporary
        file), so no reader ever maps a file shorter than the mark."""
        tmp = f"{self.path}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, secrets.token_bytes(_SIZE))
            os.close(fd)
            with contextlib.suppress(FileExistsError):  # another process was first
                os.link(tmp, self.path)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def _close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._ident = None

    def read(self) -> bytes:
        m = self._map
        if m is not None:
            return m[:_SIZE]
        try:
            return os.pread(self._fd, _SIZE, 0) if self._fd >= 0 else b""
        except OSError:
            return b""

    def bump(self) -> None:
        """Tell every reader that something changed. Call *after* the change."""
        with self._mutex:
            fd = self._fd
            if fd < 0:
                with contextlib.suppress(OSError):
                    self._open()
                fd = self._fd
            if fd >= 0:
                os.pwrite(fd, secrets.token_bytes(_SIZE), 0)

    def moved(self) -> bool:
        """True when ``path`` is no longer the file this mark reads (removed, replaced)."""
        try:
            st = os.stat(self.path)
        except OSError:
            return True
        return (st.st_dev, st.st_ino) != self._ident

    def close(self) -> None:
        with self._mutex:
            self._close()


class FifoMemo(Generic[V]):
    """A mapping bounded in bytes (as the caller sizes its items), oldest inserted
    first out. A hit is one ``dict`` lookup with no lock and no reordering: at the
    hit rates that matter, first-in-first-out keeps what least-recently-used would,
    and a hot item evicted is read back once."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[str, tuple[V, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.get = self._items.get  # the hit path: (value, size) or None

    def __len__(self) -> int:
        return len(self._items)

    def set(self, key: str, value: V, size: int) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            if size > self.max_bytes:
                return
            self._items[key] = (value, size)
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, (_, dropped) = self._items.popitem(last=False)
                self.bytes -= dropped

    def pop(self, key: str) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.bytes -= old[1]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.bytes = 0
