"""A libvirt connection as a Vireo host (the Host API, core/host/api.py): the domains of a libvirt URI
(qemu:///session, qemu:///system, qemu+ssh://…; https://libvirt.org/uri.html) listed with their states and CPU
usage, started, shut down through the guest (virDomainShutdown: the ACPI power button), forced off
(virDomainDestroy), paused and resumed, their VNC graphics shown through Vireo's RFB client
(core/host/libvirt_console.py) and their serial console reached through libvirt's stream API
(virDomainOpenConsole, core/host/libvirt_serial.py). Creating, editing and deleting domains stay with virsh and
virt-manager: those requests are refused with a line saying so.

Nothing hangs on a host that is down: the connection is opened in a worker thread given CONNECT_TIMEOUT seconds,
and libvirt's keepalive (virConnectSetKeepAlive: a probe every KEEPALIVE_INTERVAL s, KEEPALIVE_COUNT unanswered
ones close the connection) ends calls to a daemon that stopped answering. State changes arrive as libvirt's
domain lifecycle events (virConnectDomainEventRegisterAny) on the shared event loop (core/host/libvirt_loop.py).
"""
from __future__ import annotations

import contextlib
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from typing import Any

from core.config import DisplayConfig, LoadError, VmConfig
from core.host.api import (
    DeleteResult,
    DiskChoice,
    EventKind,
    FileProbe,
    Host,
    HostCapabilities,
    HostError,
    HostEvent,
    Progress,
    SerialListener,
    VmConsole,
    VmInfo,
    VmState,
    VmStats,
)
from core.host.libvirt_loop import libvirt_module
from core.hoststats import HostInfo
from core.vnc.address import BASE_PORT

CONNECT_TIMEOUT = 15.0
KEEPALIVE_INTERVAL = 5       # seconds between keepalive probes
KEEPALIVE_COUNT = 3          # unanswered probes before the connection is closed

# URI schemes that name a libvirt driver (https://libvirt.org/uri.html), with or without a +transport.
LIBVIRT_DRIVERS = frozenset({"qemu", "test", "xen", "lxc", "vbox", "vmware", "esx", "bhyve", "ch", "openvz",
                             "hyperv", "vpx", "gsx", "uml", "libxl", "vz", "remote"})

# virDomainState -> Vireo's states: a guest being shut down still runs; a guest suspended to RAM by its own power
# management (PMSUSPENDED) is, for the user, paused.
_STATES = {0: VmState.RUNNING, 1: VmState.RUNNING, 2: VmState.RUNNING, 3: VmState.PAUSED, 4: VmState.RUNNING,
           5: VmState.SHUTOFF, 6: VmState.CRASHED, 7: VmState.PAUSED}
_SHUTOFF_REASONS = {1: "shut down by the guest", 2: "destroyed", 3: "crashed", 4: "migrated", 5: "saved",
                    6: "failed to start", 7: "restored from a snapshot", 8: "daemon restarted"}
# virDomainEventType numbers -> the state a lifecycle event leads to.
_EVENT_STATES = {2: VmState.RUNNING, 3: VmState.PAUSED, 4: VmState.RUNNING, 5: VmState.SHUTOFF,
                 6: VmState.SHUTOFF, 7: VmState.PAUSED, 8: VmState.CRASHED}
_EVENT_DEFINED, _EVENT_UNDEFINED = 0, 1


def is_libvirt_uri(uri: str) -> bool:
    """Whether `uri` names a libvirt driver (qemu:///session, qemu+ssh://host/system, test:///default)."""
    scheme = urllib.parse.urlsplit(uri).scheme.lower()
    return scheme.partition("+")[0] in LIBVIRT_DRIVERS


