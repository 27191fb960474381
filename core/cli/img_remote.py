"""`vireo img create|info|check|resize … --connect ssh://USER@HOST`: the disk-image command run on that host by its
Vireo service (Host.run_img), on the host's files; what it prints and its exit status come back as if it had run
here. Paths name files on that host, so they must be absolute there (the service's working folder is no place a
user can name)."""
from __future__ import annotations

import argparse
import sys

from core.cli.connect import connect_remote
from core.host.api import HostError

EXIT_FAILED, EXIT_BAD_INPUT = 1, 2
# The options that pick and reach the host: this side's, not the command's.
CONNECT_OPTIONS = {"connect", "identity", "accept_new_host_key", "remote_python", "copy_unicorn", "handler"}


def img_remote(args: argparse.Namespace) -> int:
    path = str(getattr(args, "path", "") or "")
    if not path.startswith("/"):
        print(f"vireo img: {path}: give an absolute path on the host (files there are named from its root)",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    fields = {key: value for key, value in vars(args).items()
              if key not in CONNECT_OPTIONS and isinstance(value, (str, int, float, bool, list, type(None)))}
    try:
        host = connect_remote(args)
    except HostError as exc:
        print(f"vireo: {exc}", file=sys.stderr)
        return EXIT_FAILED
    try:
        code, out, err = host.run_img(fields)
    except HostError as exc:
        print(f"vireo: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        host.close()
    sys.stdout.write(out)
    sys.stderr.write(err)
    return code
