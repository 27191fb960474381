"""Reaching a host, for the clients of the Host API (the GUI, the CLI): `connect_local()` for this user's Vireo
service on this computer (core/remote/local.py), `RemoteHost` for one over SSH (core/remote/host.py) with its
`SshTarget`, `parse_uri` and host-key `Check`; `LibvirtHost` for a libvirt URI (core/host/libvirt_host.py), told
apart by `is_libvirt_uri`; `move_vm` moves a VM between two of them. app/ imports from core/
only this module, core.host (the API and its values) and core.config (the VM definition).

A module of its own, beside core.host rather than in it: these clients implement core.host's API over
core.agent's protocol, and core.agent serves core.host's LocalHost, so the API package must not import them.
"""
from __future__ import annotations

from core.host.libvirt_host import LibvirtHost, is_libvirt_uri
from core.remote.host import ConnectTiming, RemoteHost
from core.remote.known_hosts import Check
from core.remote.local import LocalServiceHost, connect_local
from core.remote.move import move_vm
from core.remote.ssh import Prompter, SshError, SshTarget, TerminalPrompter, parse_uri

__all__ = ["Check", "ConnectTiming", "LibvirtHost", "LocalServiceHost", "Prompter", "RemoteHost", "SshError",
           "SshTarget", "TerminalPrompter", "connect_local", "is_libvirt_uri", "move_vm", "parse_uri"]
