"""``file:///path`` — the embedded default, shared by every worker on one host.

Layout under the root directory (created ``0700``; see :func:`check_directory`)::

    pages/     a :class:`~wsgi_isr.stores.shelf.Shelf` of pages (and Vary markers),
               bounded by ``max_entries`` and ``max_bytes``, O(1) eviction per write
    passes/    hit-for-pass markers, on a shelf of their own (``max_markers``): a flood
               of URLs that do not opt in never evicts a page
    tags.log   append-only JSON lines, one per tag invalidation; never pruned by the
               entry bounds, compacted in place (atomic replace) when it grows
    changes    8 random bytes rewritten after every change, mapped by every process:
               a hit on a memoised record costs no system call while they stay the
               same (:mod:`wsgi_isr.stores.changes`)
    locks/     one small file per lock name; the lock state inside is read and written
               under ``flock``, so "take it if free or expired" is atomic across processes
               (:mod:`wsgi_isr.stores.flocks`)

Every file is read back as data, never as code: records in the format of
:mod:`wsgi_isr.codec`, tag state as JSON, locks and counters as plain text and fixed-size
integers. (Before 0.x the entries were cachelib pickles under ``entries/``; that
directory is no longer read and may be deleted.)

    store = FileStore("/var/cache/myapp-isr", max_entries=100_000, max_bytes="2GB")
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, BinaryIO

from .. import codec
from ..bounded import parse_size
from ..entry import PassMarker, Record, TagState
from ..errors import StoreError
from .base import Store, merge_tag_state, new_token, record_ttl
from .changes import RECHECK_SECONDS, ChangeMark, FifoMemo
from .flocks import FlockLocks
from .memory import held_size
from .shelf import (
    FILE_HEAD,
    MAX_RECORD_BYTES,
    NotRegular,
    Shelf,
    _replace_private,
    open_regular,
    read_regular,
)

log = logging.getLogger("wsgi_isr")

_Sight = tuple[tuple[int, int, int, int] | None, ...]
_Version = tuple[int, int, int]  # (st_ino, st_mtime_ns, st_size) of a record file
#: A memoised lookup: (epoch checked in, version, expiry, record, file name, shelf
#: (0 pages, 1 markers, -1 none), size in the memo's budget)
_Known = tuple[int, _Version, float, "Record | None", str, int, int]

#: In-process bound on the decoded records memoised per store, as
#: :func:`~wsgi_isr.stores.memory.held_size` counts them (plus MEMO_OVERHEAD each).
DECODED_BYTES = 64 << 20
#: What the memo keeps for a record beyond what every holder does: the file's version
#: and name, a longer tuple.
MEMO_OVERHEAD = 150
#: Compact the tag log when it is larger than this and twice its live content.
COMPACT_BYTES = 1 << 20
#: The longest first line of a tag log (its generation, some 50 bytes) read as one.
_GENERATION_BYTES = 1024
#: Bytes a marker file may take on average (the marker shelf's byte budget is this × count).
MARKER_BYTES = 1024


def _generation_line() -> bytes:
    """First line of every tag log file: tells readers a compacted log from the old one."""
    return json.dumps({"generation": new_token()}).encode() + b"\n"


def _log_head(f: BinaryIO, path: str) -> tuple[bytes, int]:
    """The tag log's first line, as readers read it (one not ended within
    ``_GENERATION_BYTES`` is a log being created, or torn), and its size;
    :class:`NotRegular` for a log larger than any reader reads (planted: a sparse file
    costs no disk). What readers and the writer that restarts the log both go by."""
    size = os.fstat(f.fileno()).st_size
    if size > MAX_RECORD_BYTES:
        raise NotRegular(f"over {MAX_RECORD_BYTES} bytes: {path}")
    return f.readline(_GENERATION_BYTES), size


def _state_line(tag: str, state: TagState) -> bytes:
    """One line of the tag log: ``[tag, stale_at, expired_at]``."""
    return json.dumps([tag, state[0], state[1]]).encode() + b"\n"


def check_directory(path: str, *, allow_shared: bool = False) -> None:
    """Create ``path`` ``0700`` if missing; refuse one that another user could write to.

    Whoever can write into the cache directory decides what every worker serves, so
    it must belong to the user running the application and be writable by nobody
    else. ``allow_shared=True`` skips the ownership and mode checks: for operators
    who deliberately share one directory between users, and accept that each of
    them can then spoil (never execute) the others' pages.
    """
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.stat(path)
    except OSError as exc:
        raise StoreError(f"cannot use cache directory {path!r}: {exc}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise ValueError(f"cache directory {path!r} is not a directory")
    if allow_shared:
        return
    if st.st_uid != os.geteuid():
        raise ValueError(
            f"cache directory {path!r} is owned by uid {st.st_uid}, not by this process "
            f"(uid {os.geteuid()}): another user could plant cache entries. Use a directory "
            "of your own, or pass allow_shared_dir=True if sharing it is intended (dangerous)"
        )
    if st.st_mode & 0o022:
        raise ValueError(
            f"cache directory {path!r} is writable by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}): run chmod 700 on it, or pass "
            "allow_shared_dir=True if sharing it is intended (dangerous)"
        )


def _own_dir(path: str, allow_shared: bool) -> None:
    """A subdirectory of the store: created 0700 whatever the umask, then checked."""
    created = not os.path.isdir(path)
    check_directory(path, allow_shared=allow_shared)
    if created:
        with contextlib.suppress(OSError):
            os.chmod(path, 0o700)


class FileStore(FlockLocks, Store):
    """Records, tag state and locks under one directory (see the module docstring).

    :param max_entries: pages kept (0: unbounded); the oldest written go first.
    :param max_bytes: total size of the page files (``int`` or ``"2GB"``; 0: unbounded).
    :param max_markers: hit-for-pass markers kept, on their own budget.
    :param memo_bytes: per process, the decoded records kept in memory (``int`` or
        ``"64MB"``; a 2 KB page takes about 4.3 KB, the headers its hits send included):
        a hit on one of them costs no system call while nothing changed. 0 keeps none
        (every hit reads its file).
    :param allow_shared_dir: skip the ownership and mode checks of the directory.
        Dangerous: any user who can write to it can replace the pages you serve.
    """

    #: No way to wake a waiter in another process: it looks again often, cheaply (the
    #: change mark and the decoded-record memo). One waiter per key and process looks
    #: (the others are handed what it finds), so polling fast costs next to nothing.
    landing_poll = 0.005

    def __init__(
        self,
        path: str,
        *,
        max_entries: int = 100_000,
        max_bytes: int | str = 0,
        max_markers: int = 10_000,
        memo_bytes: int | str = DECODED_BYTES,
        allow_shared_dir: bool = False,
        cache: Any = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(clock=clock)
        if cache is not None:
            raise ValueError(
                "FileStore no longer wraps a cachelib FileSystemCache (it pickles); "
                "pass its directory: open_store(FileSystemCache(...)) does this for you"
            )
        if max_entries < 0 or max_markers < 0:
            raise ValueError("max_entries and max_markers must be >= 0 (0 means unbounded)")
        max_bytes = parse_size(max_bytes)
        self.path = os.path.abspath(path)
        created = not os.path.isdir(self.path)
        check_directory(self.path, allow_shared=allow_shared_dir)
        if created:
            with contextlib.suppress(OSError):  # makedirs' mode is filtered by the umask
                os.chmod(self.path, 0o700)
        for sub in ("pages", "passes", "locks"):
            _own_dir(os.path.join(self.path, sub), allow_shared_dir)
        bounds = f"max_entries={max_entries}" + (f", max_bytes={max_bytes}" if max_bytes else "")
        self.description = f"file://{self.path} ({bounds})"
        self.pages = Shelf(
            os.path.join(self.path, "pages"), max_entries=max_entries, max_bytes=max_bytes
        )
        self.passes = Shelf(
            os.path.join(self.path, "passes"),
            max_entries=max_markers,
            max_bytes=max_markers * MARKER_BYTES,
        )
        self._log_path = os.path.join(self.path, "tags.log")
        self._log_lock_path = os.path.join(self.path, "tags.lock")
        self._tags: dict[str, TagState] = {}
        self._log_id: tuple[int, int, int, int] | None = None
        self._log_pos = 0
        self._generation = b""
        self._refresh_mutex = threading.Lock()
        # a hit checks the change mark (a memory read), then serves the memoised record
        # if nothing changed since it was checked (the same epoch): no system call
        self._mark = ChangeMark(os.path.join(self.path, "changes"))
        self._seen = b""
        self._epoch = 0
        self._recheck_at = time.monotonic() + RECHECK_SECONDS
        self._sight = self._look()
        self._memo: FifoMemo[_Known] = FifoMemo(parse_size(memo_bytes))

    # -- records -------------------------------------------------------------------------

    def lookup(self, key: str) -> tuple[Record | None, Mapping[str, TagState]]:
        tags = self._current_tags()
        epoch = self._epoch  # read after the change mark: see _current_tags
        held = self._memo.get(key)
        known = held[0] if held is not None else None
        if known is None or known[0] != epoch:
            known = self._check(key, known, epoch)
        expires = known[2]
        if expires and expires < time.time():  # the record's TTL, in wall-clock seconds
            return None, tags
        return known[3], tags

    def _check(self, key: str, old: _Known | None, epoch: int) -> _Known:
        """What the files hold for ``key`` now (the page shelf first, then the markers):
        a memoised record whose file is unchanged costs an ``lstat``, another file is
        read and decoded once per version."""
        name = old[4] if old is not None else Shelf.name(key)
        for where, shelf in enumerate((self.pages, self.passes)):
            filename = shelf.path_of(name)
            if old is not None and old[5] == where:
                try:
                    st = os.lstat(filename)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    raise StoreError(f"cannot read {filename}: {exc}") from exc
                if (st.st_ino, st.st_mtime_ns, st.st_size) == old[1]:
                    known = (epoch, *old[1:])
                    self._memo.set(key, known, old[6])
                    return known
            found = self._load(filename, shelf.limit)
            if found is not None:
                version, expires, record = found
                size = held_size(key, record) + MEMO_OVERHEAD
                known = (epoch, version, expires, record, name, where, size)
                self._memo.set(key, known, size)
                return known
        self._memo.pop(key)
        return (epoch, (0, 0, 0), 0.0, None, name, -1, 0)

    def _load(self, filename: str, limit: int) -> tuple[_Version, float, Record | None] | None:
        """The file's version and record; ``None`` when there is no file."""
        try:
            st, data = read_regular(filename, limit)
        except FileNotFoundError:
            return None
        except NotRegular as exc:  # planted: a miss (the next write replaces it)
            log.warning("wsgi_isr: %s; treated as a miss", exc)
            what = exc.st  # memoised by what stands there: one warning per version
            if what is None:
                return (0, 0, 0), 0.0, None
            return (what.st_ino, what.st_mtime_ns, what.st_size), 0.0, None
        except (OSError, MemoryError) as exc:  # a file this process cannot hold: no page
            raise StoreError(f"cannot read {filename}: {type(exc).__name__}: {exc}") from exc
        version = (st.st_ino, st.st_mtime_ns, st.st_size)
        record = None
        expires = 0.0
        if len(data) > FILE_HEAD.size:
            expires = FILE_HEAD.unpack_from(data)[0]
            record = codec.loads(data, FILE_HEAD.size)
        if record is None or not math.isfinite(expires):
            log.warning("wsgi_isr: unreadable cache file %s, treated as a miss", filename)
            return version, 0.0, None
        return version, expires, record

    def put(self, key: str, record: Record, ttl: float | None) -> None:
        payload = codec.dumps(record)
        expires = time.time() + record_ttl(ttl)
        shelf, other = (self.passes, self.pages)
        if not isinstance(record, PassMarker):
            shelf, other = other, shelf
        try:
            try:
                stored = shelf.write(key, payload, expires)
            except FileNotFoundError:
                # the directory was removed (a "cache clear"): recreate it, try once more
                _own_dir(shelf.path, True)
                self._mark.reopen()
                stored = shelf.write(key, payload, expires)
            other.remove(key)
            if not stored:
                shelf.remove(key)  # larger than the whole budget: not kept, nor the old one
                log.warning(
                    "wsgi_isr: record for %r is larger than %d bytes (max_bytes); not stored",
                    key,
                    shelf.limit,
                )
        except OSError as exc:
            with contextlib.suppress(OSError):
                shelf.remove_stale_temp_files(time.time() - 60)
            raise StoreError(f"could not write cache entry under {self.path!r}: {exc}") from exc
        finally:
            self._changed_here()

    def delete(self, key: str) -> None:
        try:
            self.pages.remove(key)
            self.passes.remove(key)
        except OSError as exc:
            raise StoreError(f"cannot delete cache entry under {self.path!r}: {exc}") from exc
        finally:
            self._changed_here()

    def _changed_here(self) -> None:
        """Mark a change (after it is complete): every process rechecks what it memoised."""
        try:
            self._mark.bump()
        except OSError as exc:
            raise StoreError(f"cannot mark a change under {self.path!r}: {exc}") from exc

    def close(self) -> None:
        self._mark.close()
        self._memo.clear()

    def count(self) -> int | None:
        try:
            return self.pages.count() + self.passes.count()
        except OSError:
            return None

    # -- tag state -----------------------------------------------------------------------

    def _current_tags(self) -> Mapping[str, TagState]:
        """The tag state, read again only when the change mark moved; then the memoised
        records are checked again too (a new epoch).

        The mark is read before anything it vouches for, and remembered only after the
        tag log was read: a change completed before the mark was read is seen."""
        seen = self._mark.read()
        if seen and seen == self._seen:
            now = time.monotonic()
            if now < self._recheck_at:
                return self._tags
            # what the mark cannot see (see wsgi_isr.stores.changes): four stats a second
            self._recheck_at = now + RECHECK_SECONDS
            sight, self._sight = self._sight, self._look()
            if sight == self._sight:
                return self._tags
            if self._mark.moved():
                self._mark.reopen()
                seen = self._mark.read()
        self._epoch += 1
        tags = self._refresh_tags()
        self._seen = seen
        return tags

    def _look(self) -> _Sight:
        """Identity and modification time of what changes behind the mark's back: the
        mark itself, the two shelf directories (a file added or removed by hand), the log."""
        sight: list[tuple[int, int, int, int] | None] = []
        for path in (self._mark.path, self.pages.path, self.passes.path, self._log_path):
            try:
                st = os.stat(path)
                sight.append((st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size))
            except OSError:
                sight.append(None)
        return tuple(sight)

    def _refresh_tags(self) -> Mapping[str, TagState]:
        """Bring the in-process copy of tag state up to date with the log.

        The common case costs one ``stat``. A log replaced by compaction is noticed by
        the generation in its first line, even when the new file reuses the inode.
        """
        try:
            st = os.stat(self._log_path)
        except FileNotFoundError:
            return self._tags
        except OSError as exc:
            raise StoreError(f"cannot read {self._log_path}: {exc}") from exc
        ident = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if ident == self._log_id:
            return self._tags
        with self._refresh_mutex:
            try:
                with open_regular(self._log_path) as f:
                    generation, size = _log_head(f, self._log_path)
                    if not generation.endswith(b"\n"):
                        return self._tags  # being created: next call
                    if generation == self._generation and size >= self._log_pos:
                        tags, pos = dict(self._tags), self._log_pos
                        f.seek(pos)
                    else:  # first read, or the log was compacted
                        tags, pos = {}, len(generation)
                    data = f.read()
            except NotRegular as exc:  # planted: no log, until an invalidation replaces it
                log.warning("wsgi_isr: %s; tag log ignored until the next invalidation", exc)
                self._log_id = ident  # one warning per version of what stands there
                return self._tags
            except OSError as exc:
                raise StoreError(f"cannot read {self._log_path}: {exc}") from exc
            end = data.rfind(b"\n") + 1  # a line still being appended waits for next time
            for line in data[:end].splitlines():
                try:
                    tag, stale, expired = json.loads(line)
                    old = tags.get(tag, (0.0, 0.0))
                    tags[tag] = (max(old[0], float(stale)), max(old[1], float(expired)))
                except (ValueError, TypeError):
                    log.warning("wsgi_isr: skipping a malformed line in %s", self._log_path)
            self._tags, self._log_pos, self._generation = tags, pos + end, generation
            self._log_id = ident if end == len(data) else None
            return tags

    def known_tag_states(self) -> Mapping[str, TagState]:
        return self._current_tags()  # a memory read when nothing changed

    def tag_states(self, tags: Iterable[str]) -> dict[str, TagState]:
        current = self._current_tags()
        return {t: current[t] for t in tags if t in current}

    def invalidate(self, tags: Iterable[str], at: float | None = None, *, hard: bool) -> float:
        tags = list(tags)
        try:
            with self._flocked(self._log_lock_path):
                if at is None:  # stamped while the log is ours: in the order of the log
                    at = self.clock()
                current = self._refresh_tags()
                lines = []
                for tag in tags:
                    lines.append(_state_line(tag, merge_tag_state(current.get(tag), at, hard)))
                try:
                    self._append(lines, current)
                    self._maybe_compact()
                finally:
                    self._mark.bump()  # after the lines are whole: readers then see them
                return at
        except OSError as exc:
            raise StoreError(f"cannot record invalidation in {self._log_path}: {exc}") from exc

    def _append(self, lines: list[bytes], current: Mapping[str, TagState]) -> None:
        """Append ``lines`` to the tag log. Called with the log lock held; ``current`` is
        the tag state this process knows, written whole into a restarted log."""
        why = self._unreadable_log()
        if why is not None:  # readers can read none of it: start a new generation
            log.warning("wsgi_isr: %s: %s; the tag log is restarted", self._log_path, why)
            known = b"".join(_state_line(t, s) for t, s in current.items())
            _replace_private(self._log_path, _generation_line() + known + b"".join(lines))
            return
        os.close(os.open(self._log_path, os.O_WRONLY | os.O_CREAT, 0o600))  # private
        with open(self._log_path, "a+b") as f:
            if f.tell() == 0:
                f.write(_generation_line())
            else:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # a torn line (full disk, killed writer)
                    lines.insert(0, b"\n")  # stays a malformed line of its own
            f.write(b"".join(lines))

    def _unreadable_log(self) -> str | None:
        """Why no reader can read the tag log, if so: planted (no regular file, a sparse
        terabyte) or a first line that never ends (torn by a full disk), which readers
        take for a log being created."""
        try:
            with open_regular(self._log_path) as f:
                generation, size = _log_head(f, self._log_path)
        except FileNotFoundError:
            return None
        except NotRegular as exc:
            return str(exc)
        if size and not generation.endswith(b"\n"):
            return "its first line never ends"
        return None

    def _maybe_compact(self) -> None:
        """Rewrite the log with one line per tag. Called with the log lock held."""
        size = os.path.getsize(self._log_path)
        current = self._refresh_tags()
        live = sum(len(t) + 48 for t in current)
        if size < COMPACT_BYTES or size < 2 * live:
            return
        lines = (_state_line(t, s) for t, s in current.items())
        _replace_private(self._log_path, _generation_line() + b"".join(lines))
