"""Two cascaded 8259A programmable interrupt controllers, as on every PC (Intel 8259A datasheet, 231468).

The master sits at 0x20/0x21 with the slave's INT output on its IR2; the slave sits at 0xA0/0xA1. Modelled: the
ICW1-ICW4 initialisation sequence, OCW1 (mask), OCW2 (non-specific / specific EOI, rotation, set priority), OCW3
(read IRR/ISR, poll, special mask mode), automatic EOI with optional rotation, special fully nested mode, the
interrupt acknowledge cycle with the spurious IRQ7/IRQ15 the hardware produces, and the PIIX edge/level control
registers (ELCR, 0x4D0/0x4D1; IRQ0, 1, 2, 8 and 13 are always edge-triggered there).

Edge-triggered inputs latch a request on the rising edge, so a device may pulse its line and the request is not
lost (the 8259A wants the line held until INTA; emulated devices cannot promise that). Level-triggered requests
follow the line.

The software CPU uses this model; with KVM the kernel's own PIC serves instead. `on_intr_change` is called
(outside the lock) whenever INTR rises, so the CPU can stop its time slice and take the interrupt.
"""
from __future__ import annotations

import threading
from collections.abc import Callable

from core.bus import PortIoBus
from core.platform import ELCR_PORT, PIC_MASTER_PORT, PIC_SLAVE_PORT
from core.state import fields as f

CASCADE_IRQ = 2
ELCR_MASKS = (0xF8, 0xDE)    # PIIX: IRQ0-2 and IRQ8/IRQ13 cannot be set to level


def _lowest_bit(mask: int) -> int:
    return (mask & -mask).bit_length() - 1


class _Pic8259:
    """One 8259A. Priorities are tracked by `lowest_priority` (the IR level with the lowest priority)."""

    def __init__(self, is_master: bool) -> None:
        self.is_master = is_master
        self.elcr = 0
        self.elcr_mask = ELCR_MASKS[0 if is_master else 1]
        self.line = 0                  # current input levels (edge detection, level mode); survive a reset
        self.reset()

    def reset(self) -> None:
        self.irr = 0
        self.isr = 0
        self.imr = 0
        self.vector_base = 0
        self.lowest_priority = 7
        self.read_isr = False
        self.poll = False
        self.special_mask = False
        self.auto_eoi = False
        self.rotate_on_auto_eoi = False
        self.special_fully_nested = False
        self.icw4_needed = False
        self.single = False
        self.level_triggered_all = False   # ICW1 LTIM: level mode for every input
        self.init_step = 0                 # 0 = operational; 2..4 = expecting that ICW
        self.cascade = 0                   # ICW3: slave inputs (master) or the slave's id

    # -- request inputs ---------------------------------------------------------------------------------------------

    def _is_level(self, irq: int) -> bool:
        return self.level_triggered_all or bool(self.elcr >> irq & 1)

    def _level_mask(self) -> int:
        return 0xFF if self.level_triggered_all else self.elcr

    def write_elcr(self, value: int) -> None:
        self.elcr = value & self.elcr_mask
        level = self._level_mask()
        self.irr = (self.irr & ~level) | (self.line & level)

    def set_input(self, irq: int, level: bool) -> None:
        bit = 1 << irq
        if self._is_level(irq):
            if level:
                self.irr |= bit
            else:
                self.irr &= ~bit
        elif level and not self.line & bit:
            self.irr |= bit
        if level:
            self.line |= bit
        else:
            self.line &= ~bit

    # -- priority resolution -------------------------------------------------------------------------------------------

    def _priority_order(self, mask: int) -> int | None:
        """The highest-priority IR level set in `mask`, as a priority rank (0 = highest), or None."""
        if not mask:
            return None
        start = (self.lowest_priority + 1) & 7
        rotated = ((mask >> start) | (mask << (8 - start))) & 0xFF
        return _lowest_bit(rotated)

    def _level_of_rank(self, rank: int) -> int:
        return (rank + self.lowest_priority + 1) & 7

    def pending_irq(self) -> int | None:
        """The IR level this 8259A would request the CPU for now, or None (the INT output is low)."""
        rank = self._priority_order(self.irr & ~self.imr)
        if rank is None:
            return None
        in_service = self.isr
        if self.special_mask:
            in_service &= ~self.imr        # masked in-service levels no longer block (special mask mode)
        if self.is_master and self.special_fully_nested:
            in_service &= ~self.cascade    # a slave in service may still present higher-priority requests
        isr_rank = self._priority_order(in_service)
        if isr_rank is not None and isr_rank <= rank:
            return None
        return self._level_of_rank(rank)

    def acknowledge(self) -> int | None:
        """The INTA cycle on this chip: returns the IR level serviced, or None when nothing (spurious)."""
        irq = self.pending_irq()
        if irq is None:
            return None
        bit = 1 << irq
        if not self._is_level(irq):
            self.irr &= ~bit
        if self.auto_eoi:
            if self.rotate_on_auto_eoi:
                self.lowest_priority = irq
        else:
            self.isr |= bit
        return irq

    def _highest_isr(self) -> int | None:
        rank = self._priority_order(self.isr)
        return None if rank is None else self._level_of_rank(rank)

    # -- registers ----------------------------------------------------------------------------------------------------

    def write_command(self, value: int) -> None:
        if value & 0x10:
            self._icw1(value)
        elif value & 0x08:
            self._ocw3(value)
        else:
            self._ocw2(value)

    def _icw1(self, value: int) -> None:
        # ICW1 clears the mask, resets priority and the edge-sense latches, and selects IRR for reads.
        # An input that is high now must go low and high again to request (the edge-sense latch is reset);
        # level-sensitive inputs keep requesting while they are high.
        self.imr = 0
        self.isr = 0
        self.lowest_priority = 7
        self.read_isr = False
        self.poll = False
        self.special_mask = False
        self.level_triggered_all = bool(value & 0x08)
        self.irr = self.line & self._level_mask()
        self.single = bool(value & 0x02)
        self.icw4_needed = bool(value & 0x01)
        if not self.icw4_needed:
            self.auto_eoi = False
            self.special_fully_nested = False
        self.rotate_on_auto_eoi = False
        self.init_step = 2

    def _ocw2(self, value: int) -> None:
        command = value >> 5
        level = value & 7
        if command in (0b001, 0b101):             # non-specific EOI (with rotation for 101)
            irq = self._highest_isr()
            if irq is not None:
                self.isr &= ~(1 << irq)
                if command == 0b101:
                    self.lowest_priority = irq
        elif command in (0b011, 0b111):           # specific EOI (with rotation for 111)
            self.isr &= ~(1 << level)
            if command == 0b111:
                self.lowest_priority = level
        elif command == 0b110:                    # set priority
            self.lowest_priority = level
        elif command == 0b100:
            self.rotate_on_auto_eoi = True
        elif command == 0b000:
            self.rotate_on_auto_eoi = False
        # 0b010 is a no-op.

    def _ocw3(self, value: int) -> None:
        if value & 0x04:
            self.poll = True
        if value & 0x02:
            self.read_isr = bool(value & 0x01)
        if value & 0x40:
            self.special_mask = bool(value & 0x20)

    def write_data(self, value: int) -> None:
        step = self.init_step
        if step == 0:
            self.imr = value                      # OCW1
            return
        if step == 2:
            self.vector_base = value & 0xF8       # ICW2 (8086 mode: the low three bits come from the IR level)
            step = 3 if not self.single else 4
        elif step == 3:
            self.cascade = value if self.is_master else value & 7
            step = 4
        elif step == 4:
            self.auto_eoi = bool(value & 0x02)
            self.special_fully_nested = bool(value & 0x10)
            step = 0
        if step == 4 and not self.icw4_needed:
            step = 0
        self.init_step = step

    def read_command(self) -> int:
        return self.isr if self.read_isr else self.irr

    def poll_read(self) -> int:
        """OCW3 poll: the read acts as an interrupt acknowledge and reports the level serviced."""
        self.poll = False
        irq = self.acknowledge()
        return 0 if irq is None else 0x80 | irq


