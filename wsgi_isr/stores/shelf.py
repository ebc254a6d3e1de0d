"""A directory of record files bounded in entries and bytes, O(1) per write.

The file store keeps pages on one shelf and hit-for-pass markers on another, each
with its own budget. Layout of a shelf directory::

    <sha256 of the key>   one file per record: a 16-byte header (expiry in wall-clock
                          seconds, 0 = never; a random write id), then codec bytes
    index                 count, bytes and the journal's head, as fixed-size integers
                          (read and written under ``flock`` on this file)
    journal               append-only (digest, write id) pairs in write order

A write replaces its file (``mkstemp`` + ``os.replace``), then, under the index lock,
updates the count and appends to the journal. While the shelf is over budget, the
oldest journal pair is taken: if the file still carries that write id it is removed,
else it was rewritten or deleted since and the pair is skipped. Each pair is read at
most once, so eviction costs O(1) per write whether the shelf is empty or full —
no directory scan (the journal is compacted, rarely, when it holds far more pairs
than there are records).
Counts are kept under one lock, so they stay right with any number of writer
processes. A directory scan happens only to rebuild an index that is missing,
unreadable, or contradicted by the files (someone removed them by hand).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import secrets
import stat
import struct
import tempfile
from collections.abc import Iterator
from typing import BinaryIO

log = logging.getLogger("wsgi_isr")

try:  # the C function: under gevent, ``os.close`` is its Python wrapper, which spends two
    # more system calls (fcntl, fstat) finding out what read_regular already knows: the
    # file is a regular one, which gevent then closes with this same function
    from posix import close as _close_regular
except ImportError:  # pragma: no cover - not a POSIX system
    _close_regular = os.close

#: Record file header: expiry (float seconds, 0.0 never), write id.
FILE_HEAD = struct.Struct(">dQ")
_INDEX = struct.Struct(">8sqqq")  # magic, count, bytes, journal head
_INDEX_MAGIC = b"wISRidx1"
_PAIR = struct.Struct(">32sQ")
#: Compact the journal when it holds this many pairs more than twice the records.
COMPACT_PAIRS = 65_536
_TEMP_PREFIX = ".tmp-"


class NotRegular(OSError):
    """What stands at a record's path is not a record file the store wrote (planted): no
    regular file, or one larger than any it writes."""

    st: os.stat_result | None = None


#: What ``open`` answers for a planted thing that no read should touch: a symbolic link
#: (``O_NOFOLLOW``), a UNIX socket (``ENXIO``), a device node with no driver (``ENODEV``).
_PLANTED_ERRNOS = frozenset((errno.ELOOP, errno.ENXIO, errno.ENODEV))
#: The largest record file a shelf without a byte budget writes or reads: far above any
#: page the middleware stores (``max_entry_bytes`` defaults to 5 MB), far below what a
#: read may allocate at once (a sparse file of a terabyte costs no disk).
MAX_RECORD_BYTES = 1 << 30


def _planted(path: str, exc: OSError) -> NotRegular | None:
    """The refusal for what ``open`` could not open at ``path``, if it was a planted thing
    (:data:`_PLANTED_ERRNOS`), with the status of what stands there."""
    if exc.errno not in _PLANTED_ERRNOS:
        return None
    refused = NotRegular(f"not a regular file: {path}")
    refused.st = os.lstat(path)
    return refused


def open_regular(path: str) -> BinaryIO:
    """Open a file of the store for reading, refusing what was planted instead of a
    file: a symbolic link (to ``/dev/zero``, say) or a FIFO that would block the reader
    forever, a directory, a device, a socket (:class:`NotRegular`)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        refused = _planted(path, exc)
        if refused is not None:
            raise refused from exc
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegular(f"not a regular file: {path}")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
#: A read that leaves the access time alone does not dirty the inode (with ``relatime``,
#: the first read after every write would): allowed on files we own, refused (EPERM) on
#: another user's, which are then opened without it.
_NOATIME = getattr(os, "O_NOATIME", 0)


