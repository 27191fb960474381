"""`main.py run --connect URI ...`: the headless runner's options, run on a remote host.

It defines a transient VM on the host from the runner's options (paths name files on that host: the kernel and
initrd, --disk images, whose format the host reads when not given, --cdrom ISOs, --boot order and --firmware),
shows its serial console on this terminal (keys typed go to it; Ctrl-A x stops it), and exits as the local runner
does: 0 when the guest powers off, 1 when it crashes, times out or is stopped by the user, 2 when it cannot be
started (bad options, a refused host key, failed authentication, an agent that cannot run there). If the
connection drops while the guest runs, the VM keeps running on the host (exit 1; `vireo list --connect URI` shows it).
The transient definition is removed once the VM has stopped.
"""
from __future__ import annotations

import argparse
import os
import secrets
import sys
import threading
import time

from core.cli.connect import connect_remote
from core.config import BootConfig, CdromConfig, DiskConfig, SerialConfig, VmConfig
from core.host.api import TERMINAL_RESET, EventKind, HostError, HostEvent, VmState
from core.machine import DiskSpec
from core.runner import (
    DEFAULT_BOOT_MENU_WAIT,
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_OK,
    BadInput,
    _serial_sink,
    _StdinPump,
    parse_boot,
    parse_disk,
)


def _check_remote_args(args: argparse.Namespace) -> list[DiskSpec]:
    """The --disk specs, checked; ValueError/BadInput with one line for an option the remote run cannot take."""
    unsupported = [("--no-host-decompress", args.no_host_decompress), ("--screendump", bool(args.screendump)),
                   ("--display window", args.display == "window"),
                   ("--vnc", bool(args.vnc)),
                   (f"--boot-menu-wait {args.boot_menu_wait}", args.boot_menu_wait != DEFAULT_BOOT_MENU_WAIT)]
    for option, given in unsupported:
        if given:
            raise ValueError(f"{option} is not available with --connect yet")
    if args.timeout is not None and args.timeout <= 0:
        raise ValueError(f"--timeout {args.timeout}: give a positive number of seconds")
    disks = [parse_disk(spec, local=False) for spec in args.disk]
    paths = [("--kernel", args.kernel), ("--initrd", args.initrd), ("--firmware", args.firmware)]
    paths += [("--disk", d.path) for d in disks] + [("--cdrom", iso) for iso in args.cdrom]
    for option, path in paths:
        if path and not os.path.isabs(path):
            raise ValueError(f"{option} {path}: give an absolute path on the remote host")
    for disk in disks:
        if disk.cache != "writeback":
            # A definition has no cache mode: the VM process opens its disks write-back.
            raise ValueError(f"--disk {disk.path}: cache={disk.cache} is not available with --connect")
    parse_boot(args.boot)
    return disks


def _disk_config(host, disk: DiskSpec) -> DiskConfig:
    """The definition's disk for a --disk spec; a format not given is read from the image on the host, as the
    local runner detects it from the header."""
    fmt = disk.format
    if fmt is None:
        probe = host.probe_file(disk.path, "disk")
        if not probe.ok:
            raise HostError(probe.message)
        fmt = "qcow2" if probe.kind.startswith("qcow2") else "raw"
    return DiskConfig(disk.path, fmt, disk.bus, disk.readonly)


def run_remote(args: argparse.Namespace) -> int:
    err = sys.stderr
    try:
        args.disk_specs = _check_remote_args(args)
    except (ValueError, BadInput) as exc:
        print(f"vireo: {exc}", file=err)
        return EXIT_BAD_INPUT
    try:
        write, close_sink, interactive = _serial_sink(args.serial)
    except BadInput as exc:
        print(f"vireo: {exc}", file=err)
        return EXIT_BAD_INPUT
    try:
        host = connect_remote(args)
    except HostError as exc:
        print(f"vireo: {exc}", file=err)
        close_sink()
        return EXIT_BAD_INPUT
    try:
        return _RemoteRun(args, host, write, interactive).run()
    finally:
        close_sink()
        host.close()