class LibvirtHost(Host):
    """The domains of one libvirt URI. Connects in the constructor (HostError, one line, when it cannot) unless
    `connect` is False: the GUI makes its rows unconnected and connects on a worker (connect()). Like the SSH
    hosts (core/remote/service.py), it tells connection listeners (state, message) as it connects, fails, or
    loses the connection (libvirt's close callback: the daemon stopped, or keepalive found it gone)."""

    remote = True      # the domains live in libvirtd: closing the connection leaves them running

    def __init__(self, uri: str, timeout: float = CONNECT_TIMEOUT, connect: bool = True) -> None:
        self.uri = uri
        self.name = uri
        self.timeout = timeout
        self._libvirt: Any = None
        self._conn: Any = None
        self._events = -1
        self._lock = threading.Lock()
        self._connect_lock = threading.Lock()
        self._cpu: dict[str, tuple[float, int]] = {}      # uuid -> (monotonic time, cpuTime ns) of the last sample
        self._serial: dict[str, Any] = {}                 # uuid -> LibvirtSerial
        self._consoles: dict[str, tuple[int, Any]] = {}   # uuid -> (domain Id, VncFeed)
        self._conn_listeners: list[Callable[[str, str], None]] = []
        self.state = "disconnected"
        self.error = "not connected"
        if connect:
            self.connect()

    # -- connection -----------------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._conn is not None

    def add_connection_listener(self, listener: Callable[[str, str], None]) -> None:
        self._conn_listeners.append(listener)

    def _set_connection(self, state: str, message: str) -> None:
        self.state = state
        for listener in list(self._conn_listeners):
            try:
                listener(state, message)
            except Exception:  # a broken observer must not break the connection
                pass

    def connect(self) -> None:
        """Open the connection (nothing when open); HostError with one line when it cannot."""
        with self._connect_lock:
            if self._conn is not None:
                return
            self._set_connection("connecting", f"connecting to {self.uri}…")
            try:
                self._libvirt = libvirt_module()
                conn = self._open(self.timeout)
            except HostError as exc:
                self.error = str(exc)
                self._set_connection("failed", self.error)
                raise
            try:
                conn.setKeepAlive(KEEPALIVE_INTERVAL, KEEPALIVE_COUNT)
            except self._libvirt.libvirtError:
                pass        # a driver without the remote protocol (test:///default) has no keepalive
            with contextlib.suppress(self._libvirt.libvirtError):
                conn.registerCloseCallback(self._on_closed, None)
            self._events = conn.domainEventRegisterAny(
                None, self._libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None)
            self._conn = conn
            self.error = ""
            self._set_connection("connected", f"connected to {self.uri}")

    def _on_closed(self, conn: Any, reason: int, _opaque: object) -> None:
        """libvirt closed the connection: 0 an I/O error, 1 end of file, 2 keepalive timeout (3: we closed it)."""
        if reason == 3 or conn is not self._conn:
            return
        why = {0: "the connection failed", 1: "libvirtd closed the connection",
               2: "libvirtd stopped answering (keepalive)"}.get(reason, "the connection was lost")
        # Not on the event loop's thread: closing a connection from its own callback would wait on that loop.
        threading.Thread(target=lambda: (self._drop(why), self._set_connection("disconnected", why)),
                         name="vireo-libvirt-drop", daemon=True).start()

    def _drop(self, why: str) -> None:
        conn, self._conn = self._conn, None
        self.error = why
        for serial in list(self._serial.values()):
            serial.close()
        self._serial.clear()
        for _, feed in list(self._consoles.values()):
            feed.close()
        self._consoles.clear()
        if conn is not None:
            with contextlib.suppress(self._libvirt.libvirtError):
                conn.unregisterCloseCallback()
            with contextlib.suppress(self._libvirt.libvirtError):
                conn.domainEventDeregisterAny(self._events)
            with contextlib.suppress(self._libvirt.libvirtError):
                conn.close()

    def _open(self, timeout: float) -> Any:
        """virConnectOpen in a worker thread: an SSH transport asking for a password, or a host that does not
        answer, must not hold the caller (the worker is abandoned after `timeout`)."""
        result: dict[str, Any] = {}

        def connect() -> None:
            try:
                result["conn"] = self._libvirt.open(self.uri)
            except self._libvirt.libvirtError as exc:
                result["error"] = exc
        worker = threading.Thread(target=connect, name="vireo-libvirt-connect", daemon=True)
        worker.start()
        worker.join(timeout)
        if "conn" in result:
            return result["conn"]
        if "error" in result:
            raise HostError(f"cannot connect to {self.uri}: {_message(result['error'])}")
        raise HostError(f"cannot connect to {self.uri}: no answer in {timeout:.0f} s")

    @contextlib.contextmanager
    def _call(self, what: str) -> Iterator[None]:
        if self._conn is None:
            raise HostError(f"{self.uri} is not connected: {self.error}")
        try:
            yield
        except self._libvirt.libvirtError as exc:
            raise HostError(f"{self.uri}: cannot {what}: {_message(exc)}") from None

    # -- listing --------------------------------------------------------------------------------------------
    def info(self) -> HostInfo:
        with self._call("read the host's information"):
            model, memory_mib, cpus, _mhz, nodes, sockets, cores, threads = self._conn.getInfo()[:8]
            hostname = self._conn.getHostname()
            caps = self._conn.getCapabilities()
        kvm = "<domain type='kvm'" in caps or '<domain type="kvm"' in caps
        return HostInfo(hostname=hostname, cpu_model=model, cpus=cpus, cores=max(1, nodes * sockets * cores),
                        memory_mib=memory_mib, kvm_usable=kvm, kvm_hardware=kvm,
                        kvm_reason="libvirt offers KVM domains" if kvm else "libvirt offers no KVM domains here",
                        system=f"libvirt {self._conn.getURI()}", images_dir="")

    def list_vms(self) -> list[VmInfo]:
        with self._call("list the domains"):
            domains = self._conn.listAllDomains(0)
            return sorted((self._vm_info(d) for d in domains), key=lambda v: v.name.casefold())

    def get(self, vm_uuid: str) -> VmInfo:
        with self._call("read the domain"):
            return self._vm_info(self._domain(vm_uuid))

    def _domain(self, vm_uuid: str) -> Any:
        try:
            return self._conn.lookupByUUIDString(vm_uuid)
        except self._libvirt.libvirtError as exc:
            if exc.get_error_code() == self._libvirt.VIR_ERR_NO_DOMAIN:
                raise HostError(f"{self.uri}: no domain with uuid {vm_uuid}") from None
            raise

    def _vm_info(self, dom: Any) -> VmInfo:
        state, reason = dom.state()
        xml = ET.fromstring(dom.XMLDesc(0))
        memory_kib = int(xml.findtext("memory") or 0)
        unit = (xml.find("memory").get("unit", "KiB") if xml.find("memory") is not None else "KiB")
        memory_mib = memory_kib // 1024 if unit == "KiB" else memory_kib
        vcpus = int(xml.findtext("vcpu") or 1)
        kind = xml.get("type", "")
        config = VmConfig(name=dom.name(), uuid=dom.UUIDString(), memory_mib=memory_mib, vcpus=vcpus,
                          accel="kvm" if kind == "kvm" else "software",
                          display=DisplayConfig(vnc=vnc_spec(xml, urllib.parse.urlsplit(self.uri).hostname or "")))
        vm_state = _STATES.get(state, VmState.RUNNING)
        why = _SHUTOFF_REASONS.get(reason, "") if vm_state in (VmState.SHUTOFF, VmState.CRASHED) else ""
        return VmInfo(config, vm_state, why, accel=config.accel)

    def load_errors(self) -> list[LoadError]:
        return []

    def reload(self) -> None:
        pass        # the domains are read from libvirt at every call

    def capabilities(self) -> HostCapabilities:
        return HostCapabilities()

    # -- lifecycle ------------------------------------------------------------------------------------------
    def start(self, vm_uuid: str) -> None:
        self._do(vm_uuid, "start", lambda d: d.create())

    def shutdown(self, vm_uuid: str) -> None:
        self._do(vm_uuid, "shut down", lambda d: d.shutdown())

    def force_off(self, vm_uuid: str) -> None:
        self._do(vm_uuid, "force off", lambda d: d.destroy())

    def pause(self, vm_uuid: str) -> None:
        self._do(vm_uuid, "pause", lambda d: d.suspend())

    def resume(self, vm_uuid: str) -> None:
        self._do(vm_uuid, "resume", lambda d: d.resume())

    def reboot(self, vm_uuid: str) -> None:
        self._do(vm_uuid, "reboot", lambda d: d.reboot(0))

    def force_reset(self, vm_uuid: str) -> None:
        self._do(vm_uuid, "reset", lambda d: d.reset(0))

    def _do(self, vm_uuid: str, what: str, action: Callable[[Any], object]) -> None:
        with self._call(f"{what} the domain"):
            dom = self._domain(vm_uuid)
            try:
                action(dom)
            except self._libvirt.libvirtError as exc:
                raise HostError(f"{self.uri}: cannot {what} {dom.name()}: {_message(exc)}") from None

    # -- what libvirt's own tools do -------------------------------------------------------------------------
    def define(self, config: VmConfig) -> VmInfo:
        raise HostError(f"{self.uri}: Vireo does not create or edit libvirt domains; use virt-manager or "
                        "virsh define")

    def delete(self, vm_uuid: str, delete_disks: DiskChoice = False) -> DeleteResult:
        raise HostError(f"{self.uri}: Vireo does not delete libvirt domains; use virsh undefine")

    def delete_broken_definition(self, path: str) -> None:
        raise HostError(f"{self.uri}: libvirt keeps its own definitions")

    def create_disk(self, path: str, size_bytes: int, fmt: str = "raw", preallocate: bool = False,
                    progress: Progress | None = None) -> None:
        raise HostError(f"{self.uri}: create disk images with virsh vol-create-as")

    def accel_preview(self, requested: str) -> tuple[str, str]:
        return requested, "libvirt chooses the accelerator from the domain's type"

    def probe_file(self, path: str, role: str) -> FileProbe:
        raise HostError(f"{self.uri}: Vireo cannot read files on a libvirt host")

    # -- statistics -----------------------------------------------------------------------------------------
    def stats(self, vm_uuid: str) -> VmStats | None:
        """CPU usage from virDomainGetInfo's cpuTime (ns, all vCPUs) between two samples; memory as configured and
        as the balloon reports it."""
        with self._call("read the domain's statistics"):
            dom = self._domain(vm_uuid)
            state, max_kib, mem_kib, vcpus, cpu_ns = dom.info()
        if _STATES.get(state) not in (VmState.RUNNING, VmState.PAUSED):
            self._cpu.pop(vm_uuid, None)
            return None
        now = time.monotonic()
        with self._lock:
            previous = self._cpu.get(vm_uuid)
            self._cpu[vm_uuid] = (now, cpu_ns)
        percent = 0.0
        if previous is not None and now > previous[0] and cpu_ns >= previous[1]:
            percent = (cpu_ns - previous[1]) / 1e9 / (now - previous[0]) / max(1, vcpus) * 100.0
        return VmStats(timestamp=now, cpu_percent=min(100.0, percent), cpu_seconds=cpu_ns / 1e9,
                       memory_mib=max_kib // 1024, memory_resident_mib=mem_kib / 1024)

    # -- consoles -------------------------------------------------------------------------------------------
    def console(self, vm_uuid: str) -> VmConsole:
        """The domain's VNC graphics through Vireo's RFB client, one connection per run of the domain (its Id,
        new at every start, is the console's session)."""
        from core.host.libvirt_console import console_of, open_feed
        with self._call("open the console"):
            dom = self._domain(vm_uuid)
            info = self._vm_info(dom)
            if info.state not in (VmState.RUNNING, VmState.PAUSED):
                raise HostError(f"{info.name} is {info.state.label.lower()}: its console exists while it runs")
            session = dom.ID()
            password = self._vnc_password(dom)
        if not info.config.display.vnc:
            raise HostError(f"{info.name} has no VNC graphics: add <graphics type='vnc'/> to its domain XML")
        with self._lock:
            cached = self._consoles.get(vm_uuid)
        if cached is not None and cached[0] == session and not cached[1].closed:
            return console_of(cached[1], session)
        feed = open_feed(info.config.display.vnc, password)
        with self._lock:
            old = self._consoles.get(vm_uuid)
            self._consoles[vm_uuid] = (session, feed)
        if old is not None:
            old[1].close()
        return console_of(feed, session)

    def _vnc_password(self, dom: Any) -> str:
        """The graphics' passwd, which only the secure XML (a read-write connection) shows."""
        try:
            xml = ET.fromstring(dom.XMLDesc(self._libvirt.VIR_DOMAIN_XML_SECURE))
        except self._libvirt.libvirtError:
            return ""
        graphics = xml.find("devices/graphics[@type='vnc']")
        return (graphics.get("passwd") or "") if graphics is not None else ""

    def subscribe_serial(self, vm_uuid: str, listener: SerialListener) -> bytes:
        from core.host.libvirt_serial import LibvirtSerial
        with self._call("open the serial console"):
            with self._lock:
                serial = self._serial.get(vm_uuid)
                if serial is None or serial.closed:
                    serial = LibvirtSerial(self._libvirt, self._conn, self._domain(vm_uuid))
                    self._serial[vm_uuid] = serial
            return serial.subscribe(listener)

    def unsubscribe_serial(self, vm_uuid: str, listener: SerialListener) -> None:
        serial = self._serial.get(vm_uuid)
        if serial is not None:
            serial.unsubscribe(listener)

    def send_serial(self, vm_uuid: str, data: bytes) -> None:
        serial = self._serial.get(vm_uuid)
        if serial is None or serial.closed:
            raise HostError(f"{self.uri}: the serial console of {vm_uuid} is not open")
        with self._call("type into the serial console"):
            serial.send(data)

    # -- events and closing -----------------------------------------------------------------------------------
    def _on_lifecycle(self, _conn: Any, dom: Any, event: int, _detail: int, _opaque: object) -> None:
        uuid = dom.UUIDString()
        if event == _EVENT_DEFINED:
            self._emit(HostEvent(EventKind.DEFINED, uuid))
        elif event == _EVENT_UNDEFINED:
            self._emit(HostEvent(EventKind.DELETED, uuid))
        elif event in _EVENT_STATES:
            state = _EVENT_STATES[event]
            if state in (VmState.SHUTOFF, VmState.CRASHED):
                serial = self._serial.pop(uuid, None)
                if serial is not None:
                    serial.close()
                console = self._consoles.pop(uuid, None)
                if console is not None:
                    console[1].close()
            self._emit(HostEvent(EventKind.STATE, uuid, state))

    def close(self) -> None:
        """Disconnect (the domains run on); connect() opens the connection again."""
        if self._conn is not None:
            self._drop("disconnected")
            self._set_connection("disconnected", f"disconnected from {self.uri}")


def vnc_spec(xml: ET.Element, uri_host: str = "") -> str:
    """The domain's VNC graphics as Vireo's display.vnc spelling (HOST:DISPLAY or unix:PATH), "" when it has none
    or it is not running (autoport: the port is only known once started, as port='-1' says before). Graphics
    listening on every address are reached at the URI's host (this computer for a local URI), as virsh
    domdisplay does."""
    graphics = xml.find("devices/graphics[@type='vnc']")
    if graphics is None:
        return ""
    socket_path = graphics.get("socket") or ""
    listen = graphics.find("listen")
    if not socket_path and listen is not None and listen.get("type") == "socket":
        socket_path = listen.get("socket") or ""
    if socket_path:
        return f"unix:{socket_path}"
    port = int(graphics.get("port") or -1)
    if port < BASE_PORT:
        return ""
    host = graphics.get("listen") or (listen.get("address") if listen is not None else "") or "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        host = uri_host or "127.0.0.1"
    return f"{host}:{port - BASE_PORT}"


def display_uri(spec: str) -> str:
    """display.vnc as virsh domdisplay prints it: vnc://HOST:PORT or vnc+unix://PATH (any host, not only the
    loopback addresses Vireo's own VMs listen on)."""
    if spec.startswith("unix:"):
        return f"vnc+unix://{spec[5:]}"
    host, _, display = spec.rpartition(":")
    return f"vnc://{host}:{BASE_PORT + int(display)}"


def _message(exc: Exception) -> str:
    get = getattr(exc, "get_error_message", None)
    text = (get() if get else "") or str(exc)
    return " ".join(text.split())
