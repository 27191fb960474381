"""TimerQueue: callbacks in deadline order, cancel, re-arm, pause."""
import threading
import time

from core.timers import TimerQueue, now_ns


def test_timers_fire_in_deadline_order_and_cancel_works():
    q = TimerQueue()
    fired = []
    done = threading.Event()
    a = q.timer(lambda: fired.append("a"))
    b = q.timer(lambda: fired.append("b"))
    c = q.timer(lambda: (fired.append("c"), done.set()))
    t0 = now_ns()
    c.arm(t0 + 300_000_000)          # far enough apart that a preempted test thread still cancels b in time
    b.arm(t0 + 100_000_000)
    a.arm(t0 + 50_000_000)
    b.cancel()
    assert done.wait(5)
    assert fired == ["a", "c"]
    assert now_ns() - t0 >= 300_000_000
    q.stop()


def test_rearm_replaces_previous_deadline():
    q = TimerQueue()
    hits = []
    t = q.timer(lambda: hits.append(time.monotonic()))
    t.arm_after(100_000_000)
    armed = time.monotonic()
    t.arm_after(300_000_000)
    end = armed + 5
    while not hits and time.monotonic() < end:
        time.sleep(0.002)
    assert len(hits) == 1 and hits[0] - armed >= 0.3 - 0.001, "the first deadline still fired"
    time.sleep(0.1)
    assert len(hits) == 1
    q.stop()


def test_callback_errors_reach_on_error_and_queue_keeps_running():
    q = TimerQueue()
    errors, ok = [], threading.Event()
    q.on_error = errors.append
    q.timer(lambda: 1 / 0).arm_after(0)
    q.timer(ok.set).arm_after(1_000_000)
    assert ok.wait(2)
    assert isinstance(errors[0], ZeroDivisionError)
    q.stop()
