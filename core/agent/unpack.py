"""Unpacks an uploaded bundle on the remote host: `python3 - ARCHIVE DEST` with this file's source on stdin.

Self-contained (standard library only): it runs where no Vireo code exists yet. Every member is checked before
anything is written — a regular file or a directory, a relative path without "..", no links or devices — so even
a damaged or substituted archive cannot write outside DEST. The archive is unpacked into a private scratch
directory beside DEST, then each top-level entry is renamed into DEST (rename(2) is atomic), so a concurrent
connection or an interrupted upload never leaves a half-written package where the agent would import it. The
archive is removed afterwards.
"""
import os
import shutil
import sys
import tarfile


def safe_members(tar):
    for member in tar.getmembers():
        name = member.name
        if name.startswith("/") or ".." in name.split("/") or not (member.isfile() or member.isdir()):
            raise SystemExit(f"refusing archive member {name!r}")
        yield member


def unpack(archive, dest):
    os.makedirs(dest, mode=0o700, exist_ok=True)
    scratch = f"{dest}.part-{os.getpid()}"
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = list(safe_members(tar))
            for member in members:
                member.mode = (0o700 if member.isdir() else 0o600 | (member.mode & 0o100))
                member.uid = member.gid = os.getuid()
            tar.extractall(scratch, members)
        for entry in sorted(os.listdir(scratch)):
            target = os.path.join(dest, entry)
            if os.path.lexists(target):
                continue        # another connection installed the same thing first
            os.rename(os.path.join(scratch, entry), target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        try:
            os.unlink(archive)
        except OSError:
            pass


if __name__ == "__main__":
    unpack(sys.argv[1], sys.argv[2])
