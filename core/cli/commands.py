"""The definition and lifecycle commands, named and behaving as virsh's domain commands do (libvirt's virsh(1):
list, define, dumpxml, undefine, start, shutdown, destroy, suspend, resume, reboot, autostart, change-media,
domdisplay), over
any Host API host (core/host/api.py). `dumpconfig` is virsh's dumpxml for Vireo's definition format, the VmConfig
JSON of core/config.py, which `define` reads back.

Each command function takes the connected host and the parsed options and returns the exit status; a refusal
raises BadInput (exit 2: an unknown VM, an unreadable or invalid file) or HostError/CommandFailed (exit 1: the
request could not be carried out, e.g. starting a VM that runs, which virsh reports as "Domain is already
active"). What a command did is printed on stdout in virsh's words ("Domain 'web' started").
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from core.cli.connect import CommandFailed, find_vm, vm_id
from core.cli.options import add_vm_argument
from core.config import ConfigError, VmConfig
from core.connect import RemoteHost
from core.host.api import HostError, VmInfo, VmState
from core.remote.service import ServiceClient
from core.runner import EXIT_OK, BadInput
from core.vnc.address import parse_vnc

STATE_WAIT = 30.0     # seconds a command waits for the state its request leads to (start, suspend, resume)


def _say(text: str) -> None:
    print(text, flush=True)


# -- listing and definitions ---------------------------------------------------------------------------------

def add_list_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--all", "-a", action="store_true", help="include the shut-off VMs (default: the active ones)")


def cmd_list(host: ServiceClient, args: argparse.Namespace) -> int:
    """`vireo list [--all]`: virsh's table of Id, Name and State, with the accelerator each runs on."""
    vms = [v for v in host.list_vms() if args.all or v.state.active]
    width = max([len(v.name) for v in vms] + [4])
    rows = [(vm_id(v), v.name, _state_word(v.state), v.accel or v.config.accel) for v in vms]
    _say(f" {'Id':<8}   {'Name':<{width}}   {'State':<9}   Accel")
    _say("-" * (8 + width + 9 + 16))
    for row in rows:
        _say(f" {row[0]:<8}   {row[1]:<{width}}   {row[2]:<9}   {row[3]}")
    for err in host.load_errors():
        print(f"vireo: warning: cannot load {err}", file=sys.stderr)
    return EXIT_OK


def _state_word(state: VmState) -> str:
    """virsh's words for the states: running, paused, shut off, crashed (and starting, which virsh lacks)."""
    return "shut off" if state == VmState.SHUTOFF else state.value


def add_define_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE.json", help="a VM definition as `vireo dumpconfig` prints it")


def read_definition(path: str) -> tuple[VmConfig, bool]:
    """The definition in `path` and whether it names its uuid; BadInput saying what is wrong with the file."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode()
    except OSError as exc:
        raise BadInput(f"{path}: cannot read it: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise BadInput(f"{path}: not UTF-8 text: give a JSON file as `vireo dumpconfig NAME` writes") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInput(f"{path}: not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg}): give a "
                       "definition as `vireo dumpconfig NAME` writes") from None
    try:
        config = VmConfig.from_dict(data)
    except ConfigError as exc:
        raise BadInput(f"{path}: {exc}") from None
    return config, isinstance(data, dict) and "uuid" in data


def cmd_define(host: ServiceClient, args: argparse.Namespace) -> int:
    """`vireo define FILE.json`: add the VM, or update the one with the same uuid — or, when the file names no
    uuid, the one with the same name (as virsh define updates a domain by name)."""
    config, has_uuid = read_definition(args.file)
    existing = {v.uuid: v for v in host.list_vms()}
    if not has_uuid:
        same_name = [v for v in existing.values() if v.name.casefold() == config.name.casefold()]
        if same_name:
            config = config.copy(uuid=same_name[0].uuid)
    updated = config.uuid in existing
    info = host.define(config)
    _say(f"Domain '{info.name}' {'updated' if updated else 'defined'} from {args.file}")
    return EXIT_OK


def cmd_dumpconfig(host: ServiceClient, args: argparse.Namespace) -> int:
    """`vireo dumpconfig NAME`: the definition as JSON on stdout, in the form `define` reads."""
    info = find_vm(host, args.name)
    sys.stdout.write(json.dumps(info.config.to_dict(), indent=2) + "\n")
    return EXIT_OK


def add_undefine_arguments(p: argparse.ArgumentParser) -> None:
    add_vm_argument(p)
    p.add_argument("--remove-storage", action="store_true",
                   help="also delete the VM's disk image files (not one another VM uses: that one is kept)")


def cmd_undefine(host: ServiceClient, args: argparse.Namespace) -> int:
    """`vireo undefine NAME [--remove-storage]`: forget a shut-off VM (and delete its disk images)."""
    info = find_vm(host, args.name)
    if info.state.active:
        raise CommandFailed(f"{info.name} is {_state_word(info.state)}: stop it first with `vireo shutdown "
                            f"{info.name}` (or `vireo destroy {info.name}`)")
    result = host.delete(info.uuid, delete_disks=args.remove_storage)
    for path in result[1:]:
        _say(f"Removed {path}")
    # A disk another VM still uses is the service's to keep (it checks, not this client): say so, it is no error.
    for kept in result.kept:
        _say(f"Kept {kept.path}: {kept.reason}")
    _say(f"Domain '{info.name}' has been undefined")
    return EXIT_OK


def add_autostart_arguments(p: argparse.ArgumentParser) -> None:
    add_vm_argument(p)
    p.add_argument("--disable", action="store_true", help="no longer start it with the service")


def cmd_autostart(host: ServiceClient, args: argparse.Namespace) -> int:
    """`vireo autostart NAME [--disable]`: start the VM whenever its host's Vireo service starts."""
    info = find_vm(host, args.name)
    host.define(info.config.copy(autostart=not args.disable))
    _say(f"Domain '{info.name}' {'unmarked' if args.disable else 'marked'} as autostarted")
    return EXIT_OK


