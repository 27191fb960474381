"""What `main.py run` loads before the guest's first instruction: start-up time is part of every boot (issue 12's
power-on to boot menu, issue 14's boot to marker), so the run path must not pull in what only other commands or
a screen need."""
import json
import subprocess
import sys
from pathlib import Path

from tests.helpers.accel import require_accel

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("numpy", "PIL", "paramiko", "core.cli.connect", "core.cli.commands", "core.cli.console",
         "core.remote.service", "core.host.api", "core.storage.cli",
         "core.boot.linux", "core.boot.multiboot", "core.boot.elf", "core.boot.vmlinux_cache",   # kernel boot only
         "core.hypervisor.hostcaps", "core.vnc.auth", "core.devices.virtio.net", "hashlib")       # KVM, --vnc, NICs


def _modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter has loaded after running `code` in the repository."""
    probe = subprocess.run([sys.executable, "-c", code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"],
                           cwd=REPO, capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
    return set(json.loads(probe.stdout.strip().splitlines()[-1]))


def test_a_cdrom_machine_is_built_without_numpy_ssh_or_the_host_commands(tmp_path):
    require_accel("software")
    iso = tmp_path / "blank.iso"
    iso.write_bytes(bytes(2048 * 32))
    # The command line parsed by main.py's parser, the machine built by the runner's prepare(), as `run` does.
    loaded = _modules_after(f"""
import main
from core import runner
seen = {{}}
runner.run = lambda args: seen.setdefault("session", runner.prepare(args))
assert main.main(["run", "--cdrom", {str(iso)!r}, "--accel", "software", "--boot-menu-wait", "0",
                  "--memory", "64", "--serial", "none"]) is not None
session = seen["session"]
assert not isinstance(session, int), session
import gc
# main.py ran the start-up without cyclic collections; prepare() turned them back on, start-up objects frozen.
assert gc.isenabled() and gc.get_freeze_count() > 10000, (gc.isenabled(), gc.get_freeze_count())
session.machine.power_off()
""")
    assert {"core.board", "core.hypervisor.software", "core.devices.vga"} <= loaded    # the machine was built
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_the_host_commands_still_parse_with_their_options():
    loaded = _modules_after("""
import contextlib, io, main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    assert main.main(["list", "--help"]) == 0
assert "--all" in out.getvalue() and "--connect" in out.getvalue(), out.getvalue()
""")
    assert "core.cli.commands" in loaded
