"""An event loop for libvirt on poll(2), registered with virEventRegisterImpl (libvirt's "Event loop integration":
https://libvirt.org/html/libvirt-libvirt-event.html, virEventAddHandleFunc and friends), so libvirt's keepalive,
domain events and streams run on a thread of their own without touching GLib's default main context, which the
GUI thread's Qt event dispatcher owns (core/host/libvirt_loop.py says why that matters).

The contract libvirt asks of an implementation: handles are file descriptors watched for READABLE/WRITABLE (and
always ERROR/HANGUP); timeouts fire every `interval` ms (0: on every iteration, -1: disabled); add/update/remove
may be called from any thread, including from inside a callback, so every change wakes the loop (a self-pipe)
and callbacks run without the loop's lock held; the opaque data of a removed handle or timeout is freed later,
from the loop's own stack (virEventInvokeFreeCallback), never inside the remove call.
"""
from __future__ import annotations

import itertools
import logging
import os
import select
import threading
import time
from typing import Any

log = logging.getLogger("core.host.libvirt")

# libvirt's VIR_EVENT_HANDLE_* bits <-> poll(2)'s.
_READABLE, _WRITABLE, _ERROR, _HANGUP = 1, 2, 4, 8
_TO_POLL = ((_READABLE, select.POLLIN), (_WRITABLE, select.POLLOUT))
_FROM_POLL = ((select.POLLIN, _READABLE), (select.POLLPRI, _READABLE), (select.POLLOUT, _WRITABLE),
              (select.POLLERR, _ERROR), (select.POLLHUP, _HANGUP), (select.POLLNVAL, _ERROR))


class PollLoop:
    def __init__(self, libvirt: Any) -> None:
        self._libvirt = libvirt
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._handles: dict[int, list[Any]] = {}     # watch -> [fd, events, callback, opaque]
        self._timers: dict[int, list[Any]] = {}      # timer -> [interval ms, due (monotonic s), callback, opaque]
        self._to_free: list[Any] = []
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass        # the pipe is full: the loop is awake already

    # -- virEventRegisterImpl's six functions ------------------------------------------------------------------
    def add_handle(self, fd: int, events: int, callback: Any, opaque: Any) -> int:
        with self._lock:
            watch = next(self._ids)
            self._handles[watch] = [fd, events, callback, opaque]
        self._wake()
        return watch

    def update_handle(self, watch: int, events: int) -> None:
        with self._lock:
            if watch in self._handles:
                self._handles[watch][1] = events
        self._wake()

    def remove_handle(self, watch: int) -> int:
        with self._lock:
            handle = self._handles.pop(watch, None)
            if handle is None:
                return -1
            self._to_free.append(handle[3])
        self._wake()
        return 0

    def add_timeout(self, interval: int, callback: Any, opaque: Any) -> int:
        with self._lock:
            timer = next(self._ids)
            self._timers[timer] = [interval, self._due(interval), callback, opaque]
        self._wake()
        return timer

    def update_timeout(self, timer: int, interval: int) -> None:
        with self._lock:
            if timer in self._timers:
                self._timers[timer][0] = interval
                self._timers[timer][1] = self._due(interval)
        self._wake()

    def remove_timeout(self, timer: int) -> int:
        with self._lock:
            entry = self._timers.pop(timer, None)
            if entry is None:
                return -1
            self._to_free.append(entry[3])
        self._wake()
        return 0

    @staticmethod
    def _due(interval: int) -> float:
        return time.monotonic() + max(0, interval) / 1000.0

    # -- the loop ---------------------------------------------------------------------------------------------
    def run(self) -> None:
        while True:
            try:
                self.run_once()
            except Exception:  # a failing callback must not stop every connection's events
                log.exception("libvirt event loop")

    def run_once(self) -> None:
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        with self._lock:
            by_fd: dict[int, int] = {}
            for fd, events, _, _ in self._handles.values():
                mask = 0
                for bit, flag in _TO_POLL:
                    if events & bit:
                        mask |= flag
                by_fd[fd] = by_fd.get(fd, 0) | mask
            now = time.monotonic()
            dues = [due for interval, due, _, _ in self._timers.values() if interval >= 0]
        for fd, mask in by_fd.items():
            poller.register(fd, mask)
        timeout_ms = None if not dues else max(0, int((min(dues) - now) * 1000 + 0.999))
        ready = poller.poll(timeout_ms)
        fired: dict[int, int] = {}
        for fd, revents in ready:
            if fd == self._wake_r:
                try:
                    while os.read(self._wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
                continue
            events = 0
            for flag, bit in _FROM_POLL:
                if revents & flag:
                    events |= bit
            fired[fd] = events
        now = time.monotonic()
        with self._lock:
            due_timers = []
            for timer, entry in self._timers.items():
                if entry[0] >= 0 and entry[1] <= now:
                    entry[1] = now + entry[0] / 1000.0
                    due_timers.append((timer, entry[2], entry[3]))
            handles = [(watch, h[0], h[1], h[2], h[3]) for watch, h in self._handles.items() if h[0] in fired]
        for timer, callback, opaque in due_timers:
            with self._lock:
                alive = timer in self._timers
            if alive:
                callback(timer, opaque)
        for watch, fd, wanted, callback, opaque in handles:
            with self._lock:
                alive = watch in self._handles
            events = fired[fd] & (wanted | _ERROR | _HANGUP)
            if alive and events:
                callback(watch, fd, events, opaque)
        with self._lock:
            to_free, self._to_free = self._to_free, []
        for opaque in to_free:
            self._libvirt.virEventInvokeFreeCallback(opaque)
