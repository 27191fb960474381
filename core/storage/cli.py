"""`vireo img create|info|check|resize`: the qemu-img words, options and size suffixes, on core/storage.

    img create [-f raw|qcow2] [-b BACKING [-F FMT]] [-o cluster_size=64k,compat=1.1] PATH [SIZE]
    img info [-f FMT] [-U] [--output human|json] PATH
    img check [-f FMT] [-r leaks|all] [-U] [--output human|json] PATH
    img resize [-f FMT] [--shrink] PATH [+|-]SIZE
    img snapshot [-l | -c NAME | -a NAME | -d NAME] [-U] PATH    (qcow2 internal snapshots, as qemu-img)

Exit status: 0 success (check: no corruption; leaks are reported but allowed), 1 the check found errors or the
operation failed, 2 bad input (arguments, a missing or invalid image). Every error is one line naming the file.
"""
from __future__ import annotations

import io
import sys
from contextvars import ContextVar

from core.storage.errors import ImageError, ImageIOError, ImageLockedError
from core.storage.probe import FORMATS, detect_format, open_image
from core.storage.qcow2 import Qcow2Image
from core.storage.qcow2_snaptable import format_listing
from core.storage.sizes import SizeError, parse_size

# Each command imports what only it needs when it runs (check: numpy; create/info/json), so that `img snapshot`,
# timed against `qemu-img snapshot` by bench/snapshot.py, starts as fast as Python can; typing too is left out.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable
    from typing import TextIO

    from core.storage.check import CheckResult

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


class _BadInput(Exception):
    pass


