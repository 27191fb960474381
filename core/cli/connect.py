"""Choosing and reaching the host a command acts on, from its options, and finding the VM it names.

No `--connect`: this user's Vireo service on this computer (core.connect.connect_local starts it when none runs).
`--connect ssh://USER@HOST[:PORT]`: that host's service through SSH (core.connect.RemoteHost; the agent is
installed over SSH when missing, host keys are checked against ~/.ssh/known_hosts).
`--connect qemu:///session` (any libvirt URI, core.host.libvirt_host.is_libvirt_uri): that libvirt connection's
domains (core.host.libvirt_host.LibvirtHost, through the optional libvirt-python).

A VM is named as virsh names a domain: by its name, its uuid, or its Id (the first 8 hex digits of its uuid, the
column `vireo list` shows), so a VM can be reached whatever its name.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from core.connect import RemoteHost, TerminalPrompter, connect_local, parse_uri
from core.host.api import HostError, VmInfo
from core.remote.service import ServiceClient
from core.runner import BadInput

ID_LENGTH = 8     # hex digits of the uuid shown as a VM's Id


class ConnectFailed(Exception):
    """The host could not be reached; `exit_code` says whose fault (2: the options or the host's keys)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class CommandFailed(HostError):
    """The request is refused as it stands (exit 1); the message says what to do instead."""


def remote_host(args: argparse.Namespace) -> RemoteHost:
    """The RemoteHost the options name, not yet connected; HostError for a URI that is not ssh://USER@HOST."""
    target = parse_uri(args.connect)
    target.identity = args.identity or ""
    if args.remote_python:
        target.python = args.remote_python
    return RemoteHost(target, TerminalPrompter(args.accept_new_host_key), copy_unicorn=args.copy_unicorn)


def connect_remote(args: argparse.Namespace) -> RemoteHost:
    """The connected RemoteHost of `--connect` (uploading the agent when the host lacks it); HostError why not."""
    host = remote_host(args)
    host.connect(progress=_upload_progress())
    report = host.report
    if report is not None and report.uploaded and os.environ.get("VIREO_VERBOSE"):
        print(f"vireo: installed {', '.join(report.uploaded)} on {host.name} "
              f"({report.upload_bytes / 1e6:.1f} MB in {report.upload_seconds:.1f} s)", file=sys.stderr)
    return host


def open_host(args: argparse.Namespace) -> ServiceClient:
    """The host of a command: remote with --connect, else the local service. ConnectFailed when unreachable:
    exit 2 for a remote host (a bad URI, a refused host key, failed authentication are the user's to fix), 1 for
    the local service (nothing the user typed was wrong)."""
    if getattr(args, "connect", None):
        from core.host.libvirt_host import is_libvirt_uri
        if is_libvirt_uri(args.connect):
            from core.host.libvirt_host import LibvirtHost
            try:
                return LibvirtHost(args.connect)
            except HostError as exc:
                raise ConnectFailed(str(exc), 1) from None
        try:
            return connect_remote(args)
        except HostError as exc:
            raise ConnectFailed(str(exc), 2) from None
    try:
        return connect_local()
    except HostError as exc:
        raise ConnectFailed(f"{exc}; see $XDG_RUNTIME_DIR/vireo/agent.log", 1) from None


def _upload_progress() -> Callable[[str, int, int], None]:
    shown: dict[str, int] = {}

    def progress(what: str, done: int, total: int) -> None:
        if not sys.stderr.isatty():
            return
        percent = done * 100 // max(1, total)
        if shown.get(what) != percent:
            shown[what] = percent
            print(f"\rvireo: uploading {what}: {percent}%", end="\n" if done >= total else "", file=sys.stderr)
    return progress


def vm_id(info: VmInfo) -> str:
    """The short Id `vireo list` shows for a VM."""
    return info.uuid[:ID_LENGTH]


def find_vm(host: ServiceClient, name: str) -> VmInfo:
    """The VM called `name` (names are unique regardless of case), or whose uuid or Id is `name`; BadInput
    naming the host and pointing at `vireo list --all` otherwise."""
    vms = host.list_vms()
    for match in (lambda i: i.name == name, lambda i: i.uuid == name.lower(),
                  lambda i: i.name.casefold() == name.casefold()):
        found = [i for i in vms if match(i)]
        if len(found) == 1:
            return found[0]
    if len(name) == ID_LENGTH:
        found = [i for i in vms if vm_id(i) == name.lower()]
        if len(found) == 1:
            return found[0]
    raise BadInput(f"no VM named {name!r} on {host.name}: see `vireo list --all{_connect_hint(host)}` for the "
                   "names, or give its uuid")


def _connect_hint(host: ServiceClient) -> str:
    return f" --connect {host.target.uri}" if isinstance(host, RemoteHost) else ""
