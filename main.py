#!/usr/bin/env python3
"""Vireo's entry point: no arguments (or only GUI options such as --connect) opens the manager;
`run …` is the headless runner (`run --connect ssh://…` on a remote host), `list --connect ssh://…` lists a remote
host's VMs and `img …` is the disk-image tool."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("--") and argv[0] not in ("-h", "--help"):
        from app.ui.main_window import launch  # Qt is imported only for the GUI
        return launch(argv)
    parser = argparse.ArgumentParser(prog="vireo", description="Vireo virtual machine manager. "
                                     "Without arguments it opens the manager window.")
    sub = parser.add_subparsers(dest="command", required=True)
    from core.remote.cli import add_connect_arguments
    from core.runner import add_run_arguments, prepare, run
    run_parser = sub.add_parser("run", help="boot one VM headless, serial console on this terminal")
    add_run_arguments(run_parser)
    add_connect_arguments(run_parser)
    add_connect_arguments(sub.add_parser("list", help="list a remote host's VMs and their states"), required=True)
    from core.storage.cli import add_img_arguments, img_main
    add_img_arguments(sub.add_parser("img", help="create, inspect, check and resize disk images"))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return 2 if exc.code else 0
    if args.command == "list":
        from core.remote.cli import list_main
        return list_main(args)
    if args.command == "run":
        if args.connect:
            from core.remote.cli import run_remote
            return run_remote(args)
        if args.display == "window":
            session = prepare(args)
            if isinstance(session, int):
                return session
            from app.ui.run_window import run_with_window  # Qt only when a window is asked for
            return run_with_window(session, f"Vireo — {args.kernel}")
        return run(args)
    if args.command == "img":
        return img_main(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
