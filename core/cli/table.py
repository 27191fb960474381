"""The subcommands that act on a host's VMs, as a table main.py adds to its parser, and the one place that turns
their outcome into an exit status and a one-line error: connect (local service, or --connect), run the command,
disconnect (the VMs run on in the service)."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass

from core.cli import commands, console
from core.cli.connect import ConnectFailed, add_connect_arguments, add_vm_argument, open_host
from core.host.api import HostError
from core.remote.service import ServiceClient
from core.runner import EXIT_BAD_INPUT, EXIT_FAILED, BadInput

Handler = Callable[[ServiceClient, argparse.Namespace], int]


@dataclass(frozen=True)
class HostCommand:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    handler: Handler

    def add_to(self, sub: argparse._SubParsersAction) -> None:
        """Add this subcommand (with --connect and its SSH options) to main.py's parser."""
        p = sub.add_parser(self.name, help=self.help, description=self.help)
        self.add_arguments(p)
        add_connect_arguments(p)
        p.set_defaults(handler=self.run)

    def run(self, args: argparse.Namespace) -> int:
        """Connect, run, disconnect; exit 2 on bad input, 1 when the host refused or failed, with one line on
        stderr."""
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
                commands.add_list_arguments, commands.cmd_list),
    HostCommand("define", "add a VM from a JSON definition, or update the one with its uuid or name",
                commands.add_define_arguments, commands.cmd_define),
    HostCommand("dumpconfig", "print a VM's definition as JSON (what define reads)",
                add_vm_argument, commands.cmd_dumpconfig),
    HostCommand("undefine", "remove a shut-off VM's definition (--remove-storage: and its disk images)",
                commands.add_undefine_arguments, commands.cmd_undefine),
    HostCommand("start", "start a VM (--console: and attach to its serial console)",
                commands.add_start_arguments, commands.cmd_start),
    HostCommand("shutdown", "press a VM's ACPI power button (the guest powers off)",
                add_vm_argument, commands.cmd_shutdown),
    HostCommand("destroy", "force a VM off at once", add_vm_argument, commands.cmd_destroy),
    HostCommand("suspend", "pause a running VM", add_vm_argument, commands.cmd_suspend),
    HostCommand("resume", "continue a paused VM", add_vm_argument, commands.cmd_resume),
    HostCommand("reboot", "restart a VM through the ACPI power button", add_vm_argument, commands.cmd_reboot),
    HostCommand("console", "attach this terminal to a VM's serial console (Ctrl-] detaches)",
                add_vm_argument, console.cmd_console),
    HostCommand("screendump", "save a VM's screen as a PNG", console.add_screendump_arguments,
                console.cmd_screendump),
    HostCommand("change-media", "put an ISO image in a VM's CD-ROM drive, or --eject it (takes effect at the next "
                "start of a running VM)", commands.add_change_media_arguments, commands.cmd_change_media),
    HostCommand("domdisplay", "print where a VNC viewer reaches a running VM's console (vnc://HOST:PORT; "
                "--forward: through the SSH connection)", commands.add_domdisplay_arguments, commands.cmd_domdisplay),
    HostCommand("autostart", "start a VM with its host's Vireo service (--disable: no longer)",
                commands.add_autostart_arguments, commands.cmd_autostart),
)
