"""Guest writes to firmware memory on each CPU backend (core/boot/firmware.py through Accelerator.map_ram with
readonly): a write to the BIOS image at the top of 4 GiB or to a PAM range reading the ROM changes nothing on the
host, a write-protected shadow range keeps its RAM contents, and a writable one takes the write -- whatever the
backend maps directly and whatever it leaves to the MMIO path."""
from __future__ import annotations

import threading

import pytest

from core.board import wire_interrupt_controllers
from core.boot.firmware import FOUR_GIB, FirmwareMemory
from core.bus import MmioBus, PortIoBus
from core.hypervisor.base import CpuState, ExitReason, Segment
from core.hypervisor.select import create_accelerator
from core.memory import FIRMWARE_HOLE, GuestMemory
from core.timers import TimerQueue
from tests.helpers.accel import ACCELS, require_accel
from tests.helpers.software_guest import DEBUG_PORT, DONE_PORT, DebugPort, DonePort, assemble

IMAGE = bytes((i * 7) & 0xFF for i in range(128 * 1024))
SHADOW_ADDR = 0xF0010
ROM_ADDR = FOUR_GIB - 16
CODE_ADDR = 0x10000

# 32-bit flat code: write `value` at both addresses, read each back to the debug port, then finish.
SOURCE = f"""
    .code32
    .globl _start
_start:
    movl ${SHADOW_ADDR:#x}, %ebx
    movb 0x1000, %cl
    movb %cl, (%ebx)
    movb (%ebx), %al
    outb %al, ${DEBUG_PORT:#x}
    movl ${ROM_ADDR:#x}, %ebx
    movb %cl, (%ebx)
    movb (%ebx), %al
    outb %al, ${DEBUG_PORT:#x}
    movw ${DONE_PORT:#x}, %dx
    outb %al, %dx
1:  hlt
    jmp 1b
"""


class FirmwareRig:
    def __init__(self, accel: str) -> None:
        self.memory = GuestMemory(16 << 20)
        self.memory.cpu_hole = FIRMWARE_HOLE
        self.pio, self.mmio, self.timers = PortIoBus(), MmioBus(), TimerQueue(name="test-timers")
        self.debug, self.done = DebugPort(), DonePort()
        self.pio.register(DEBUG_PORT, 1, self.debug)
        self.pio.register(DONE_PORT, 1, self.done)
        self.accel = create_accelerator(accel, self.memory, self.pio, self.mmio, 1, self.timers)
        wire_interrupt_controllers(self.accel, self.pio, self.mmio, self.timers)
        self.vcpu = self.accel.create_vcpu(0)
        self.done.vcpu = self.vcpu
        self.firmware = FirmwareMemory(IMAGE, self.memory, self.mmio, self.accel)
        self.memory.write(CODE_ADDR, assemble(SOURCE, 32, CODE_ADDR))

    def write_and_read_back(self, value: int) -> bytes:
        """Run the code with `value` to write; return what it read back at SHADOW_ADDR and ROM_ADDR."""
        self.memory.write_u8(0x1000, value)
        self.debug.out.clear()
        self.done.done.clear()
        state = CpuState()
        flat = dict(base=0, limit=0xFFFF_FFFF, db=True, g=True)
        state.cs = Segment(selector=0x08, type=0xB, **flat)
        for name in ("ds", "es", "ss", "fs", "gs"):
            setattr(state, name, Segment(selector=0x10, type=3, **flat))
        state.cr0, state.rip = 0x11, CODE_ADDR
        self.vcpu.set_state(state)
        expired = threading.Event()
        watchdog = threading.Timer(30, lambda: (expired.set(), self.vcpu.kick()))   # KVM keeps a HLT in the kernel
        watchdog.start()
        try:
            while True:
                ex = self.vcpu.run()
                if ex.reason != ExitReason.KICKED or expired.is_set() or self.done.done.is_set():
                    break
        finally:
            watchdog.cancel()
        assert self.done.done.is_set(), ex
        return bytes(self.debug.out)

    def close(self) -> None:
        self.accel.close()
        self.timers.stop()
        self.memory.close()


@pytest.fixture(params=ACCELS)
def rig(request):
    require_accel(request.param)
    r = FirmwareRig(request.param)
    yield r
    r.close()


def test_guest_writes_to_firmware_memory(rig):
    assert rig.firmware.high_mapped and rig.firmware.mappings      # the backend took the read-only mappings
    ram_before = rig.memory.read(SHADOW_ADDR, 1)
    rom_byte = IMAGE[len(IMAGE) - 0x10000 + (SHADOW_ADDR - 0xF0000)]
    # Power-on: 0xF0000 reads the ROM; writes there and to the image go nowhere.
    assert rig.write_and_read_back(rom_byte ^ 0xFF) == bytes([rom_byte, IMAGE[-16]])
    assert rig.memory.read(SHADOW_ADDR, 1) == ram_before
    assert rig.firmware.rom.map[:] == IMAGE and rig.firmware.isa_rom.map[-0x20000:] == IMAGE[-0x20000:]
    # Shadow RAM writable (make_bios_writable): the write lands in guest RAM.
    rig.firmware.set_pam(bytes([0x30] + [0x33] * 6))
    assert rig.write_and_read_back(0x5A) == bytes([0x5A, IMAGE[-16]])
    assert rig.memory.read_u8(SHADOW_ADDR) == 0x5A
    # Locked (make_bios_readonly): RAM keeps 0x5A.
    rig.firmware.set_pam(bytes([0x10] + [0x11] * 6))
    assert rig.write_and_read_back(0xA5) == bytes([0x5A, IMAGE[-16]])
    assert rig.memory.read_u8(SHADOW_ADDR) == 0x5A
    assert rig.firmware.rom.map[:] == IMAGE
