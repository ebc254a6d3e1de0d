"""The file store's hit path: a memo of decoded records vouched for by the change mark
(wsgi_isr.stores.changes). A hit costs no system call, and whatever another process
changes is seen by the very next lookup."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from wsgi_isr import FileStore
from wsgi_isr.entry import Entry

ENTRY = Entry(
    "200 OK", (("Content-Type", "text/html"),), b"one", 100.0, 60.0, None, ("t",), '"e"', ""
)
OTHER = Entry(
    "200 OK", (("Content-Type", "text/html"),), b"two", 200.0, 60.0, None, ("t",), '"e"', ""
)


def _elsewhere(root: Path, code: str) -> None:
    """Run ``code`` with ``store`` = a FileStore on ``root`` in another process."""
    prelude = (
        "from wsgi_isr import FileStore\n"
        "from wsgi_isr.entry import Entry\n"
        f"store = FileStore({str(root)!r})\n"
        "OTHER = Entry('200 OK', (('Content-Type', 'text/html'),), b'two', 200.0, 60.0,"
        " None, ('t',), '\"e\"', '')\n"
    )
    subprocess.run([sys.executable, "-c", prelude + code], check=True, timeout=60)


def _no_file_access(monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"a file was touched on a hit: {args}")

    for name in ("stat", "lstat", "open", "fstat", "read", "pread"):
        monkeypatch.setattr(os, name, refused)


def test_a_hit_on_an_unchanged_store_makes_no_system_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileStore(str(tmp_path / "s"))
    store.put("k", ENTRY, None)
    store.invalidate(["other"], 50.0, hard=False)
    assert store.lookup("k")[0] == ENTRY  # read and memoised
    with monkeypatch.context() as m:
        _no_file_access(m)
        for _ in range(3):
            record, tags = store.lookup("k")
            assert record == ENTRY and tags == {"other": (50.0, 0.0)}


def test_another_process_s_write_and_invalidation_are_seen_by_the_next_lookup(
    tmp_path: Path,
) -> None:
    root = tmp_path / "s"
    store = FileStore(str(root))
    store.put("k", ENTRY, None)
    assert store.lookup("k") == (ENTRY, {})
    _elsewhere(root, "store.invalidate(['t'], 150.0, hard=True)")
    assert store.lookup("k") == (ENTRY, {"t": (150.0, 150.0)})
    _elsewhere(root, "store.put('k', OTHER, None)")
    assert store.lookup("k")[0] == OTHER
    _elsewhere(root, "store.delete('k')")
    assert store.lookup("k")[0] is None


def test_a_removed_and_recreated_directory_is_noticed_at_the_recheck(tmp_path: Path) -> None:
    """A "cache clear" (rm -rf) leaves this process mapping the old mark; a store that
    recreates the directory marks a new file. The periodic look finds it."""
    root = tmp_path / "s"
    store = FileStore(str(root))
    store.put("k", ENTRY, None)
    assert store.lookup("k")[0] == ENTRY
    shutil.rmtree(root)
    _elsewhere(root, "store.put('k', OTHER, None); store.invalidate(['t'], 300.0, hard=False)")
    store._recheck_at = 0.0  # the periodic look is due (at most RECHECK_SECONDS later)
    assert store.lookup("k") == (OTHER, {"t": (300.0, 0.0)})
    _elsewhere(root, "store.delete('k')")  # and the new mark is the one it now reads
    assert store.lookup("k")[0] is None


def test_records_removed_by_hand_are_a_miss_after_the_recheck(tmp_path: Path) -> None:
    store = FileStore(str(tmp_path / "s"))
    store.put("k", ENTRY, None)
    assert store.lookup("k")[0] == ENTRY
    os.unlink(store.pages.filename("k"))  # "rm cache/pages/*" behind the store's back
    store._recheck_at = 0.0
    assert store.lookup("k")[0] is None


@pytest.mark.parametrize("planted", ["missing", "empty", "fifo", "directory", "symlink"])
def test_a_damaged_or_planted_change_mark_costs_speed_never_correctness(
    tmp_path: Path, planted: str
) -> None:
    """A store from before the mark existed (no file), or one whose mark was replaced by
    something that is not a mark: lookups still see every change (read the slow way)."""
    root = tmp_path / "s"
    FileStore(str(root)).put("k", ENTRY, None)
    mark = root / "changes"
    mark.unlink()
    if planted == "empty":
        mark.write_bytes(b"")
    elif planted == "fifo":
        os.mkfifo(mark, 0o600)
    elif planted == "directory":
        mark.mkdir()
    elif planted == "symlink":
        mark.symlink_to("/dev/zero")
    store = FileStore(str(root))
    assert store.lookup("k")[0] == ENTRY
    writer = FileStore(str(root))
    writer.put("k", OTHER, None)
    assert store.lookup("k")[0] == OTHER
    writer.invalidate(["t"], 400.0, hard=False)
    assert store.lookup("k")[1] == {"t": (400.0, 0.0)}


def test_the_memo_stays_within_its_byte_bound(tmp_path: Path) -> None:
    bound = 40_000
    store = FileStore(str(tmp_path / "s"), memo_bytes=bound)
    body = Entry("200 OK", (), b"x" * 2000, 100.0, 60.0, None, (), '"e"', "")
    for i in range(100):
        store.put(f"k{i}", body, None)
    for i in range(100):
        assert store.lookup(f"k{i}")[0] == body
    assert 0 < store._memo.bytes <= bound
    assert 0 < len(store._memo) < 100
    none = FileStore(str(tmp_path / "s"), memo_bytes=0)
    assert none.lookup("k1")[0] == body and len(none._memo) == 0


def test_memo_bytes_from_the_store_url(tmp_path: Path) -> None:
    from wsgi_isr import open_store

    store = open_store(f"file://{tmp_path}/s?memo_bytes=1MB")
    assert isinstance(store, FileStore) and store._memo.max_bytes == 10**6


@pytest.mark.parametrize(
    "spoil",
    [
        pytest.param({"status": "200 OK\r\nX-Injected: 1"}, id="status"),
        pytest.param({"status": "999 Nope"}, id="status-code"),
        pytest.param({"headers": (("Content Type", "text/html"),)}, id="header-name"),
    ],
)
def test_the_codec_s_header_verdicts_never_pass_a_record_they_did_not_check(
    spoil: dict[str, Any],
) -> None:
    """Decoding remembers verdicts on status lines and header names: a record that
    differs from an accepted one only there is still refused."""
    import dataclasses

    from wsgi_isr import codec

    assert codec.loads(codec.dumps(ENTRY)) == ENTRY  # the good one's verdict remembered
    assert codec.loads(codec.dumps(dataclasses.replace(ENTRY, **spoil))) is None
    assert codec.loads(codec.dumps(ENTRY)) == ENTRY


def test_reading_a_record_leaves_its_access_time_alone(tmp_path: Path) -> None:
    """With relatime, the first read after a write would update the access time and so
    dirty the inode: a journal write for every page a worker reads."""
    store = FileStore(str(tmp_path / "s"))
    store.put("k", ENTRY, None)
    path = store.pages.filename("k")
    st = os.stat(path)
    os.utime(path, ns=(st.st_mtime_ns - 10**9, st.st_mtime_ns))  # older: relatime updates
    assert store.lookup("k")[0] == ENTRY
    assert os.stat(path).st_atime_ns == st.st_mtime_ns - 10**9


def test_under_gevent_a_record_read_closes_its_file_without_the_patched_close(
    tmp_path: Path,
) -> None:
    """gevent's ``os.close`` spends two system calls finding out whether a descriptor is
    a regular file before closing it: a record read, which already knows, closes it
    directly. Nothing leaks, a refused FIFO included (closed the cooperative way)."""
    code = f"""
from gevent import monkey
monkey.patch_all()
import os
patched = os.close
through_patched = []
def counting(fd):
    through_patched.append(fd)
    patched(fd)
os.close = counting
from wsgi_isr import FileStore
from wsgi_isr.entry import Entry
from wsgi_isr.stores.shelf import Shelf
root = {str(tmp_path / "s")!r}
store = FileStore(root, memo_bytes=0)  # every lookup reads its file
page = Entry("200 OK", (), b"one", 100.0, 60.0, None, (), '"e"', "")
store.put("k", page, None)
os.mkfifo(os.path.join(root, "pages", Shelf.name("planted")), 0o600)
assert Shelf.name("k") == Shelf.digest("k").hex()  # the journal's pairs name files so
fds = len(os.listdir("/proc/self/fd"))
through_patched.clear()
for _ in range(50):
    assert store.lookup("k")[0] == page
assert through_patched == [], through_patched
assert store.lookup("planted")[0] is None  # planted: a miss, its descriptor closed
assert len(through_patched) == 1, through_patched
assert len(os.listdir("/proc/self/fd")) == fds
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
