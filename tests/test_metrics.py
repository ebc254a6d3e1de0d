"""Metrics across gunicorn workers: with ``PROMETHEUS_MULTIPROC_DIR`` and the shipped
hooks, one scrape through any worker sums every worker's counts."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import metric_values
from servers import Instance, Reply, free_port, start_gunicorn

pytestmark = pytest.mark.server

SECRET = "m" * 40
HITS = 'wsgi_isr_requests_total{state="hit"}'


def test_one_scrape_sums_both_workers(tmp_path: Path) -> None:
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text("from wsgi_isr.gunicorn import child_exit, on_starting, worker_exit  # noqa\n")
    (tmp_path / "renders").mkdir()
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "counter_99999.db").write_bytes(b"left over from a previous run")
    gunicorn = Instance(free_port(), tmp_path / "renders", tmp_path / "gunicorn.log")
    env = {
        "ISR_STORE": f"file://{tmp_path / 'store'}",
        "ISR_SECRET": SECRET,
        "ISR_COUNTER_DIR": str(tmp_path / "renders"),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
    }
    with start_gunicorn(gunicorn, env=env, workers=2, config=conf):
        assert gunicorn.fetch("/page/m?revalidate=false").cache == "MISS"
        hits: list[Reply] = []
        for _ in range(10):  # until both workers have served hits; bounded
            hits += [r for r in gunicorn.fetch_many("/page/m?revalidate=false", 8)]
            if len({r.pid for r in hits}) == 2:
                break
        assert {r.cache for r in hits} == {"HIT"}
        assert len({r.pid for r in hits}) == 2, "the hits never reached both workers"
        scrape = gunicorn.fetch("/_isr/metrics", headers={"Authorization": f"Bearer {SECRET}"})
    assert scrape.status == 200
    values = metric_values(scrape.body)
    assert values[HITS] == len(hits)
    assert "pid" not in scrape.body  # aggregated, not one series per worker
    assert not (tmp_path / "metrics" / "counter_99999.db").exists()  # on_starting wiped it