def add_change_media_arguments(p: argparse.ArgumentParser) -> None:
    add_vm_argument(p)
    p.add_argument("iso", nargs="?", metavar="ISO", help="the ISO image to put in the drive (a path on the VM's host)")
    p.add_argument("--eject", action="store_true", help="take the disc out; the drive stays, empty")
    p.add_argument("--drive", type=int, default=1, metavar="N", help="which CD-ROM drive, from 1 (default 1)")


def cmd_change_media(host: ServiceClient, args: argparse.Namespace) -> int:
    """`vireo change-media NAME ISO | --eject [--drive N]`: put an ISO image in a CD-ROM drive of the VM's
    definition, or take it out (virsh change-media --config). A running VM keeps the disc it started with: the
    engine cannot swap a disc under a running guest yet, so the change is for its next start, and that is said."""
    if bool(args.iso) == args.eject:
        raise BadInput("give the ISO image to insert, or --eject (not both)")
    info = find_vm(host, args.name)
    drives = info.config.cdroms
    if not drives:
        raise CommandFailed(f"{info.name} has no CD-ROM drive: add one in the VM window (Details, CD-ROM, Add "
                            f"CD-ROM Drive), or add \"cdroms\": [{{\"path\": \"\"}}] to `vireo dumpconfig "
                            f"{info.name}` and `vireo define` it")
    if not 1 <= args.drive <= len(drives):
        raise BadInput(f"--drive {args.drive}: {info.name} has {len(drives)} CD-ROM "
                       f"drive{'s' if len(drives) > 1 else ''}; give 1..{len(drives)}")
    config = info.config.copy()
    drive = config.cdroms[args.drive - 1]
    where = f"CD-ROM {args.drive} of '{info.name}'"
    if args.eject:
        if not drive.path:
            _say(f"{where} is already empty")
            return EXIT_OK
        done = f"Ejected {drive.path} from {where}"
        drive.path = ""
    else:
        drive.path = _host_path(host, args.iso)
        try:
            probe = host.probe_file(drive.path, "iso")
        except HostError as exc:
            raise BadInput(str(exc)) from None
        if not probe.ok:
            raise BadInput(probe.message)
        done = f"Inserted {drive.path} into {where}: {probe.kind}"
    host.define(config)
    _say(done)
    if info.state.active:
        _say(f"'{info.name}' is {_state_word(info.state)}: the change takes effect at its next start (the running "
             "VM keeps the disc it started with)")
    return EXIT_OK


def _host_path(host: ServiceClient, path: str) -> str:
    """A file on the VM's host: a relative path is this shell's directory's for the local host, and means nothing
    on a remote one."""
    if os.path.isabs(path):
        return path
    if isinstance(host, RemoteHost):
        raise BadInput(f"{path} is a relative path: give the absolute path of the file on {host.name}")
    return os.path.abspath(path)


