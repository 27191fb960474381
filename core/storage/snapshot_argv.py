"""`vireo img snapshot` in its plain forms, read without argparse: `-l PATH`, `-c|-a|-d NAME PATH`, with `-U`.

bench/snapshot.py times the command against `qemu-img snapshot` (about 10 ms). Importing argparse (with re,
gettext, locale and shutil) and building main.py's parser costs more than that, so main.py asks this module first.
It accepts only what argparse would read the same way (tests/storage/test_storage_snapshot_fast.py compares the
two); anything else — help, --connect, attached values such as `-cNAME`, a value starting with '-', two
actions — returns None, and argparse (core/storage/cli.py add_img_arguments) reads it, errors and all.
"""
from __future__ import annotations

_ACTIONS = {"-c": "create", "-a": "apply", "-d": "delete"}


class SnapshotArgs:
    """The namespace argparse would make for `img snapshot …` (its attributes, as cli.img_main reads them)."""

    def __init__(self, **fields: object) -> None:
        self.__dict__.update(fields)


def parse_snapshot_argv(argv: list[str]) -> SnapshotArgs | None:
    """The parsed arguments after `img snapshot`, or None for argparse to read them."""
    fields: dict[str, object] = {"list": False, "create": None, "apply": None, "delete": None,
                                 "force_share": False}
    path = None
    actions = 0
    i = 0
    while i < len(argv):
        token = argv[i]
        if token in ("-U", "--force-share"):
            fields["force_share"] = True
        elif token == "-l":
            fields["list"] = True
            actions += 1
        elif token in _ACTIONS:
            if i + 1 == len(argv) or argv[i + 1].startswith("-"):
                return None
            fields[_ACTIONS[token]] = argv[i + 1]
            actions += 1
            i += 1
        elif token.startswith("-") or path is not None:
            return None
        else:
            path = token
        i += 1
    if path is None or actions > 1:
        return None
    return SnapshotArgs(command="img", img_command="snapshot", **fields, path=path,
                        # add_connect_arguments' defaults: this computer, no SSH options
                        connect=None, identity="", accept_new_host_key=False, remote_python="", copy_unicorn=None)
