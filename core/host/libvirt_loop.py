"""libvirt-python, loaded on demand, and the one event loop every libvirt connection in this process shares.

libvirt-python (https://libvirt.org/python.html) has no wheels: it builds against the system's libvirt (Debian's
libvirt-dev), so it is an optional dependency and a missing one gives one line saying how to install it.

The event loop: libvirt's keepalive (virConnectSetKeepAlive), domain lifecycle events and non-blocking streams
(the serial console, virDomainOpenConsole) need an event implementation registered before the first connection
is opened (libvirt's "Event loop integration" docs). libvirt's own default implementation
(virEventRegisterDefaultImpl) runs on GLib's global default main context, the one Qt's GLib event dispatcher
uses for the GUI thread: iterating it from a second thread dispatches Qt's sources there and crashes the
manager. So Vireo registers its own implementation (virEventRegisterImpl), a poll(2) loop on one daemon thread
(core/host/libvirt_poll.py), once per process, whatever the number of connections.
"""
from __future__ import annotations

import threading
from types import ModuleType

from core.host.api import HostError

INSTALL_HINT = ("libvirt connections need libvirt-python, which builds against libvirt's headers: "
                "sudo apt-get install libvirt-dev pkg-config gcc python3-dev, then "
                ".venv/bin/pip install -r requirements-libvirt.txt")

_lock = threading.Lock()
_loop: threading.Thread | None = None


def libvirt_module() -> ModuleType:
    """The `libvirt` module with its event loop running; HostError with INSTALL_HINT when it is not installed."""
    global _loop
    try:
        import libvirt
    except ImportError:
        raise HostError(INSTALL_HINT) from None
    with _lock:
        if _loop is None:
            from core.host.libvirt_poll import PollLoop
            loop = PollLoop(libvirt)
            libvirt.virEventRegisterImpl(loop.add_handle, loop.update_handle, loop.remove_handle,
                                         loop.add_timeout, loop.update_timeout, loop.remove_timeout)
            # libvirt prints every error on stderr unless a handler takes it: the errors reach callers as
            # libvirtError exceptions, which say the same in one line.
            libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
            _loop = threading.Thread(target=loop.run, name="vireo-libvirt-events", daemon=True)
            _loop.start()
    return libvirt