class _RemoteRun:
    def __init__(self, args: argparse.Namespace, host, write, interactive: bool) -> None:
        self.args, self.host, self.write, self.interactive = args, host, write, interactive
        self.done = threading.Event()
        self.final: tuple[VmState, str] | None = None
        self.quit_requested = threading.Event()
        self.uuid = ""

    def _on_event(self, event: HostEvent) -> None:
        if event.uuid == self.uuid and event.kind == EventKind.STATE and event.state in (VmState.SHUTOFF,
                                                                                       VmState.CRASHED):
            self.final = (event.state, event.reason)
            self.done.set()

    def _on_connection(self, state: str, message: str) -> None:
        if state in ("disconnected", "failed"):
            self.done.set()

    def _on_serial(self, data: bytes) -> None:
        if data == TERMINAL_RESET:
            return      # the start of a boot; this terminal is not cleared for it, as the local runner does not
        self.write(data)

    def run(self) -> int:
        args, host, err = self.args, self.host, sys.stderr
        boot = BootConfig(args.kernel or "", args.initrd or "", args.append, order=parse_boot(args.boot),
                          firmware=args.firmware or "")
        try:
            disks = [_disk_config(host, d) for d in args.disk_specs]
            config = VmConfig(name=f"run-{secrets.token_hex(4)}", memory_mib=args.memory, vcpus=args.cpus,
                              accel=args.accel, boot=boot, disks=disks,
                              cdroms=[CdromConfig(iso) for iso in args.cdrom], serial=SerialConfig("console"),
                              notes=f"transient: main.py run --connect from {os.uname().nodename}")
            info = host.define(config)
        except HostError as exc:
            print(f"vireo: {exc}", file=err)
            return EXIT_BAD_INPUT
        self.uuid = info.uuid
        host.add_listener(self._on_event)
        host.add_connection_listener(self._on_connection)
        pump = None
        try:
            host.subscribe_serial(self.uuid, self._on_serial)
            try:
                host.start(self.uuid)
            except HostError as exc:
                print(f"vireo: {exc}", file=err)
                return EXIT_BAD_INPUT
            started = host.get(self.uuid)
            if args.accel == "auto" and started.accel:
                print(f"vireo: accelerator {started.accel} on {host.name} ({started.accel_reason})", file=err)
            pump = _StdinPump(self, self._quit) if self.interactive else None
            finished = self.done.wait(args.timeout)
            if not finished:
                print(f"\r\nvireo: timeout: the guest was still running after {args.timeout:g} s", file=err)
                self._force_off()
                return EXIT_FAILED
            if self.final is None:
                print(f"\r\nvireo: {host.error}; the VM {config.name} keeps running on {host.name} "
                      f"(vireo list --connect {args.connect})", file=err)
                self.uuid = ""     # keep its definition: it is still running
                return EXIT_FAILED
            state, reason = self.final
            if state == VmState.CRASHED:
                print(f"\r\nvireo: the guest crashed: {reason}", file=err)
                return EXIT_FAILED
            if self.quit_requested.is_set():
                print("\r\nvireo: stopped by the user", file=err)
                return EXIT_FAILED
            return EXIT_OK
        except KeyboardInterrupt:
            self._force_off()
            return EXIT_FAILED
        finally:
            if pump is not None:
                pump.close()
            host.remove_listener(self._on_event)
            if self.uuid and host.connected:
                try:
                    self._wait_stopped(10)
                    host.delete(self.uuid)
                except HostError as exc:
                    print(f"vireo: removing the transient VM: {exc}", file=err)

    def serial_input(self, data: bytes) -> None:
        """What the runner's stdin pump calls with the keys typed."""
        try:
            self.host.send_serial(self.uuid, data)
        except HostError:
            pass

    def _quit(self) -> None:
        self.quit_requested.set()
        self._force_off()

    def _force_off(self) -> None:
        try:
            self.host.force_off(self.uuid)
        except HostError:
            pass

    def _wait_stopped(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.host.get(self.uuid).state.active and time.monotonic() < deadline:
            time.sleep(0.05)
