"""A VM's life from the shell (core/cli/commands.py, core/cli/console.py), on the local service and over SSH: a
busybox guest on Debian's kernel started with its serial console on a pty, typed into and detached from with
Ctrl-], its VGA screen saved as PNG, suspended and resumed, rebooted, powered off by the ACPI button and forced off.

The tests of one host share one VM and run in this file's order (each leaves it running for the next, until
shutdown); `running` starts it again when an earlier test failed to leave it so.
"""
from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.cli.conftest import PROMPT, Vireo, one_error_line

DETACH = b"\x1d"      # Ctrl-]


@pytest.fixture(scope="module")
def vm(vireo: Vireo, tmp_path_factory: pytest.TempPathFactory, debian_kernel: Path,
       busybox_initramfs: Path) -> Iterator[str]:
    """The name of this host's test VM, defined (shut off)."""
    name = f"life-{vireo.kind}"
    vireo.ok("define", str(vireo.write_definition(tmp_path_factory.mktemp("life"), name, debian_kernel,
                                                  busybox_initramfs)))
    yield name
    if vireo.states().get(name) in ("running", "paused"):
        vireo.cli("destroy", name)
    vireo.cli("undefine", name)


def shell(vireo: Vireo, name: str, command: bytes, answer: bytes) -> str:
    """Attach with `console`, type `command` at the guest's shell, wait for `answer`, detach; the terminal's text."""
    with vireo.terminal("console", name) as term:
        term.expect(b"Escape character is ^] (Ctrl + ])")
        term.send(b"\r")
        term.expect(PROMPT)
        term.send(command + b"\r")
        term.expect(answer)
        term.send(DETACH)
        assert term.wait() == 0, term.text()
        return term.text()


@pytest.fixture
def running(vireo: Vireo, vm: str) -> str:
    state = vireo.states().get(vm)
    if state != "running":
        if state == "paused":
            vireo.ok("resume", vm)
        else:
            vireo.ok("start", vm)
        shell(vireo, vm, b"true", b"")
    return vm


def test_start_with_console_shows_the_boot_and_detaches(vireo: Vireo, vm: str) -> None:
    with vireo.terminal("start", vm, "--console") as term:
        term.expect(f"Domain '{vm}' started".encode())
        term.expect(b"Connected to domain")
        term.expect(b"VIREO-BOOT-OK", 60)
        term.expect(PROMPT, 60)
        term.send(b"echo typed-$((6*7))\r")
        term.expect(b"typed-42")
        term.send(DETACH)
        assert term.wait() == 0, term.text()
    assert vireo.states()[vm] == "running"           # detaching leaves the VM running
    assert vm in vireo.states(all_vms=False)
    # Starting it again is what virsh calls "Domain is already active": status 1, one line saying what to do.
    one_error_line(vireo.cli("start", vm), 1, vm, "already active", f"vireo console {vm}")


def test_console_attaches_to_a_running_vm(vireo: Vireo, running: str) -> None:
    text = shell(vireo, running, b"touch /tmp/before-reboot; echo attached-$((40+2))", b"attached-42")
    assert f"Connected to domain '{running}'" in text
    assert vireo.states()[running] == "running"


def test_screendump_saves_the_vga_text_screen(vireo: Vireo, running: str, tmp_path: Path) -> None:
    png = tmp_path / "screen.png"
    out = vireo.ok("screendump", running, str(png))
    assert out.startswith(f"Screenshot saved to {png}")
    image = Image.open(io.BytesIO(png.read_bytes()))
    assert image.format == "PNG" and image.size == (720, 400)       # VGA text mode: 80x25 cells of 9x16
    pixels = np.asarray(image.convert("L"))
    lit = (pixels > 64).mean()
    assert len(np.unique(pixels)) > 1 and lit > 0.005, lit          # the kernel's messages, not a blank screen
    if vireo.kind == "local":
        one_error_line(vireo.cli("screendump", running, str(tmp_path / "no" / "such" / "dir.png")), 2,
                       "does not exist")


def test_suspend_and_resume(vireo: Vireo, running: str) -> None:
    assert vireo.ok("suspend", running) == f"Domain '{running}' suspended\n"
    assert vireo.states()[running] == "paused"
    if vireo.kind == "local":
        one_error_line(vireo.cli("suspend", running), 1, "already paused", f"vireo resume {running}")
        one_error_line(vireo.cli("shutdown", running), 1, "paused", f"vireo resume {running}")
    assert vireo.ok("resume", running) == f"Domain '{running}' resumed\n"
    assert vireo.states()[running] == "running"
    if vireo.kind == "local":
        one_error_line(vireo.cli("resume", running), 1, "not paused")


def test_reboot_boots_the_guest_afresh_under_an_attached_console(vireo: Vireo, running: str) -> None:
    with vireo.terminal("console", running) as term:
        term.expect(b"Escape character is ^] (Ctrl + ])")
        assert vireo.ok("reboot", running) == f"Domain '{running}' is being rebooted\n"
        # The guest powers off by the ACPI button and starts again; the console stays attached through it ...
        term.expect(b"VIREO-POWER-BUTTON")
        term.expect(b"VIREO-BOOT-OK", 60)
        term.expect(PROMPT, 60)
        # ... to a fresh boot: its tmpfs no longer has the file made before.
        term.send(b"[ -e /tmp/before-reboot ] && echo kept || echo fresh-$((1+1))\r")
        term.expect(b"fresh-2")
        term.send(DETACH)
        assert term.wait() == 0, term.text()
        assert b"shut off" not in term.data
    assert vireo.states()[running] == "running"


def test_shutdown_powers_the_guest_off(vireo: Vireo, running: str) -> None:
    if vireo.kind == "local":
        one_error_line(vireo.cli("undefine", running), 1, "running", f"vireo shutdown {running}")
    with vireo.terminal("console", running) as term:
        term.expect(b"Escape character is ^] (Ctrl + ])")
        assert vireo.ok("shutdown", running) == f"Domain '{running}' is being shutdown\n"
        # The attached console sees the guest power off and ends by itself, status 0.
        term.expect(b"VIREO-POWER-BUTTON")
        assert term.wait() == 0, term.text()
        assert f"Domain '{running}' shut off" in term.text()
    vireo.wait_state(running, "shut off")
    assert running not in vireo.states(all_vms=False)
    one_error_line(vireo.cli("shutdown", running), 1, "shut off", f"vireo start {running}")
    if vireo.kind == "local":
        one_error_line(vireo.cli("console", running), 1, "shut off", f"vireo start {running} --console")
        one_error_line(vireo.cli("screendump", running, "/tmp/x.png"), 1, "shut off")


def test_destroy_forces_it_off(vireo: Vireo, vm: str) -> None:
    assert vireo.ok("start", vm) == f"Domain '{vm}' started\n"
    assert vireo.ok("destroy", vm) == f"Domain '{vm}' destroyed\n"
    assert vireo.states()[vm] == "shut off"
    if vireo.kind == "local":
        one_error_line(vireo.cli("destroy", vm), 1, "shut off")
