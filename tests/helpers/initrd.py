"""The test initramfs with this tree's /init: tests/fixtures/init.sh as it is now, even while the built fixture
(tests/fixtures/out/initramfs-*.cpio.gz, shared and rebuilt by tests/fixtures/build.py when init.sh changes) still
holds an older one. A second newc archive holding only /init is appended: the kernel unpacks concatenated archives
in order and a later file replaces an earlier one (Documentation/driver-api/early-userspace/buffer-format.rst)."""
from __future__ import annotations

import gzip
import stat
from pathlib import Path

from tests.fixtures import newc
from tests.helpers.runner import REPO_ROOT

INIT_SCRIPT = REPO_ROOT / "tests" / "fixtures" / "init.sh"


def initrd_with_current_init(initramfs: Path, directory: Path) -> Path:
    """A copy of `initramfs` in `directory` whose /init is today's init.sh."""
    overlay = newc.write([newc.Entry("init", stat.S_IFREG | 0o755, INIT_SCRIPT.read_bytes())])
    out = directory / f"current-init-{initramfs.name}"
    out.write_bytes(initramfs.read_bytes() + gzip.compress(overlay, mtime=0))
    return out
