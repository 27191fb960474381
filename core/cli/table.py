"""The subcommands that act on a host's VMs, as a table main.py adds to its parser, and the one place that turns
their outcome into an exit status and a one-line error: connect (local service, or --connect), run the command,
disconnect (the VMs run on in the service).

main.py reads this table at every start, `run` included, so it imports nothing heavy: a command's module (and
with it the Host API, SSH, the service client) is imported when that command's options are added or it runs."""
from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.cli.options import add_connect_arguments, add_vm_argument

if TYPE_CHECKING:
    from core.remote.service import ServiceClient

Handler = Callable[["ServiceClient", argparse.Namespace], int]


def _late(module: str, name: str) -> Callable:
    """core.cli.<module>.<name>, imported at its first call."""
    def call(*args: object) -> object:
        return getattr(importlib.import_module(f"core.cli.{module}"), name)(*args)
    call.__name__ = call.__qualname__ = name
    return call


@dataclass(frozen=True)
class HostCommand:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    handler: Handler

    def add_to(self, sub: argparse._SubParsersAction, with_options: bool = True) -> None:
        """Add this subcommand (with --connect and its SSH options) to main.py's parser; without its options
        when another subcommand is run (its name and help still show in `vireo --help`)."""
        p = sub.add_parser(self.name, help=self.help, description=self.help)
        if with_options:
            self.add_arguments(p)
            add_connect_arguments(p)
        p.set_defaults(handler=self.run)

    def run(self, args: argparse.Namespace) -> int:
        """Connect, run, disconnect; exit 2 on bad input, 1 when the host refused or failed, with one line on
        stderr."""
        from core.cli.connect import ConnectFailed, open_host
        from core.host.api import HostError
        from core.runner import EXIT_BAD_INPUT, EXIT_FAILED, BadInput
        try:
            host = open_host(args)
        except ConnectFailed as exc:
            return _fail(str(exc), exc.exit_code)
        try:
            return self.handler(host, args)
        except BadInput as exc:
            return _fail(str(exc), EXIT_BAD_INPUT)
        except HostError as exc:
            return _fail(str(exc), EXIT_FAILED)
        finally:
            host.close()


def _fail(message: str, code: int) -> int:
    print(f"vireo: {message}", file=sys.stderr)
    return code


HOST_COMMANDS = (
    HostCommand("list", "list the VMs and their states (the active ones; --all for every one)",
                _late("commands", "add_list_arguments"), _late("commands", "cmd_list")),
    HostCommand("define", "add a VM from a JSON definition, or update the one with its uuid or name",
                _late("commands", "add_define_arguments"), _late("commands", "cmd_define")),
    HostCommand("dumpconfig", "print a VM's definition as JSON (what define reads)",
                add_vm_argument, _late("commands", "cmd_dumpconfig")),
    HostCommand("undefine", "remove a shut-off VM's definition (--remove-storage: and its disk images)",
                _late("commands", "add_undefine_arguments"), _late("commands", "cmd_undefine")),
    HostCommand("start", "start a VM (--console: and attach to its serial console)",
                _late("commands", "add_start_arguments"), _late("commands", "cmd_start")),
    HostCommand("shutdown", "press a VM's ACPI power button (the guest powers off)",
                add_vm_argument, _late("commands", "cmd_shutdown")),
    HostCommand("destroy", "force a VM off at once", add_vm_argument, _late("commands", "cmd_destroy")),
    HostCommand("suspend", "pause a running VM", add_vm_argument, _late("commands", "cmd_suspend")),
    HostCommand("resume", "continue a paused VM", add_vm_argument, _late("commands", "cmd_resume")),
    HostCommand("save", "stop a VM into a state file (default: its managed save, which start resumes)",
                _late("commands", "add_save_arguments"), _late("commands", "cmd_save")),
    HostCommand("restore", "start a VM from a state file written by save", _late("commands", "add_restore_arguments"),
                _late("commands", "cmd_restore")),
    HostCommand("clone", "copy a shut-off VM under a new name, uuid and MAC (--linked: qcow2 overlays instead of "
                "full disk copies)", _late("clone_move", "add_clone_arguments"), _late("clone_move", "cmd_clone")),
    HostCommand("move", "move a shut-off or saved VM (definition, disks, saved state) to another host: --to "
                "ssh://USER@HOST or local", _late("clone_move", "add_move_arguments"), _late("clone_move", "cmd_move")),
    HostCommand("reboot", "restart a VM through the ACPI power button", add_vm_argument,
                _late("commands", "cmd_reboot")),
    HostCommand("console", "attach this terminal to a VM's serial console (Ctrl-] detaches)",
                add_vm_argument, _late("console", "cmd_console")),
    HostCommand("screendump", "save a VM's screen as a PNG", _late("console", "add_screendump_arguments"),
                _late("console", "cmd_screendump")),
    HostCommand("change-media", "put an ISO image in a VM's CD-ROM drive, or --eject it (takes effect at the next "
                "start of a running VM)", _late("commands", "add_change_media_arguments"),
                _late("commands", "cmd_change_media")),
    HostCommand("domdisplay", "print where a VNC viewer reaches a running VM's console (vnc://HOST:PORT; "
                "--forward: through the SSH connection)", _late("commands", "add_domdisplay_arguments"),
                _late("commands", "cmd_domdisplay")),
    HostCommand("autostart", "start a VM with its host's Vireo service (--disable: no longer)",
                _late("commands", "add_autostart_arguments"), _late("commands", "cmd_autostart")),
    HostCommand("domiflist", "list a VM's network cards (Interface, Type, Source, Model, MAC)", add_vm_argument,
                _late("netcmds", "cmd_domiflist")),
    HostCommand("domifstat", "print a running VM's network card counters (rx/tx bytes, packets, drops)",
                _late("netcmds", "add_ifstat_arguments"), _late("netcmds", "cmd_domifstat")),
    HostCommand("domif-setlink", "plug a VM's network card in (up) or pull its cable out (down)",
                _late("netcmds", "add_setlink_arguments"), _late("netcmds", "cmd_domif_setlink")),
    HostCommand("snapshot-create", "take a VM snapshot: its qcow2 disks, and its machine state while it runs",
                _late("snapcmds", "add_create_arguments"), _late("snapcmds", "cmd_snapshot_create")),
    HostCommand("snapshot-list", "list a VM's snapshots (Name, Creation Time, State)", add_vm_argument,
                _late("snapcmds", "cmd_snapshot_list")),
    HostCommand("snapshot-revert", "go back to a VM snapshot (one taken while running resumes running)",
                _late("snapcmds", "add_snapshot_arguments"), _late("snapcmds", "cmd_snapshot_revert")),
    HostCommand("snapshot-delete", "delete a VM snapshot from every disk",
                _late("snapcmds", "add_snapshot_arguments"), _late("snapcmds", "cmd_snapshot_delete")),
)