class Pic8259Pair:
    """Master and slave 8259A plus the ELCR. Thread-safe; see the module docstring for the contract."""

    def __init__(self, on_intr_change: Callable[[], None] | None = None) -> None:
        self.on_intr_change = on_intr_change
        self.master = _Pic8259(is_master=True)
        self.slave = _Pic8259(is_master=False)
        self._lock = threading.Lock()
        self._intr = False
        self.spurious = 0

    def attach(self, pio: PortIoBus) -> None:
        pio.register(PIC_MASTER_PORT, 2, self)
        pio.register(PIC_SLAVE_PORT, 2, self)
        pio.register(ELCR_PORT, 2, self)

    def reset(self) -> None:
        with self._lock:
            self.master.reset()
            self.slave.reset()
            self.master.elcr = self.slave.elcr = 0
            self._intr = False

    # -- device side ------------------------------------------------------------------------------------------------

    def set_irq(self, irq: int, level: bool) -> None:
        """Drive ISA IRQ line `irq` (0-15). IRQ2 is the internal cascade and is not an external input."""
        if not 0 <= irq < 16 or irq == CASCADE_IRQ:
            return
        with self._lock:
            if irq < 8:
                self.master.set_input(irq, level)
            else:
                self.slave.set_input(irq - 8, level)
            rose = self._update()
        if rose:
            self._notify()

    # -- CPU side ---------------------------------------------------------------------------------------------------

    def has_interrupt(self) -> bool:
        """The master's INT output."""
        with self._lock:
            return self.master.pending_irq() is not None

    def acknowledge(self) -> int:
        """The two INTA pulses: returns the vector and moves the request from IRR to ISR.

        With no request left to serve (it went away after INT rose) the 8259A answers with IR7's vector without
        setting ISR; on the slave that is IRQ15's vector, with the master's cascade level in service.
        """
        with self._lock:
            irq = self.master.acknowledge()
            if irq is None:
                self.spurious += 1
                vector = self.master.vector_base | 7
            elif self._is_cascade(irq):
                slave_irq = self.slave.acknowledge()
                if slave_irq is None:
                    self.spurious += 1
                    slave_irq = 7
                vector = self.slave.vector_base | slave_irq
            else:
                vector = self.master.vector_base | irq
            rose = self._update()
        if rose:
            self._notify()
        return vector

    # -- port I/O ---------------------------------------------------------------------------------------------------

    def io_read(self, port: int, size: int) -> int:
        value = 0
        for i in range(size):
            value |= self._read_byte(port + i) << (8 * i)
        return value

    def io_write(self, port: int, size: int, value: int) -> None:
        for i in range(size):
            self._write_byte(port + i, (value >> (8 * i)) & 0xFF)

    def _chip(self, port: int) -> _Pic8259 | None:
        if port in (PIC_MASTER_PORT, PIC_MASTER_PORT + 1):
            return self.master
        if port in (PIC_SLAVE_PORT, PIC_SLAVE_PORT + 1):
            return self.slave
        return None

    def _read_byte(self, port: int) -> int:
        with self._lock:
            if port in (ELCR_PORT, ELCR_PORT + 1):
                return (self.master if port == ELCR_PORT else self.slave).elcr
            chip = self._chip(port)
            if chip is None:
                return 0xFF
            if not chip.poll:
                return chip.imr if port & 1 else chip.read_command()
            # A poll on the master that reports IR2 leaves the slave to be polled by the next read of its port.
            value = chip.poll_read()
            rose = self._update()
        if rose:
            self._notify()
        return value

    def _write_byte(self, port: int, value: int) -> None:
        with self._lock:
            if port in (ELCR_PORT, ELCR_PORT + 1):
                (self.master if port == ELCR_PORT else self.slave).write_elcr(value)
            else:
                chip = self._chip(port)
                if chip is None:
                    return
                if port & 1:
                    chip.write_data(value)
                else:
                    chip.write_command(value)
            rose = self._update()
        if rose:
            self._notify()

    # -- internals ----------------------------------------------------------------------------------------------------

    def _is_cascade(self, irq: int) -> bool:
        if self.master.single:
            return False
        return bool(self.master.cascade >> irq & 1) if self.master.cascade else irq == CASCADE_IRQ

    def _update(self) -> bool:
        """Propagate the slave's INT into the master's IR2 and recompute INTR. Returns True if INTR rose.

        The cascade request follows the slave's INT level: if a slave request goes away before the CPU
        acknowledges, the master stops asking too, instead of producing a spurious IRQ15 for nothing.
        """
        bit = 1 << CASCADE_IRQ
        if self.slave.pending_irq() is not None:
            self.master.line |= bit
            self.master.irr |= bit
        else:
            self.master.line &= ~bit
            self.master.irr &= ~bit
        intr = self.master.pending_irq() is not None
        rose = intr and not self._intr
        self._intr = intr
        return rose

    def _notify(self) -> None:
        if self.on_intr_change is not None:
            self.on_intr_change()

    # -- machine state (docs/machine-state.md) ----------------------------------------------------------------------

    # One 8259A, in the names of this model; KVM's kvm_pic_state converts to and from it (core/state/kvm_chips.py).
    CHIP_STATE = {"irr": f.U8, "isr": f.U8, "imr": f.U8, "line": f.U8, "elcr": f.U8, "vector_base": f.Int(0, 0xF8),
                  "lowest_priority": f.u(3), "read_isr": f.BOOL, "poll": f.BOOL, "special_mask": f.BOOL,
                  "auto_eoi": f.BOOL, "rotate_on_auto_eoi": f.BOOL, "special_fully_nested": f.BOOL,
                  "icw4_needed": f.BOOL, "single": f.BOOL, "level_triggered_all": f.BOOL,
                  "init_step": f.Int(0, 4), "cascade": f.U8}
    STATE_VERSION = 1

    def get_state(self) -> dict:
        with self._lock:
            return {"master": f.capture(self.master, self.CHIP_STATE, 0),
                    "slave": f.capture(self.slave, self.CHIP_STATE, 0)}

    def set_state(self, state: dict) -> None:
        f.expect_record(state, "pic", ("master", "slave"))
        checked = [f.validate(state[name], self.CHIP_STATE, f"pic.{name}", 0) for name in ("master", "slave")]
        for name, c in zip(("master", "slave"), checked, strict=True):
            if c["init_step"] == 1:
                raise f.StateError(f"pic.{name}.init_step: 1 is not a step of the initialisation sequence")
        with self._lock:
            for chip, c in zip((self.master, self.slave), checked, strict=True):
                f.apply(chip, c, self.CHIP_STATE, 0)
                chip.elcr &= chip.elcr_mask
            self._intr = False
            rose = self._update()
        if rose:
            self._notify()

    # -- inspection (debugging, tests) ------------------------------------------------------------------------------

    def state(self) -> dict[str, int]:
        with self._lock:
            m, s = self.master, self.slave
            return {"irr": m.irr | s.irr << 8, "isr": m.isr | s.isr << 8, "imr": m.imr | s.imr << 8,
                    "master_base": m.vector_base, "slave_base": s.vector_base}
