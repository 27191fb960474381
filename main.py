#!/usr/bin/env python3
"""Vireo's entry point: no arguments (or only GUI options such as --connect) opens the manager; otherwise a
subcommand: `run …` the headless runner (`run --connect ssh://…` on a remote host), `img …` the disk-image tool
(`img … --connect ssh://…` on a remote host's files), and the virsh-like commands over a host's saved VMs (`list`,
`define`, `start`, `console`, … — core/cli/table.py), on this computer's Vireo service or, with
`--connect ssh://USER@HOST`, a remote one."""
from __future__ import annotations

import gc
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse


def _add_run(p: argparse.ArgumentParser) -> None:
    from core.cli.options import add_connect_arguments
    from core.runner import add_run_arguments
    add_run_arguments(p)
    add_connect_arguments(p)


def _run(args: argparse.Namespace) -> int:
    if args.connect:
        gc.enable()                    # main() left it off for the local machine's start-up (core/runner.py)
        from core.cli.run_remote import run_remote
        return run_remote(args)
    from core.runner import prepare, run
    if args.display == "window":
        session = prepare(args)
        if isinstance(session, int):
            return session
        from app.ui.run_window import run_with_window  # Qt is imported only when a window is asked for
        return run_with_window(session, f"Vireo — {args.kernel}")
    return run(args)


def _add_img(p: argparse.ArgumentParser) -> None:
    from core.cli.options import add_connect_arguments
    from core.storage.cli import add_img_arguments
    add_img_arguments(p)
    # `--connect` after the subcommand's own arguments, as for every other command (`img info PATH --connect …`).
    for action in p._subparsers._group_actions:
        for sub in action.choices.values():
            add_connect_arguments(sub)


def _img(args: argparse.Namespace) -> int:
    if getattr(args, "connect", None):
        from core.cli.img_remote import img_remote
        return img_remote(args)
    from core.storage.cli import img_main
    return img_main(args)


# (name, help, add its arguments, run it) for the subcommands that are not host commands.
SUBCOMMANDS = (
    ("run", "boot one VM headless, serial console on this terminal", _add_run, _run),
    ("img", "create, inspect, check, resize and snapshot disk images", _add_img, _img),
)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("--") and argv[0] not in ("-h", "--help"):
        from app.ui.main_window import launch  # Qt is imported only for the GUI
        return launch(argv)
    if argv[:2] == ["img", "snapshot"]:
        # Its plain forms without argparse, whose import and parser cost more than `qemu-img snapshot` takes.
        from core.storage.snapshot_argv import parse_snapshot_argv
        args = parse_snapshot_argv(argv[2:])
        if args is not None:
            return _img(args)
    import argparse
    parser = argparse.ArgumentParser(prog="vireo", description="Vireo virtual machine manager. "
                                     "Without arguments it opens the manager window.")
    sub = parser.add_subparsers(dest="command", required=True)
    # Only the subcommand being run gets its options: they come from its own modules, and importing every
    # command's (the runner, the disk-image tool, the Host API, SSH) would be most of the start-up time of each.
    chosen = argv[0]
    if chosen == "run":
        # No cyclic garbage collection while the runner's modules import and the machine is built: some fifty
        # collections, each walking every object made so far, for next to no garbage. prepare() turns it back on
        # (core/runner.py `_collect_from_now_on`).
        gc.disable()
    for name, help_text, add_arguments, handler in SUBCOMMANDS:
        p = sub.add_parser(name, help=help_text)
        if name == chosen:
            add_arguments(p)
        p.set_defaults(handler=handler)
    if chosen not in {name for name, *_ in SUBCOMMANDS}:
        # `run` and `img` parse without the host commands' table (and what it imports): their start-up is timed.
        from core.cli.table import HOST_COMMANDS
        for command in HOST_COMMANDS:
            command.add_to(sub, with_options=command.name == chosen)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return 2 if exc.code else 0
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
