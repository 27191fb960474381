"""A libvirt domain's serial console through libvirt's stream API: virDomainOpenConsole on a non-blocking
virStream, read when the shared event loop (core/host/libvirt_loop.py) says it is readable
(virStreamEventAddCallback), as `virsh console` does. What arrives is kept (the last SERIAL_HISTORY bytes since
the console was opened: a pty keeps nothing from before) and passed to every subscriber, the same contract as the
Host API's subscribe_serial for Vireo's own VMs.

VIR_DOMAIN_CONSOLE_FORCE takes the console over from another client (a `virsh console` left open, or a previous
Vireo window whose connection died), as virt-manager's serial console does.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any

from core.host.api import SERIAL_HISTORY, SerialListener

log = logging.getLogger("core.host.libvirt")

SEND_TRIES = 200        # a full stream buffer (EAGAIN) is retried this many times, 5 ms apart


class LibvirtSerial:
    def __init__(self, libvirt: Any, conn: Any, dom: Any) -> None:
        self._libvirt = libvirt
        self._lock = threading.Lock()
        self._listeners: list[SerialListener] = []
        self._history = bytearray()
        self.closed = False
        self._stream = conn.newStream(libvirt.VIR_STREAM_NONBLOCK)
        dom.openConsole(None, self._stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
        events = (libvirt.VIR_STREAM_EVENT_READABLE | libvirt.VIR_STREAM_EVENT_ERROR
                  | libvirt.VIR_STREAM_EVENT_HANGUP)
        self._stream.eventAddCallback(events, self._on_event, None)

    def _on_event(self, stream: Any, events: int, _opaque: object) -> None:
        if events & self._libvirt.VIR_STREAM_EVENT_READABLE:
            while True:
                try:
                    data = stream.recv(4096)
                except self._libvirt.libvirtError:
                    self.close()
                    return
                if data == -2:          # EAGAIN: all read for now
                    break
                if not data:            # end of stream: the domain stopped
                    self.close()
                    return
                self._deliver(bytes(data))
        if events & (self._libvirt.VIR_STREAM_EVENT_ERROR | self._libvirt.VIR_STREAM_EVENT_HANGUP):
            self.close()

    def _deliver(self, data: bytes) -> None:
        with self._lock:
            self._history += data
            del self._history[:-SERIAL_HISTORY]
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(data)
            except Exception:
                log.exception("serial listener failed")

    def subscribe(self, listener: SerialListener) -> bytes:
        with self._lock:
            self._listeners.append(listener)
            return bytes(self._history)

    def unsubscribe(self, listener: SerialListener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def send(self, data: bytes) -> None:
        """Type `data` into the console (libvirtError when the stream failed, for the caller's HostError)."""
        view = memoryview(data)
        tries = 0
        while view and not self.closed:
            sent = self._stream.send(bytes(view))
            if sent == -2:
                tries += 1
                if tries > SEND_TRIES:
                    raise self._libvirt.libvirtError("the serial console does not take input")
                time.sleep(0.005)
                continue
            view = view[sent:]

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
        try:
            self._stream.eventRemoveCallback()
        except self._libvirt.libvirtError:
            pass
        try:
            self._stream.abort()
        except self._libvirt.libvirtError:
            pass
