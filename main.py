#!/usr/bin/env python3
"""Vireo's entry point: no arguments opens the manager; `run …` is the headless runner."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("--connect") and argv[0] != "run":
        from app.main_window import launch  # Qt is imported only for the GUI
        return launch(argv)
    parser = argparse.ArgumentParser(prog="vireo", description="Vireo virtual machine manager")
    sub = parser.add_subparsers(dest="command", required=True)
    from core.runner import add_run_arguments, run
    add_run_arguments(sub.add_parser("run", help="boot one VM headless, serial console on this terminal"))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return 2 if exc.code else 0
    if args.command == "run":
        return run(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
