"""``file:///path`` — the embedded default, shared by every worker on one host.

Layout under the root directory::

    entries/   cachelib FileSystemCache (mkstemp + os.replace: readers never see half a file)
    tags.log   append-only JSON lines, one per tag invalidation; never pruned by the
               entry threshold, compacted in place (atomic replace) when it grows
    locks/     one small file per lock name; the lock state inside is read and written
               under ``flock``, so "take it if free or expired" is atomic across processes
               (cachelib's ``FileSystemCache.add`` is check-then-set and is not)

    store = FileStore("/var/cache/myapp-isr", max_entries=100_000)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import pickle
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from cachelib import FileSystemCache

from ..entry import Record, TagState, decode, encode
from ..errors import StoreError
from .base import Store, merge_tag_state, new_token, record_ttl

log = logging.getLogger("wsgi_isr")

#: No lock lives longer than this; a lock file claiming more is corrupted.
MAX_LOCK_SECONDS = 24 * 3600
#: In-process bound on decoded entries kept per store (their files' total size).
DECODED_BYTES = 32 << 20
#: Compact the tag log when it is larger than this and twice its live content.
COMPACT_BYTES = 1 << 20


def _generation_line() -> bytes:
    """First line of every tag log file: tells readers a compacted log from the old one."""
    return json.dumps({"generation": new_token()}).encode() + b"\n"


class FileStore(Store):
    def __init__(
        self,
        path: str,
        *,
        max_entries: int = 100_000,
        cache: Any = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(clock=clock)
        if max_entries < 0:
            raise ValueError("max_entries must be >= 0 (0 means unbounded)")
        self.path = os.path.abspath(path)
        self.description = f"file://{self.path}"
        try:
            os.makedirs(os.path.join(self.path, "locks"), exist_ok=True)
            self.cache = cache or FileSystemCache(
                os.path.join(self.path, "entries"), threshold=max_entries, default_timeout=0
            )
        except OSError as exc:
            raise StoreError(f"cannot use cache directory {self.path!r}: {exc}") from exc
        self._log_path = os.path.join(self.path, "tags.log")
        self._log_lock_path = os.path.join(self.path, "tags.lock")
        self._tags: dict[str, TagState] = {}
        self._log_id: tuple[int, int, int, int] | None = None
        self._log_pos = 0
        self._generation = b""
        self._refresh_mutex = threading.Lock()
        # decoded records by key: (file version, cachelib expiry, record, size)
        self._decoded: OrderedDict[str, tuple[Any, ...]] = OrderedDict()
        self._decoded_bytes = 0

    # -- records -------------------------------------------------------------------------

    def lookup(self, key: str) -> tuple[Record | None, Mapping[str, TagState]]:
        return self._record(key), self._refresh_tags()

    def _record(self, key: str) -> Record | None:
        """The record in the entry file, decoded once per version of the file: a hit
        costs a ``stat`` while the file is unchanged."""
        filename = self.cache._get_filename(key)
        try:
            st = os.stat(filename)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"cannot read {filename}: {exc}") from exc
        version = (st.st_ino, st.st_mtime_ns, st.st_size)
        known = self._decoded.get(key)
        if known is None or known[0] != version:
            known = (version, *self._load(filename, key))
            self._remember(key, known, st.st_size)
        expires: int = known[1]
        record: Record | None = known[2]
        if expires and expires < time.time():  # cachelib's own expiry, in wall-clock seconds
            return None
        return record

    def _load(self, filename: str, key: str) -> tuple[int, Record | None]:
        try:
            with open(filename, "rb") as f:
                data = f.read()
            (expires,) = struct.unpack("I", data[:4])
            return expires, decode(pickle.loads(data[4:]))
        except FileNotFoundError:
            return 0, None
        except Exception:  # truncated or corrupted: unpickling can raise anything
            log.warning("wsgi_isr: unreadable cache file for %r, treated as a miss", key)
            return 0, None

    def _remember(self, key: str, known: tuple[Any, ...], size: int) -> None:
        with self._refresh_mutex:
            old = self._decoded.pop(key, None)
            if old is not None:
                self._decoded_bytes -= old[3]
            while self._decoded and self._decoded_bytes + size > DECODED_BYTES:
                _, dropped = self._decoded.popitem(last=False)
                self._decoded_bytes -= dropped[3]
            self._decoded[key] = (*known, size)
            self._decoded_bytes += size

    def put(self, key: str, record: Record, ttl: float | None) -> None:
        value = encode(record)
        if self.cache.set(key, value, timeout=record_ttl(ttl)):
            return
        # the directory may have been removed (a "cache clear"), or the disk is full:
        # recreate it and try once more, then clean up what the failed writes left
        with contextlib.suppress(OSError):
            os.makedirs(self.cache._path, exist_ok=True)
        if not self.cache.set(key, value, timeout=record_ttl(ttl)):
            self._remove_stale_temp_files()
            raise StoreError(f"could not write cache entry under {self.path!r}")

    def _remove_stale_temp_files(self) -> None:
        """cachelib leaves its temporary file behind when a write fails (a full disk):
        remove those older than a minute, so failures do not fill the disk further."""
        suffix = self.cache._fs_transaction_suffix
        cutoff = time.time() - 60
        try:
            with os.scandir(self.cache._path) as entries:
                for entry in entries:
                    if entry.name.endswith(suffix) and entry.stat().st_mtime < cutoff:
                        os.unlink(entry.path)
        except OSError:
            pass

    def delete(self, key: str) -> None:
        self.cache.delete(key)

    def count(self) -> int | None:
        try:
            return sum(1 for n in os.listdir(self.cache._path) if not self.cache._is_mgmt(n))
        except OSError:
            return None

    # -- tag state -----------------------------------------------------------------------

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
                with open(self._log_path, "rb") as f:
                    generation = f.readline()
                    if not generation.endswith(b"\n"):
                        return self._tags  # being created: next call
                    if (
                        generation == self._generation
                        and os.fstat(f.fileno()).st_size >= self._log_pos
                    ):
                        tags, pos = dict(self._tags), self._log_pos
                        f.seek(pos)
                    else:  # first read, or the log was compacted
                        tags, pos = {}, len(generation)
                    data = f.read()
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
        return self._refresh_tags()  # one stat when nothing changed

    def tag_states(self, tags: Iterable[str]) -> dict[str, TagState]:
        current = self._refresh_tags()
        return {t: current[t] for t in tags if t in current}

    @contextlib.contextmanager
    def _flocked(self, path: str) -> Iterator[int]:
        """Hold ``flock`` on ``path`` (created if needed, with its directory).

        Lock files may be unlinked by their holder (see :meth:`release`): after taking
        the flock, check that the file is still the one at ``path``, else start over.
        """
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:  # the directory was removed ("cache clear")
                os.makedirs(os.path.dirname(path), exist_ok=True)
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
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

    def invalidate(self, tags: Iterable[str], at: float, *, hard: bool) -> None:
        tags = list(tags)
        try:
            with self._flocked(self._log_lock_path):
                current = self._refresh_tags()
                lines = []
                for tag in tags:
                    state = merge_tag_state(current.get(tag), at, hard)
                    lines.append(json.dumps([tag, state[0], state[1]]).encode() + b"\n")
                with open(self._log_path, "a+b") as f:
                    if f.tell() == 0:
                        f.write(_generation_line())
                    else:
                        f.seek(-1, os.SEEK_END)
                        if f.read(1) != b"\n":  # a torn line (full disk, killed writer)
                            lines.insert(0, b"\n")  # stays a malformed line of its own
                    f.write(b"".join(lines))
                self._maybe_compact()
        except OSError as exc:
            raise StoreError(f"cannot record invalidation in {self._log_path}: {exc}") from exc

    def _maybe_compact(self) -> None:
        """Rewrite the log with one line per tag. Called with the log lock held."""
        size = os.path.getsize(self._log_path)
        current = self._refresh_tags()
        live = sum(len(t) + 48 for t in current)
        if size < COMPACT_BYTES or size < 2 * live:
            return
        tmp = f"{self._log_path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(_generation_line())
            f.writelines(json.dumps([t, s[0], s[1]]).encode() + b"\n" for t, s in current.items())
        os.replace(tmp, self._log_path)

    # -- locks ---------------------------------------------------------------------------

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
