"""Graceful shutdown: with the shipped gunicorn hook, a regeneration in flight when the
worker is told to stop still lands in the store."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from servers import Instance, free_port, start_gunicorn

from wsgi_isr import Entry, FileStore

pytestmark = pytest.mark.server


def body_in_store(store_dir: Path, port: int) -> str:
    record, _ = FileStore(str(store_dir)).lookup(f"http://127.0.0.1:{port}/slow/x?")
    assert isinstance(record, Entry)
    return record.body.decode()


@pytest.mark.parametrize("with_hook", [True, False], ids=["with-hook", "without-hook"])
def test_sigterm_lets_the_regeneration_finish(tmp_path: Path, with_hook: bool) -> None:
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(
        "graceful_timeout = 10\n"
        + ("from wsgi_isr.gunicorn import worker_exit  # noqa\n" if with_hook else "")
    )
    (tmp_path / "renders").mkdir()
    gunicorn = Instance(free_port(), tmp_path / "renders", tmp_path / "gunicorn.log")
    env = {
        "ISR_STORE": f"file://{tmp_path / 'store'}",
        "ISR_SECRET": "s" * 40,
        "ISR_COUNTER_DIR": str(tmp_path / "renders"),
        "ISR_SLOW_SECONDS": "1.5",
    }
    # graceful_timeout comes from the config file (a command-line value would win)
    with start_gunicorn(gunicorn, env=env, workers=1, config=conf, graceful_timeout=None):
        first = gunicorn.fetch("/slow/x", timeout=10)
        assert (first.status, first.cache) == (200, "MISS")
        time.sleep(1.1)  # stale after one second
        stale = gunicorn.fetch("/slow/x", timeout=10)
        assert (stale.status, stale.cache) == (200, "STALE") and "render 1" in stale.body
        time.sleep(0.2)  # the regeneration is under way (it takes 1.5 s)
        assert gunicorn.proc is not None
        gunicorn.proc.send_signal(signal.SIGTERM)
        assert gunicorn.proc.wait(20) == 0
    landed = "render 2" in body_in_store(tmp_path / "store", port=gunicorn.port)
    assert landed is with_hook, gunicorn.log()