# -- lifecycle -----------------------------------------------------------------------------------------------

def add_start_arguments(p: argparse.ArgumentParser) -> None:
    add_vm_argument(p)
    p.add_argument("--console", action="store_true", help="attach to its serial console once started "
                                                          "(Ctrl-] detaches)")


def cmd_start(host: ServiceClient, args: argparse.Namespace) -> int:
    """`vireo start NAME [--console]`: boot a shut-off (or crashed) VM."""
    info = find_vm(host, args.name)
    if info.state.active:
        raise CommandFailed(f"{info.name} is already active ({_state_word(info.state)}): attach to it with "
                            f"`vireo console {info.name}` or stop it with `vireo shutdown {info.name}`")
    host.start(info.uuid)
    # A guest may power off as soon as it has started: shut off again is a start that worked.
    _wait_state(host, info, (VmState.RUNNING, VmState.PAUSED, VmState.SHUTOFF))
    _say(f"Domain '{info.name}' started")
    if args.console:
        from core.cli.console import attach
        return attach(host, find_vm(host, info.uuid), replay="boot")
    return EXIT_OK


def _active(host: ServiceClient, name: str, doing: str, *allowed: VmState) -> VmInfo:
    """The VM, which must be in one of `allowed` (default running) for `doing`; CommandFailed saying what to do."""
    info = find_vm(host, name)
    allowed = allowed or (VmState.RUNNING,)
    if info.state not in allowed:
        if info.state == VmState.PAUSED and doing == "suspend":
            raise CommandFailed(f"{info.name} is already paused: continue it with `vireo resume {info.name}`")
        if info.state.active:
            hint = f"resume it first with `vireo resume {info.name}`" if info.state == VmState.PAUSED else \
                "wait until it runs"
        else:
            hint = f"start it with `vireo start {info.name}`"
        raise CommandFailed(f"cannot {doing} {info.name}: it is {_state_word(info.state)}; {hint}")
    return info


def cmd_shutdown(host: ServiceClient, args: argparse.Namespace) -> int:
    """`vireo shutdown NAME`: press the ACPI power button; the guest powers itself off (or ignores it)."""
    info = _active(host, args.name, "shut down")
    host.shutdown(info.uuid)
    _say(f"Domain '{info.name}' is being shutdown")
    return EXIT_OK


def cmd_destroy(host: ServiceClient, args: argparse.Namespace) -> int:
    """`vireo destroy NAME`: pull the plug (running or paused); returns once the VM is off."""
    info = _active(host, args.name, "destroy", VmState.RUNNING, VmState.PAUSED)
    host.force_off(info.uuid)
    _wait_state(host, info, (VmState.SHUTOFF, VmState.CRASHED))
    _say(f"Domain '{info.name}' destroyed")
    return EXIT_OK


def cmd_suspend(host: ServiceClient, args: argparse.Namespace) -> int:
    """`vireo suspend NAME`: pause every vCPU (the VM keeps its memory)."""
    info = _active(host, args.name, "suspend")
    host.pause(info.uuid)
    _wait_state(host, info, (VmState.PAUSED,))
    _say(f"Domain '{info.name}' suspended")
    return EXIT_OK


def cmd_resume(host: ServiceClient, args: argparse.Namespace) -> int:
    """`vireo resume NAME`: continue a suspended VM."""
    info = find_vm(host, args.name)
    if info.state != VmState.PAUSED:
        raise CommandFailed(f"cannot resume {info.name}: it is {_state_word(info.state)}, not paused")
    host.resume(info.uuid)
    _wait_state(host, info, (VmState.RUNNING,))
    _say(f"Domain '{info.name}' resumed")
    return EXIT_OK


def cmd_reboot(host: ServiceClient, args: argparse.Namespace) -> int:
    """`vireo reboot NAME`: the ACPI power button, then a fresh start once the guest has powered off."""
    info = _active(host, args.name, "reboot")
    host.reboot(info.uuid)
    _say(f"Domain '{info.name}' is being rebooted")
    return EXIT_OK


def add_save_arguments(p: argparse.ArgumentParser) -> None:
    add_vm_argument(p)
    p.add_argument("file", nargs="?", help="state file to write (default: the VM's managed save, which "
                                           "`vireo start` resumes)")