def read_regular(path: str, limit: int = MAX_RECORD_BYTES) -> tuple[os.stat_result, bytes]:
    """The status and content of a file of the store, refusing what :func:`open_regular`
    refuses and a file larger than ``limit`` bytes, which no write of the store made
    (:class:`NotRegular`, with the status of what stands there in ``.st``).

    Four system calls (open, fstat, read, close) and no file object: the file store's
    read of a record it has not memoised. A record file is replaced whole, never
    written in place, so one ``read`` of the size ``fstat`` gave is the whole file."""
    try:
        try:
            fd = os.open(path, _READ_FLAGS | _NOATIME)
        except PermissionError:
            fd = os.open(path, _READ_FLAGS)
    except OSError as exc:
        refused = _planted(path, exc)
        if refused is not None:
            raise refused from exc
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            what = f"over {limit} bytes" if stat.S_ISREG(st.st_mode) else "not a regular file"
            refused = NotRegular(f"{what}: {path}")
            refused.st = st
            raise refused
        data = os.read(fd, st.st_size)
        while len(data) < st.st_size:  # a signal, or a file written in place by hand
            more = os.read(fd, st.st_size - len(data))
            if not more:
                break
            data += more
    except BaseException:
        os.close(fd)
        raise
    _close_regular(fd)
    return st, data