def add_img_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the create/info/check/resize subcommands of `img` to `parser`."""
    sub = parser.add_subparsers(dest="img_command", required=True, metavar="{create,info,check,resize,snapshot}")
    p = sub.add_parser("create", help="create a new raw or qcow2 image")
    p.add_argument("-f", dest="fmt", default="raw", choices=FORMATS, help="image format (default raw)")
    p.add_argument("-b", dest="backing", help="backing file (qcow2 only); relative to the new image's directory")
    p.add_argument("-F", dest="backing_fmt", choices=FORMATS, help="backing file format (default: detect)")
    p.add_argument("-o", dest="options", action="append", default=[],
                   help="options: cluster_size=SIZE, compat=1.1|0.10, backing_file=, backing_fmt=")
    p.add_argument("path", metavar="PATH")
    p.add_argument("size", metavar="SIZE", nargs="?", help="e.g. 10G; may be omitted with -b")

    p = sub.add_parser("info", help="show an image's format, sizes and backing file")
    p.add_argument("-f", dest="fmt", choices=FORMATS, help="image format (default: detect)")
    p.add_argument("-U", "--force-share", action="store_true", help="do not lock (the image may be in use)")
    p.add_argument("--output", choices=("human", "json"), default="human")
    p.add_argument("path", metavar="PATH")

    p = sub.add_parser("check", help="check qcow2 metadata (refcounts, leaks, corruptions)")
    p.add_argument("-f", dest="fmt", choices=FORMATS, help="image format (default: detect)")
    p.add_argument("-r", dest="repair", choices=("leaks", "all"), help="repair leaks, or leaks and refcounts")
    p.add_argument("-U", "--force-share", action="store_true", help="do not lock (the image may be in use)")
    p.add_argument("--output", choices=("human", "json"), default="human")
    p.add_argument("path", metavar="PATH")

    p = sub.add_parser("resize", help="grow an image (shrink a raw image with --shrink)")
    p.add_argument("-f", dest="fmt", choices=FORMATS, help="image format (default: detect)")
    p.add_argument("--shrink", action="store_true", help="allow shrinking (raw only; data past the end is lost)")
    p.add_argument("path", metavar="PATH")
    p.add_argument("size", metavar="SIZE", help="new size, or +SIZE / -SIZE relative to the current one")
    p = sub.add_parser("snapshot", help="list, create, apply or delete qcow2 internal snapshots")
    action = p.add_mutually_exclusive_group()
    action.add_argument("-l", dest="list", action="store_true", help="list the snapshots (the default)")
    action.add_argument("-c", dest="create", metavar="NAME", help="create a snapshot of the disk as it is")
    action.add_argument("-a", dest="apply", metavar="NAME", help="revert the disk to a snapshot (ID or name)")
    action.add_argument("-d", dest="delete", metavar="NAME", help="delete a snapshot (ID or name)")
    p.add_argument("-U", "--force-share", action="store_true", help="do not lock (list only; the image may be "
                   "in use)")
    p.add_argument("path", metavar="PATH")
    import re
    resize = sub.choices["resize"]
    # qemu-img accepts `resize PATH -1G`; argparse would take "-1G" for an option unless it looks like a number.
    resize._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)\s*[kKmMgGtTpPeE]?(i?[bB])?$")


# Where the results and the error line go: this process's stdout and stderr, or, for a command run by the Vireo
# service for a client on another machine (`img … --connect`), buffers sent back to it. A context variable, so
# the service's other threads keep printing where they did.
_STREAMS: ContextVar[tuple[TextIO, TextIO] | None] = ContextVar("vireo_img_streams", default=None)
COMMANDS = ("create", "info", "check", "resize")


def _out() -> TextIO:
    streams = _STREAMS.get()
    return streams[0] if streams else sys.stdout


def _err() -> TextIO:
    streams = _STREAMS.get()
    return streams[1] if streams else sys.stderr


def run_img(fields: dict[str, object]) -> tuple[int, str, str]:
    """Run an `img` command whose parsed options are `fields` (a client's argparse namespace, as sent by
    `img … --connect`); its exit status and what it printed on stdout and stderr."""
    if fields.get("img_command") not in COMMANDS:
        return EXIT_BAD_INPUT, "", f"vireo img: unknown command {fields.get('img_command')!r}\n"
    out, err = io.StringIO(), io.StringIO()
    token = _STREAMS.set((out, err))
    try:
        import argparse
        code = img_main(argparse.Namespace(**fields))
    finally:
        _STREAMS.reset(token)
    return code, out.getvalue(), err.getvalue()


def img_main(args: argparse.Namespace) -> int:
    """Run the `img` subcommand in `args`; print results to stdout, one-line errors to stderr."""
    handlers = {"create": _create, "info": _info, "check": _check, "resize": _resize, "snapshot": _snapshot}
    try:
        return handlers[args.img_command](args)
    except _BadInput as exc:
        return _error(str(exc), EXIT_BAD_INPUT)
    except (ImageIOError, ImageLockedError) as exc:
        return _error(str(exc), EXIT_FAILED)
    except ImageError as exc:
        return _error(str(exc), EXIT_BAD_INPUT)
    except OSError as exc:
        return _error(f"{getattr(args, 'path', '')}: {exc.strerror or exc}", EXIT_FAILED)


def _error(message: str, code: int) -> int:
    print(f"vireo img: {message}", file=_err())
    return code


def _size(path: str, text: str, relative: bool = False) -> tuple[str, int]:
    try:
        return parse_size(text, allow_relative=relative)
    except SizeError as exc:
        raise _BadInput(f"{path}: {exc}") from exc


def _create(args: argparse.Namespace) -> int:
    from core.storage.create import DEFAULT_CLUSTER_SIZE, create_image
    from core.storage.info import image_info
    cluster_size, compat = DEFAULT_CLUSTER_SIZE, "1.1"
    backing, backing_fmt = args.backing, args.backing_fmt
    for group in args.options:
        for item in filter(None, group.split(",")):
            key, _, value = item.partition("=")
            if key == "cluster_size":
                cluster_size = _size(args.path, value)[1]
            elif key == "compat":
                compat = value
            elif key == "backing_file":
                backing = value
            elif key == "backing_fmt":
                backing_fmt = value
            else:
                raise _BadInput(f"{args.path}: unknown -o option {key!r}; known: cluster_size, compat, "
                                "backing_file, backing_fmt")
    size = _size(args.path, args.size)[1] if args.size is not None else None
    create_image(args.path, args.fmt, size, backing_file=backing, backing_format=backing_fmt,
                 cluster_size=cluster_size, compat=compat)
    info = image_info(args.path, args.fmt)
    extra = f" backing_file={backing} backing_fmt={info.backing_format}" if backing else ""
    cluster = f" cluster_size={cluster_size}" if args.fmt == "qcow2" else ""
    print(f"Formatting '{args.path}', fmt={args.fmt}{cluster} size={info.virtual_size}{extra}", file=_out())
    return EXIT_OK


def _info(args: argparse.Namespace) -> int:
    import json

    from core.storage.info import image_info
    info = image_info(args.path, args.fmt, force_share=args.force_share)
    print(json.dumps(info.as_json(), indent=4) if args.output == "json" else info.human(), file=_out())
    return EXIT_OK


def _check(args: argparse.Namespace) -> int:
    import json

    from core.storage.check import check_image
    result = check_image(args.path, repair=args.repair, fmt=args.fmt, force_share=args.force_share)
    if not result.supported:
        print(f"{args.path}: {result.format_name} images have no metadata to check", file=_out())
        return EXIT_OK
    if args.repair and (result.leaks_fixed or result.corruptions_fixed):
        repaired = result
        result = check_image(args.path, fmt=args.fmt)
        result.leaks_fixed, result.corruptions_fixed = repaired.leaks_fixed, repaired.corruptions_fixed
        result.messages = repaired.messages + result.messages
    if args.output == "json":
        print(json.dumps(_check_json(result), indent=4), file=_out())
    else:
        print(_check_human(result), file=_out())
    return EXIT_OK if result.clean else EXIT_FAILED


def _check_human(r: CheckResult) -> str:
    lines = list(r.messages)
    if lines:
        lines.append("")
    if r.leaks_fixed or r.corruptions_fixed:
        lines += ["The following inconsistencies were found and repaired:", "",
                  f"    {r.leaks_fixed} leaked clusters", f"    {r.corruptions_fixed} corruptions", ""]
    if r.clean and not r.leaks:
        lines.append("No errors were found on the image.")
    if r.corruptions:
        lines += [f"{r.corruptions} errors were found on the image.",
                  "Data may be corrupted, or further writes to the image may corrupt it."]
    if r.check_errors:
        lines.append(f"{r.check_errors} internal errors occurred during the check.")
    if r.leaks:
        lines += [f"{r.leaks} leaked clusters were found on the image.",
                  "This means waste of disk space, but no harm to data."]
    if r.total_clusters and r.allocated_clusters:
        pct = 100.0 * r.allocated_clusters / r.total_clusters
        frag = 100.0 * r.fragmented_clusters / r.allocated_clusters
        comp = 100.0 * r.compressed_clusters / r.allocated_clusters
        lines.append(f"{r.allocated_clusters}/{r.total_clusters} = {pct:.2f}% allocated, {frag:.2f}% fragmented, "
                     f"{comp:.2f}% compressed clusters")
    lines.append(f"Image end offset: {r.image_end_offset}")
    return "\n".join(lines)


def _check_json(r: CheckResult) -> dict[str, object]:
    return {"filename": r.path, "format": r.format_name, "check-errors": r.check_errors,
            "corruptions": r.corruptions, "leaks": r.leaks, "corruptions-fixed": r.corruptions_fixed,
            "leaks-fixed": r.leaks_fixed, "allocated-clusters": r.allocated_clusters,
            "total-clusters": r.total_clusters, "fragmented-clusters": r.fragmented_clusters,
            "compressed-clusters": r.compressed_clusters, "image-end-offset": r.image_end_offset,
            "messages": r.messages}


def _resize(args: argparse.Namespace) -> int:
    from core.storage.create import resize_image
    sign, amount = _size(args.path, args.size, relative=True)
    with open_image(args.path, fmt=args.fmt) as dev:
        new_size = dev.size + amount if sign == "+" else dev.size - amount if sign == "-" else amount
        if new_size < 0:
            raise _BadInput(f"{args.path}: the new size would be negative ({dev.size} - {amount})")
        if new_size < dev.size and not args.shrink:
            raise _BadInput(f"{args.path}: the new size {new_size} is smaller than the current {dev.size}; add "
                            "--shrink to shrink (data past the new end is lost)")
        resize_image(dev, new_size, shrink=args.shrink)
        dev.flush()
    print("Image resized.", file=_out())
    return EXIT_OK


def _snapshot(args: argparse.Namespace) -> int:
    if detect_format(args.path) != "qcow2":
        raise _BadInput(f"{args.path}: internal snapshots need a qcow2 image (this one is raw)")
    write = args.create is not None or args.apply is not None or args.delete is not None
    if write and args.force_share:
        raise _BadInput(f"{args.path}: -U is for listing only")
    # Applying or deleting does not read the backing file; creating does not either.
    with Qcow2Image(args.path, read_only=not write, lock=not args.force_share) as img:
        if args.create is not None:
            _snapshot_step(args.path, "create", args.create, lambda: img.snapshot_create(args.create))
        elif args.apply is not None:
            _snapshot_step(args.path, "apply", args.apply, lambda: img.snapshot_apply(args.apply))
        elif args.delete is not None:
            _snapshot_step(args.path, "delete", args.delete, lambda: img.snapshot_delete(args.delete))
        elif img.snapshots:
            print(format_listing(img.snapshots))
        if write:
            img.flush()
    return EXIT_OK


def _snapshot_step(path: str, verb: str, name: str, step: Callable[[], object]) -> None:
    try:
        step()
    except ImageError as exc:
        reason = str(exc).removeprefix(f"{path}: ")
        raise type(exc)(f"{path}: Could not {verb} snapshot '{name}': {reason}") from exc


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (`python -m core.storage.cli create ...`), the same as `main.py img ...`."""
    import argparse
    parser = argparse.ArgumentParser(prog="vireo img", description="Create, inspect, check and resize disk images")
    add_img_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_BAD_INPUT if exc.code else EXIT_OK
    return img_main(args)


if __name__ == "__main__":
    sys.exit(main())
