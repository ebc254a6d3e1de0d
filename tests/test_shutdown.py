"""Graceful shutdown: with the shipped gunicorn hook, a regeneration in flight when the
worker is told to stop still lands in the store."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from wsgi_isr import Entry, FileStore

pytestmark = pytest.mark.server
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> tuple[str, str]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.headers["X-ISR-Cache"], r.read().decode()


def body_in_store(store_dir: Path, port: int) -> str:
    record, _ = FileStore(str(store_dir)).lookup(f"http://127.0.0.1:{port}/slow/x?")
    assert isinstance(record, Entry)
    return record.body.decode()


@pytest.mark.parametrize("with_hook", [True, False], ids=["with-hook", "without-hook"])
def test_sigterm_lets_the_regeneration_finish(tmp_path: Path, with_hook: bool) -> None:
    port = free_port()
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(
        "graceful_timeout = 10\n"
        + ("from wsgi_isr.gunicorn import worker_exit  # noqa\n" if with_hook else "")
    )
    (tmp_path / "renders").mkdir()
    env = dict(
        os.environ,
        ISR_STORE=f"file://{tmp_path / 'store'}",
        ISR_SECRET="s" * 40,
        ISR_COUNTER_DIR=str(tmp_path / "renders"),
        ISR_SLOW_SECONDS="1.5",
    )
    log = open(tmp_path / "gunicorn.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", str(conf), "-k", "gevent", "-w", "1",
         "--no-control-socket", "-b", f"127.0.0.1:{port}", "tests.e2e_app:app"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                get(f"http://127.0.0.1:{port}/health")
                break
            except OSError:
                assert time.monotonic() < deadline, (tmp_path / "gunicorn.log").read_text()
                time.sleep(0.1)
        assert get(f"http://127.0.0.1:{port}/slow/x")[0] == "MISS"
        time.sleep(1.1)  # stale after one second
        label, body = get(f"http://127.0.0.1:{port}/slow/x")
        assert label == "STALE" and "render 1" in body
        time.sleep(0.2)  # the regeneration is under way (it takes 1.5 s)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    landed = "render 2" in body_in_store(tmp_path / "store", port)
    assert landed is with_hook, (tmp_path / "gunicorn.log").read_text()