def _replace_private(path: str, data: bytes) -> None:
    """Atomically replace ``path`` with ``data``, readable by the owner only."""
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class Shelf:
    def __init__(self, path: str, *, max_entries: int, max_bytes: int) -> None:
        self.path = path
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        #: The largest record file written or read: the budget, else MAX_RECORD_BYTES.
        self.limit = max_bytes or MAX_RECORD_BYTES
        self._index = os.path.join(path, "index")
        self._journal = os.path.join(path, "journal")

    def filename(self, key: str) -> str:
        return self.path_of(self.name(key))

    def path_of(self, name: str) -> str:
        """The path of the record file called ``name`` (a :meth:`name`) on this shelf."""
        return f"{self.path}/{name}"

    @staticmethod
    def digest(key: str) -> bytes:
        return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()

    @staticmethod
    def name(key: str) -> str:
        """The file name of ``key``'s record: its :meth:`digest` in hexadecimal."""
        return Shelf.digest(key).hex()

    # -- the index -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[list[int]]:
        """Hold the index lock; yield ``[count, bytes, head]``, written back on exit."""
        fd = os.open(self._index, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            raw = os.pread(fd, _INDEX.size, 0)
            state: list[int] | None = None
            if len(raw) == _INDEX.size:
                magic, count, size, head = _INDEX.unpack(raw)
                if magic == _INDEX_MAGIC and count >= 0 and size >= 0 and head >= 0:
                    state = [count, size, head]
            before: list[int] | None = None  # None: write it back whatever happens
            if state is None:
                if raw:
                    log.warning("wsgi_isr: unreadable index in %s, rebuilt", self.path)
                state = self._rebuild()
            else:
                before = list(state)
            yield state
            if state != before:
                os.pwrite(fd, _INDEX.pack(_INDEX_MAGIC, *state), 0)
        finally:
            os.close(fd)  # drops the flock, also when the process dies

    def _rebuild(self) -> list[int]:
        """Count the files and write a fresh journal in modification order. The only
        directory scan; called with the index lock held."""
        found: list[tuple[int, bytes, int, int]] = []
        with os.scandir(self.path) as entries:
            for entry in entries:
                if len(entry.name) != 64:
                    continue
                try:
                    digest = bytes.fromhex(entry.name)
                    st = entry.stat()
                    with open_regular(entry.path) as f:
                        head = f.read(FILE_HEAD.size)
                except (ValueError, OSError):
                    continue
                wid = FILE_HEAD.unpack(head)[1] if len(head) == FILE_HEAD.size else 0
                found.append((st.st_mtime_ns, digest, wid, st.st_size))
        found.sort()
        _replace_private(self._journal, b"".join(_PAIR.pack(d, w) for _, d, w, _ in found))
        return [len(found), sum(s for *_, s in found), 0]

    # -- records ---------------------------------------------------------------------------

    def read(self, key: str) -> bytes | None:
        try:
            with open_regular(self.filename(key)) as f:
                return f.read()
        except FileNotFoundError:
            return None

    def write(self, key: str, payload: bytes, expires: float) -> bool:
        """Store ``payload``; False if it is larger than the whole byte budget (or, with
        none, than :data:`MAX_RECORD_BYTES`)."""
        wid = secrets.randbits(64)
        data = FILE_HEAD.pack(expires, wid) + payload
        if len(data) > self.limit:
            return False
        target = self.filename(key)
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=_TEMP_PREFIX)
        try:
            with os.fdopen(fd, "wb") as f:
                self._fill(f, data)
            with self._locked() as state:
                try:
                    old: int | None = os.stat(target).st_size
                except FileNotFoundError:
                    old = None
                os.replace(tmp, target)
                if old is None:
                    state[0] += 1
                    state[1] += len(data)
                else:
                    state[1] += len(data) - old
                flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                jfd = os.open(self._journal, flags, 0o600)
                try:
                    os.write(jfd, _PAIR.pack(self.digest(key), wid))
                    journal_size = os.fstat(jfd).st_size
                finally:
                    os.close(jfd)
                self._evict(state, journal_size)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return True

    def _fill(self, f: BinaryIO, data: bytes) -> None:
        """Write a record file's content (a seam for the fault tests: a full disk, a kill)."""
        f.write(data)

    def remove(self, key: str) -> None:
        target = self.filename(key)
        if not os.path.exists(target):
            return
        with self._locked() as state:
            try:
                size = os.stat(target).st_size
                os.unlink(target)
            except FileNotFoundError:
                return
            state[0] = max(0, state[0] - 1)
            state[1] = max(0, state[1] - size)

    def count(self) -> int:
        with self._locked() as state:
            return state[0]

    def _over(self, state: list[int]) -> bool:
        return bool(
            (self.max_entries and state[0] > self.max_entries)
            or (self.max_bytes and state[1] > self.max_bytes)
        )

    def _evict(self, state: list[int], journal_size: int) -> None:
        rebuilt = False
        fd = os.open(self._journal, os.O_RDONLY)
        try:
            while self._over(state):
                # never evict the record just written (the last pair): reaching it while
                # still over means the count is wrong — files were removed behind our back
                pair = b""
                if state[2] + _PAIR.size < journal_size:
                    pair = os.pread(fd, _PAIR.size, state[2])
                if len(pair) < _PAIR.size:
                    if rebuilt:  # pragma: no cover - a rebuilt journal lists every file
                        return
                    log.warning("wsgi_isr: index of %s disagreed with its files", self.path)
                    state[:] = self._rebuild()  # count again: rare, and the only scan
                    rebuilt = True
                    journal_size = state[0] * _PAIR.size
                    os.close(fd)
                    fd = os.open(self._journal, os.O_RDONLY)
                    continue
                state[2] += _PAIR.size
                digest, wid = _PAIR.unpack(pair)
                path = self.path_of(digest.hex())
                try:
                    with open_regular(path) as f:
                        head = f.read(FILE_HEAD.size)
                        size = os.fstat(f.fileno()).st_size
                except FileNotFoundError:
                    continue
                except OSError:  # planted: not a record file
                    continue
                if len(head) == FILE_HEAD.size and FILE_HEAD.unpack(head)[1] == wid:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                        state[0] = max(0, state[0] - 1)
                        state[1] = max(0, state[1] - size)
        finally:
            os.close(fd)
        if journal_size // _PAIR.size > 2 * state[0] + COMPACT_PAIRS:
            self._compact(state)

    def _compact(self, state: list[int]) -> None:
        """Rewrite the journal with one pair per live file, in write order: drops the
        consumed head and the pairs of rewritten or deleted records. Amortised O(1):
        it runs after more writes than there are records."""
        with open(self._journal, "rb") as j:
            j.seek(state[2])
            data = j.read()
        last: dict[bytes, int] = {}
        for offset in range(0, len(data) - _PAIR.size + 1, _PAIR.size):
            digest, wid = _PAIR.unpack_from(data, offset)
            last.pop(digest, None)
            last[digest] = wid
        live = [_PAIR.pack(d, w) for d, w in last.items() if os.path.exists(self.path_of(d.hex()))]
        _replace_private(self._journal, b"".join(live))
        state[2] = 0

    def remove_stale_temp_files(self, cutoff: float) -> None:
        """Temporary files a killed or failed write left behind, older than ``cutoff``."""
        with os.scandir(self.path) as entries:
            for entry in entries:
                if entry.name.startswith(_TEMP_PREFIX) and entry.stat().st_mtime < cutoff:
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
