"""Moving a shut-off or saved VM from one host to another (issue 15; docs/clone-and-move.md): the client's half,
for `vireo move` and the GUI's "Move to Host…". The hosts' halves are the steps of Host.migrate()
(core/host/move.py): the source plans, the destination prepares, this module carries every file — disks and the
managed save — then the destination verifies and defines the VM, and only then the source removes its copy.

The bytes go over the connections the client already holds: an SSH host's files through SFTP on its SSH
connection (RemoteHost's transport, as its file browser uses), this computer's directly (the client, the service
and the VM processes share this machine and this user). Holes of a sparse disk read on this computer stay holes on
the destination (the SFTP file is written at offsets, then truncated to size); each file's SHA-256 is taken as it
is read, and the destination checks its copy against it after fsync.

Whatever fails before the destination has everything — no space, a name taken there, the peer disconnected
mid-file — removes what was written there (when it can still be reached: the .part names are refused as VM files
and cleaned by the next move) and leaves the source as it was, with one line saying why.
"""
from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from typing import Any

from core.host.api import Host, HostError, Progress, VmInfo
from core.host.clone import _data_ranges

CHUNK = 1 << 20
ZERO = bytes(CHUNK)
# Bytes per SFTP read/write request: OpenSSH's sftp-server takes up to 261120 (its limits@openssh.com
# max-read-length), 8 times paramiko's default, which halves the time a download takes here (bench/move.py). A
# server that answers reads shorter is read again plainly (SftpReader below).
SFTP_REQUEST = 261120
LIST_WAIT = 10.0          # seconds for the destination's event to bring the moved VM into its client's mirror


class _Files:
    """One host's files as this client reaches them: SFTP for an SSH host, the file system for this computer."""

    def __init__(self, host: Host) -> None:
        open_sftp: Callable[[], Any] | None = getattr(host, "_open_sftp", None)
        self.name = host.name
        self.sftp = open_sftp() if open_sftp is not None else None

    def close(self) -> None:
        if self.sftp is not None:
            try:
                self.sftp.close()
            except Exception:
                pass

    def ranges(self, path: str, size: int) -> list[tuple[int, int]]:
        """Where the file holds data; over SFTP, which cannot say, the whole file."""
        if self.sftp is not None:
            return [(0, size)] if size else []
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return _data_ranges(fd, size)
        finally:
            os.close(fd)

    def reader(self, path: str, size: int):
        if self.sftp is None:
            return open(path, "rb")
        return _SftpReader(self.sftp, path, size)

    def writer(self, path: str):
        if self.sftp is None:
            return open(path, "xb")
        f = self.sftp.open(path, "wbx")     # w: writable (paramiko), x: O_EXCL, never an existing file
        f.MAX_REQUEST_SIZE = SFTP_REQUEST
        f.set_pipelined(True)      # writes are acknowledged in the background; errors show at close
        return f


class _SftpReader:
    """A remote file read with pipelined large requests (paramiko's prefetch); should the server answer a request
    with fewer bytes than asked (an older sftp-server caps reads), prefetch cannot fill the gap and reports the end
    early, so the rest is read again with paramiko's plain requests."""

    def __init__(self, sftp: Any, path: str, size: int) -> None:
        self.sftp, self.path, self.size = sftp, path, size
        self.pos = 0
        self.plain = False
        self.f = sftp.open(path, "rb")
        self.f.MAX_REQUEST_SIZE = SFTP_REQUEST
        self.f.prefetch(size)

    def seek(self, offset: int) -> None:
        self.pos = offset
        self.f.seek(offset)

    def read(self, n: int) -> bytes:
        piece = self.f.read(n)
        if not piece and self.pos < self.size and not self.plain:
            self.f.close()
            self.plain = True
            self.f = self.sftp.open(self.path, "rb")
            self.f.seek(self.pos)
            piece = self.f.read(n)
        self.pos += len(piece)
        return piece

    def __enter__(self) -> _SftpReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.f.close()


def _copy(src: _Files, path: str, size: int, dst: _Files, part: str, step: Callable[[int], None]) -> str:
    """Carry one file; its SHA-256 as read (holes hash as zeros)."""
    digest = hashlib.sha256()
    pos = 0

    def hole(upto: int) -> None:
        nonlocal pos
        while pos < upto:
            n = min(CHUNK, upto - pos)
            digest.update(ZERO[:n])
            pos += n
            step(n)

    with src.reader(path, size) as r, dst.writer(part) as w:
        for offset, length in src.ranges(path, size):
            hole(offset)
            r.seek(offset)
            end = offset + length
            while pos < end:
                piece = r.read(min(CHUNK, end - pos))
                if not piece:
                    raise HostError(f"{path} on {src.name} shrank while it was being moved")
                digest.update(piece)
                if piece != ZERO[:len(piece)]:     # all-zero pieces stay holes on the destination
                    w.seek(pos)
                    w.write(piece)
                pos += len(piece)
                step(len(piece))
        hole(size)
        w.truncate(size)
    return digest.hexdigest()


def _digest(src: _Files, path: str, size: int, step: Callable[[int], None]) -> str:
    digest = hashlib.sha256()
    with src.reader(path, size) as r:
        while piece := r.read(CHUNK):
            digest.update(piece)
            step(len(piece))
    return digest.hexdigest()


def move_vm(src: Host, dst: Host, vm_uuid: str, progress: Progress | None = None) -> VmInfo:
    """Move the shut-off or saved VM `vm_uuid` from `src` to `dst`; its info on `dst`. HostError (one line) when
    it cannot, with the source left as it was."""
    if src is dst:
        raise HostError(f"the VM is on {dst.name} already: choose another host")
    name = src.get(vm_uuid).name
    plan = src.migrate("out_plan", {"uuid": vm_uuid})
    files = plan["files"]
    targets = dst.migrate("in_prepare", {"config": plan["config"], "files": files})["targets"]
    total = sum(int(f["size"]) for f in files)
    done = 0

    def step(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, total)

    written: list[str] = []
    sent: list[dict[str, Any]] = []
    src_files = dst_files = None
    try:
        src_files, dst_files = _Files(src), _Files(dst)
        for f, target in zip(files, targets, strict=True):
            if target["part"] is None:      # the destination has it (a shared backing file): hash, not copy
                sha = _digest(src_files, str(f["path"]), int(f["size"]), step)
            else:
                written.append(target["part"])
                sha = _copy(src_files, str(f["path"]), int(f["size"]), dst_files, str(target["part"]), step)
            sent.append({"role": f["role"], "part": target["part"], "final": target["final"], "size": f["size"],
                         "sha256": sha})
        dst.migrate("in_finish", {"config": plan["config"], "files": sent})
    except BaseException as exc:
        try:
            dst.migrate("in_abort", {"parts": written})
        except Exception:       # the destination is unreachable: its .part files wait for a later move
            pass
        if isinstance(exc, HostError):
            raise HostError(f"moving {name} to {dst.name} failed, {src.name} keeps it: {exc}") from None
        if isinstance(exc, (OSError, EOFError)) or type(exc).__module__.startswith("paramiko"):
            why = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise HostError(f"moving {name} to {dst.name} failed, {src.name} keeps it: {why}") from None
        raise
    finally:
        for side in (src_files, dst_files):
            if side is not None:
                side.close()
    try:
        src.migrate("out_finish", {"uuid": vm_uuid, "files": files})
    except HostError as exc:
        raise HostError(f"{name} is on {dst.name} now, but {src.name} kept its copy too: {exc}") from None
    deadline = time.monotonic() + LIST_WAIT
    while True:
        try:
            return dst.get(vm_uuid)
        except HostError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
