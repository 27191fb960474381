"""A per-machine timer thread: devices schedule callbacks at host-monotonic deadlines.

Device models with time-based behaviour (the PIT's counter reaching zero, the RTC's update interrupt, the
LAPIC timer of the software CPU) arm a Timer instead of polling; its callback runs on the timer thread and
typically raises an IRQ line, which makes the backend interrupt the guest.
"""
from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable


def now_ns() -> int:
    return time.monotonic_ns()


class Timer:
    """A one-shot timer; re-arm it from its own callback for periodic behaviour."""

    def __init__(self, queue: TimerQueue, callback: Callable[[], None]) -> None:
        self._queue = queue
        self.callback = callback
        self.deadline: int | None = None
        self._generation = 0

    def arm(self, deadline_ns: int) -> None:
        self._queue._arm(self, deadline_ns)

    def arm_after(self, delay_ns: int) -> None:
        self.arm(now_ns() + max(0, delay_ns))

    def cancel(self) -> None:
        self._queue._cancel(self)

    @property
    def armed(self) -> bool:
        return self.deadline is not None


class TimerQueue:
    """One thread running timer callbacks in deadline order. Callbacks must be short and must not block."""

    def __init__(self, name: str = "vireo-timers") -> None:
        self._heap: list[tuple[int, int, int, Timer]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._paused = False
        self.on_error: Callable[[BaseException], None] | None = None
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def timer(self, callback: Callable[[], None]) -> Timer:
        return Timer(self, callback)

    def _arm(self, timer: Timer, deadline: int) -> None:
        with self._cond:
            timer._generation += 1
            timer.deadline = deadline
            seq = next(self._seq)
            heapq.heappush(self._heap, (deadline, seq, timer._generation, timer))
            # The thread sleeps until the earliest deadline it knew of; a later one needs no wake-up (the LAPIC
            # timer is re-armed at every idle entry and exit, and each kick of a running vCPU arms its re-check).
            if self._heap[0][1] == seq:
                self._cond.notify()

    def _cancel(self, timer: Timer) -> None:
        with self._cond:
            timer._generation += 1
            timer.deadline = None

    def pause(self) -> None:
        with self._cond:
            self._paused = True

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=2)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    if self._paused or not self._heap:
                        self._cond.wait()
                        continue
                    deadline, _, gen, timer = self._heap[0]
                    if gen != timer._generation:
                        heapq.heappop(self._heap)
                        continue
                    delay = deadline - now_ns()
                    if delay > 0:
                        self._cond.wait(delay / 1e9)
                        continue
                    heapq.heappop(self._heap)
                    timer.deadline = None
                    break
                else:
                    return
            try:
                timer.callback()
            except BaseException as exc:  # a device bug stops that VM, not the timer thread
                if self.on_error is not None:
                    self.on_error(exc)
