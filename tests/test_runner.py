"""The background runners: bounded, never blocking, joinable."""

from __future__ import annotations

import threading

import gevent
import pytest

from wsgi_isr.runner import AutoRunner, GeventRunner, ThreadRunner


def test_thread_runner_is_bounded_and_never_blocks() -> None:
    runner = ThreadRunner(max_pending=2)
    gate = threading.Event()
    done: list[int] = []
    assert runner.submit(lambda: (gate.wait(5), done.append(1)))
    assert runner.submit(lambda: (gate.wait(5), done.append(2)))
    assert not runner.submit(lambda: done.append(3))  # full: refused at once
    assert not runner.join(0.05)
    gate.set()
    assert runner.join(5)
    assert sorted(done) == [1, 2]
    assert runner.submit(lambda: done.append(4))  # room again
    assert runner.join(5) and 4 in done


def test_thread_runner_survives_a_crashing_task(caplog: pytest.LogCaptureFixture) -> None:
    runner = ThreadRunner(max_pending=1)

    def crash() -> None:
        raise ValueError("boom")

    assert runner.submit(crash)
    assert runner.join(5)
    assert "boom" in caplog.text
    assert runner.submit(lambda: None) and runner.join(5)


def test_gevent_runner_is_bounded() -> None:
    runner = GeventRunner(max_pending=1)
    done: list[int] = []
    assert runner.submit(lambda: (gevent.sleep(0.01), done.append(1)))
    assert not runner.submit(lambda: done.append(2))
    assert runner.join(5)
    assert done == [1]


def test_auto_runner_uses_threads_when_not_patched() -> None:
    runner = AutoRunner(4)
    assert isinstance(runner.runner, ThreadRunner)
    with pytest.raises(ValueError):
        AutoRunner(0)


def test_thread_runner_stops_counting_a_hung_task_after_its_timeout() -> None:
    runner = ThreadRunner(max_pending=1, timeout=0.2)
    gate = threading.Event()
    assert runner.submit(lambda: gate.wait(5))
    assert not runner.submit(lambda: None)  # full while the first one may still finish
    threading.Event().wait(0.3)
    ran = threading.Event()
    assert runner.submit(ran.set)  # the hung one no longer holds the slot
    assert ran.wait(2)
    gate.set()
    assert runner.join(5)


def test_gevent_runner_interrupts_a_task_blocked_past_its_timeout() -> None:
    runner = GeventRunner(max_pending=1, timeout=0.1)
    finished: list[bool] = []
    assert runner.submit(lambda: (gevent.sleep(5), finished.append(True)))
    assert runner.join(2)
    assert finished == []
    assert runner.submit(lambda: finished.append(True)) and runner.join(2)
    assert finished == [True]