def cmd_save(host: ServiceClient, args: argparse.Namespace) -> int:
    """`vireo save NAME [FILE]`: stop a running or paused VM into a state file (docs/machine-state.md)."""
    info = _active(host, args.name, "save", VmState.RUNNING, VmState.PAUSED)
    path = host.save(info.uuid, _host_path(host, args.file) if args.file else None)
    _wait_state(host, info, (VmState.SHUTOFF,))
    if args.file:
        _say(f"Domain '{info.name}' saved to {path}; resume it with `vireo restore {path}`")
    else:
        _say(f"Domain '{info.name}' saved; `vireo start {info.name}` resumes it")
    return EXIT_OK


def add_restore_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="a state file written by `vireo save`")


def cmd_restore(host: ServiceClient, args: argparse.Namespace) -> int:
    """`vireo restore FILE`: start the VM the file was saved from, resumed where it stopped."""
    info = host.restore(_host_path(host, args.file))
    _wait_state(host, info, (VmState.RUNNING, VmState.PAUSED, VmState.SHUTOFF))
    _say(f"Domain '{info.name}' restored from {args.file}")
    return EXIT_OK


def _wait_state(host: ServiceClient, info: VmInfo, states: tuple[VmState, ...]) -> None:
    """Wait until the host's mirror shows one of `states` (its event may trail the request's answer), so the
    next command sees the change; CommandFailed with the VM's reason when it ends up elsewhere."""
    deadline = time.monotonic() + STATE_WAIT
    while True:
        now = host.get(info.uuid)
        if now.state in states:
            return
        if now.state == VmState.CRASHED or time.monotonic() > deadline:
            reason = f": {now.reason}" if now.reason else ""
            raise CommandFailed(f"{info.name} is {_state_word(now.state)}{reason}; see `vireo console "
                                f"{info.name}` or the service's log")
        time.sleep(0.02)


# -- the graphical console -----------------------------------------------------------------------------------

def add_domdisplay_arguments(p: argparse.ArgumentParser) -> None:
    add_vm_argument(p)
    p.add_argument("--forward", action="store_true",
                   help="with --connect ssh://…: serve the console on this machine's 127.0.0.1 through the SSH "
                        "connection (as ssh -L does) until Ctrl-C")


def cmd_domdisplay(host: ServiceClient, args: argparse.Namespace) -> int:
    """`vireo domdisplay NAME [--forward]`: where a VNC viewer reaches the running VM's console, as virsh prints it
    (vnc://127.0.0.1:5901). On a host reached over SSH that address is the remote host's loopback: a hint on stderr
    says how to forward it, and --forward does it through this command's own connection."""
    info = find_vm(host, args.name)
    display = info.config.display
    from core.host.libvirt_host import LibvirtHost
    if isinstance(host, LibvirtHost):                # a libvirt domain (core/cli/libvirt_display.py)
        from core.cli.libvirt_display import domdisplay
        return domdisplay(info)
    if not display.vnc:
        raise CommandFailed(f"{info.name} has no VNC console: set \"vnc\": \"127.0.0.1:1\" in the display section "
                            f"of `vireo dumpconfig {info.name}` and `vireo define` it (docs/vnc.md)")
    address = parse_vnc(display.vnc, "display.vnc")
    remote = isinstance(host, RemoteHost)
    if args.forward and (not remote or address.unix):
        raise BadInput("--forward is for a VM on a host reached with --connect ssh://… whose display.vnc is "
                       "HOST:DISPLAY; this one is reachable as printed without it")
    if info.state not in (VmState.RUNNING, VmState.PAUSED):
        raise CommandFailed(f"{info.name} is {_state_word(info.state)}: its VNC console exists while it runs; "
                            f"start it with `vireo start {info.name}`")
    if args.forward:
        return _forward(host, address)
    _say(address.uri())
    if remote and not address.unix:
        print(f"vireo: that address is on {host.target.label}: reach it with `vireo domdisplay {info.name} "
              f"--forward --connect …`, or ssh -L {address.port}:{address.host}:{address.port} {host.target.label}",
              file=sys.stderr)
    return EXIT_OK


def _forward(host: RemoteHost, address) -> int:
    import signal
    import threading

    from core.cli.vnc_forward import serve
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        serve(host.open_tcp_channel, address, stop,
              lambda local: _say(f"{local} -> {address.uri()} on {host.target.label} (Ctrl-C stops)"),
              lambda error: print(f"vireo: {error}", file=sys.stderr, flush=True))
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    return EXIT_OK
