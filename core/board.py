"""The board of a Vireo machine: the PC around the CPUs (the platform of core/platform.py, modelled on QEMU's
i440FX/PIIX4 where Linux has expectations).

A Board owns guest RAM, the port-I/O and MMIO buses, the device timer thread, the CPU backend with its vCPUs, the
interrupt controllers and the devices: the 16550 UART (COM1), the MC146818 RTC/CMOS, the i8042 keyboard
controller, the POST port, the ACPI PM block, the PIIX reset-control register, the PCI host bridge with its
functions (the PIIX3 ISA bridge, the VGA with Bochs VBE, virtio-blk disks). It routes every device's interrupt
line by GSI (ISA IRQ n is GSI n; PCI INTx are GSIs 16-19, and ISA IRQs too where the PIIX3 steers them) and every
MSI to the interrupt controllers.

The interrupt controllers are the accelerator's when it has its own (KVM's in-kernel 8259A pair, I/O APIC, local
APICs and PIT; `Accelerator.provides_interrupt_controllers`). Otherwise -- the software CPU -- the board builds
them as models (PcInterruptControllers: 8259A pair, I/O APIC, 8254 PIT and the APIC bus) and joins the
accelerator's local APICs to their APIC bus (wire_interrupt_controllers). Either way the PC's routing holds: ISA
IRQ n reaches PIC pin n and I/O APIC pin n, except IRQ 0 (the PIT) which reaches I/O APIC pin 2, the interrupt
source override the MADT announces (ACPI 6.4, 5.2.12.5).

With firmware boot (MachineConfig.direct_kernel_boot false; docs/firmware.md) the board also holds the BIOS image
and the PAM-controlled shadow RAM (core/boot/firmware.py), fw_cfg with what SeaBIOS reads (boot order, memory
map, CPUs, the ACPI files from acpi_fw_cfg_files, a kernel), the VGA BIOS behind the VGA's expansion ROM BAR,
QEMU's debug console at 0x402 and port 0x92; the firmware assigns PCI resources, and the BSP starts at the reset
vector. Direct kernel boot has none of those and gets its PCI resources from PciBus.assign_resources.

The Machine (core/machine.py) builds one Board, loads the kernel into it (or starts the firmware) and runs its
vCPUs; what the guest asks of the machine as a whole (a reset through 0xCF9 or the i8042, an ACPI power-off, a
failing device timer) goes to the callbacks it gives.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from core import platform
from core.boot.firmware import FirmwareError, FirmwareMemory, load_firmware_image
from core.boot.firmware_config import (
    BootDevices,
    add_linux_kernel,
    configure_fw_cfg,
    ide_boot_path,
    pci_boot_path,
    read_boot_file,
    set_boot_order,
)
from core.bus import MmioBus, PortIoBus
from core.devices.acpi_pm import AcpiPm
from core.devices.apic_bus import ApicBus, decode_msi
from core.devices.debugcon import DebugConsole
from core.devices.fw_cfg import FwCfg
from core.devices.i440fx import I440fxHostBridge
from core.devices.i8042 import I8042
from core.devices.ide import AtaDisk, AtapiCdrom, PiixIde, drive_positions
from core.devices.ioapic import IoApic
from core.devices.pci import PciBus
from core.devices.pic import Pic8259Pair
from core.devices.piix3 import Piix3IsaBridge
from core.devices.pit import Pit8254
from core.devices.port92 import SystemControlPortA
from core.devices.post import PostPort
from core.devices.reset_control import ResetControl
from core.devices.rtc import CmosRtc
from core.devices.serial import Uart16550
from core.devices.vga import Vga
from core.devices.virtio.blk import VirtioBlk
from core.devices.virtio.pci import VirtioPciDevice
from core.hypervisor.base import Accelerator, AcceleratorUnavailable, CpuState, Vcpu
from core.hypervisor.select import create_accelerator
from core.irq import InterruptSink, IrqLine
from core.memory import FIRMWARE_HOLE, GuestMemory
from core.timers import TimerQueue

if TYPE_CHECKING:
    from core.devices.virtio.net import VirtioNet
    from core.machine import DiskSpec, MachineConfig
    from core.net.nic import NicSpec

log = logging.getLogger(__name__)

VGA_BIOS = "/usr/share/seabios/vgabios-stdvga.bin"    # SeaVGABIOS for QEMU's stdvga (Debian's seabios package)


def _read_vga_bios(path: str = VGA_BIOS) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise FirmwareError(f"VGA BIOS {path}: {exc.strerror or exc}; install Debian's seabios package "
                            f"(apt-get install seabios) or run without a display (--display none)") from None


class PcInterruptControllers:
    """A PC's interrupt controllers outside its CPUs, as models: the cascaded 8259A pair (with the PIIX ELCR), the
    I/O APIC, the 8254 PIT, and the APIC bus joining them to the CPUs' local APICs (the PIC's INTR on every LINT0,
    I/O APIC messages, MSIs). Devices drive it as their InterruptSink."""

    def __init__(self, pio: PortIoBus, mmio: MmioBus, timers: TimerQueue) -> None:
        self.apic_bus = ApicBus()
        self.pic = Pic8259Pair(self.apic_bus.extint_changed)
        self.apic_bus.extint = self.pic
        self.ioapic = IoApic(self.apic_bus.deliver)
        self.apic_bus.on_eoi = self.ioapic.eoi        # EOIs of level-triggered vectors (SDM vol. 3, 10.8.5)
        self.pit = Pit8254(timers, IrqLine(self, platform.PIT_GSI))
        self.dropped_msis = 0
        self.pic.attach(pio)
        self.ioapic.attach(mmio)
        self.pit.attach(pio)

    def set_irq(self, gsi: int, level: bool) -> None:
        """GSI 0-15 (except the cascade, and the PIT's GSI 2 which is ISA IRQ 0) reach the PIC pair; every GSI
        reaches the I/O APIC pin of that number."""
        isa = 0 if gsi == platform.PIT_GSI else gsi
        if gsi < 16 and isa != 2:
            self.pic.set_irq(isa, level)
        self.ioapic.set_irq(gsi, level)

    def send_msi(self, address: int, data: int) -> None:
        """Deliver a message-signalled interrupt (PCI 3.0, 6.8; address/data as in SDM vol. 3, 10.11) to the local
        APICs. A message no APIC accepts (outside 0xFEExxxxx, a reserved delivery mode) is counted and dropped."""
        msg = decode_msi(address, data)
        if msg is None:
            self.dropped_msis += 1
            return
        self.apic_bus.deliver_msi(msg)

    def reset(self) -> None:
        self.pic.reset()
        self.pit.reset()
        self.ioapic.reset()


def wire_interrupt_controllers(accel: Accelerator, pio: PortIoBus, mmio: MmioBus,
                               timers: TimerQueue) -> PcInterruptControllers | None:
    """Give a machine on `accel` its interrupt controllers, before its first vCPU is created: None when the
    accelerator has its own (interrupt lines and MSIs then go to it), else new PcInterruptControllers on the buses
    with the accelerator's local APICs joined to their APIC bus."""
    if accel.provides_interrupt_controllers:
        return None
    controllers = PcInterruptControllers(pio, mmio, timers)
    accel.connect_apic_bus(controllers.apic_bus)
    return controllers


class Board:
    """The hardware of one machine built from a MachineConfig, on the CPU backend `accel_name` (kvm/software).
    `request_reset` and `request_poweroff` are the guest's reset and ACPI power-off; `report_fault` is told
    (one line) when a device timer fails. Construction failing releases what was taken."""

    def __init__(self, config: MachineConfig, accel_name: str, *, serial_output: Callable[[bytes], None],
                 request_reset: Callable[[], None], request_poweroff: Callable[[], None],
                 report_fault: Callable[[str], None]) -> None:
        # With firmware (not config.direct_kernel_boot) the PC's own boot path runs: the BIOS image in memory,
        # fw_cfg, the option ROMs; the firmware assigns PCI resources. Direct kernel boot keeps none of that.
        self.firmware_boot = not config.direct_kernel_boot
        self.firmware_path, firmware_image = load_firmware_image(config.firmware) if self.firmware_boot \
            else (None, b"")
        self.memory = GuestMemory(config.memory_mib * 1024 * 1024)
        if self.firmware_boot:
            self.memory.cpu_hole = FIRMWARE_HOLE      # 0xC0000-0xFFFFF is FirmwareMemory's (PAM)
        self.pio = PortIoBus()
        self.mmio = MmioBus()
        self.timers = TimerQueue(name="vireo-timers")
        self.timers.on_error = lambda exc: report_fault(f"device timer failed: {exc!r}")
        self.images: list = []
        self.disk_transports: list[VirtioPciDevice] = []
        self.nics: list[VirtioNet] = []      # VirtioNet (and its socket backends) imported only with a NIC
        self.ide: PiixIde | None = None
        self.cdroms: list[AtapiCdrom] = []
        self.accel: Accelerator | None = None
        self.vga: Vga | None = None
        self.firmware: FirmwareMemory | None = None
        self.fw_cfg: FwCfg | None = None
        self.debugcon: DebugConsole | None = None
        self.port92: SystemControlPortA | None = None
        self.boot_devices = BootDevices()
        self._config = config
        try:
            self.accel = accel = create_accelerator(accel_name, self.memory, self.pio, self.mmio, config.cpus,
                                                    self.timers)
            self.interrupt_controllers = wire_interrupt_controllers(accel, self.pio, self.mmio, self.timers)
            # Where device interrupt lines and MSIs go: the board's controllers, or the accelerator's own.
            self.interrupts: InterruptSink = self.interrupt_controllers or accel
            self._build_devices(config, serial_output, request_reset, request_poweroff, firmware_image)
            self.vcpus: list[Vcpu] = [accel.create_vcpu(i) for i in range(config.cpus)]
        except BaseException:
            self.close()
            raise

    def _build_devices(self, config: MachineConfig, serial_output: Callable[[bytes], None],
                       request_reset: Callable[[], None], request_poweroff: Callable[[], None],
                       firmware_image: bytes) -> None:
        assert self.accel is not None
        line = lambda gsi: IrqLine(self.interrupts, gsi)  # noqa: E731
        self.serial = Uart16550(line(platform.COM1_IRQ), serial_output, timers=self.timers)
        self.rtc = CmosRtc(line(platform.RTC_IRQ), self.timers, self.memory.size, cpus=config.cpus)
        self.i8042 = I8042(request_reset, line(platform.I8042_KBD_IRQ), line(platform.I8042_MOUSE_IRQ),
                           timers=self.timers)
        self.post = PostPort()
        self.acpi_pm = AcpiPm(line(platform.ACPI_SCI_IRQ), request_poweroff, timers=self.timers)
        self.reset_control = ResetControl(request_reset)
        # A backend that maps device memory as RAM takes the framebuffer BAR off the MMIO exit path.
        mapper = self.accel if self.accel.supports_ram_mapping else None
        self.host_bridge = I440fxHostBridge()
        self.pci = PciBus(self.pio, self.mmio, self.interrupts.set_irq, ram_mapper=mapper,
                          host_bridge=self.host_bridge)
        # The southbridge's slot, as on QEMU's i440FX machine: the ISA bridge at 00:01.0 (its PIRQ router steers
        # PCI interrupts to ISA IRQs for PIC-mode guests); the IDE controller joins it as function 1.
        self.isa_bridge = Piix3IsaBridge(self.interrupts.set_irq)
        self.pci.add(self.isa_bridge, slot=platform.PIIX_SLOT, function=0)
        self.pci.pirq_router = self.isa_bridge
        self.ide = self._build_ide(config)
        port_devices = [self.serial, self.rtc, self.i8042, self.post, self.acpi_pm, self.reset_control, self.pci]
        if self.firmware_boot:
            if not self.accel.supports_readonly_mapping:
                raise AcceleratorUnavailable(f"the {self.accel.name} backend here cannot map memory read-only "
                                             f"(KVM_CAP_READONLY_MEM), which firmware boot needs: use --accel "
                                             f"software, or boot a kernel directly")
            # The BIOS image and shadow RAM, remapped whenever the PAM registers change (and at reset, which
            # resets them); fw_cfg; QEMU's debug console where SeaBIOS logs, if asked for; port 0x92 for fast
            # A20/reset.
            self.firmware = FirmwareMemory(firmware_image, self.memory, self.mmio, mapper)
            self.host_bridge.on_pam_change = self.firmware.set_pam
            self.fw_cfg = FwCfg(self.memory)
            self.port92 = SystemControlPortA(request_reset)
            port_devices += [self.fw_cfg, self.port92]
            if config.debugcon:
                self.debugcon = DebugConsole()
                port_devices.append(self.debugcon)
        for dev in port_devices:
            dev.attach(self.pio)
        self.devices = list(port_devices)
        # Without a display adapter the guest finds no VGA at all: no legacy ports or window, no PCI function.
        if config.display == "vga":
            self.vga = Vga(self.pci, ram_mapper=mapper)
            self.vga.attach(self.pio, self.mmio)
            self.devices.append(self.vga)
            if self.firmware_boot:
                self.vga.pci.set_expansion_rom(_read_vga_bios())
        self.disks = [self._add_disk(i, spec) for i, spec in enumerate(config.disks) if spec.bus == "virtio"]
        self.nics = [self._add_nic(i, spec) for i, spec in enumerate(config.nics)]
        if self.firmware_boot:
            assert self.fw_cfg is not None
            if config.kernel:
                add_linux_kernel(self.fw_cfg, self.memory, self.boot_devices,
                                 read_boot_file(config.kernel, "kernel", self.memory.size),
                                 read_boot_file(config.initrd, "initrd", self.memory.size)
                                 if config.initrd else None,
                                 config.cmdline, kernel_name=os.path.basename(config.kernel))
            configure_fw_cfg(self.fw_cfg, config, self.memory, self.boot_devices, self.acpi_fw_cfg_files(config))
        else:
            self.pci.assign_resources()

    def acpi_fw_cfg_files(self, config: MachineConfig) -> dict[str, bytes]:
        """THE place Vireo's own ACPI tables join firmware boot: the fw_cfg files "etc/acpi/tables",
        "etc/acpi/rsdp" and "etc/table-loader" (core/boot/firmware_config.add_acpi_files installs them): the
        same tables direct boot writes, placed by SeaBIOS through the table loader (core/boot/acpi_fw_cfg.py)."""
        from core.boot.acpi_fw_cfg import firmware_acpi_files
        low = self.memory.regions[0].end
        return firmware_acpi_files(config.cpus, low, self.memory.size - low)

    def _build_ide(self, config: MachineConfig) -> PiixIde:
        """The PIIX3's IDE function (00:01.1), there whether or not it has drives, as on QEMU's PC. Disks on
        bus "ide" and then the CD-ROMs take the positions drive_positions() gives (the disks from the primary
        master on, the first CD-ROM on the secondary master); a CD-ROM path of "" is an empty drive. With no
        firmware to run, the function is set up as firmware would leave it (IDETIM decode on)."""
        from core.storage import open_image
        ide = PiixIde(self.memory, self.interrupts)
        self.pci.add(ide, slot=platform.PIIX_SLOT, function=1)
        ide.attach(self.pio)
        ide_disks = [(i, spec) for i, spec in enumerate(config.disks) if spec.bus == "ide"]
        disk_positions, cd_positions = drive_positions(len(ide_disks), len(config.cdroms))
        for position, (index, spec) in zip(disk_positions, ide_disks, strict=True):
            image = open_image(spec.path, spec.format, read_only=spec.readonly, cache=spec.cache)
            self.images.append(image)
            ide.attach_drive(position, AtaDisk(image, serial=f"vireo-disk{index}"))
            self.boot_devices.add("disk", ide_boot_path(position // 2, position % 2))
        for number, (position, path) in enumerate(zip(cd_positions, config.cdroms, strict=True)):
            image = open_image(path, "raw", read_only=True) if path else None
            if image is not None:
                self.images.append(image)
            cdrom = AtapiCdrom(image, serial=f"vireo-cd{number}")
            ide.attach_drive(position, cdrom)
            self.boot_devices.add("cd", ide_boot_path(position // 2, position % 2))
            self.cdroms.append(cdrom)
        if config.direct_kernel_boot:
            ide.configure_as_firmware()
        return ide

    def change_cdrom(self, number: int, path: str | None) -> None:
        """Put the ISO at `path` into CD-ROM drive `number` (None: take the disc out) while the machine runs;
        the guest sees a medium change. The image it had is closed."""
        from core.storage import open_image
        drive = self.cdroms[number]
        image = open_image(path, "raw", read_only=True) if path else None
        old = drive.change_medium(image)
        if image is not None:
            self.images.append(image)
        if old is not None:
            self.images.remove(old)
            old.close()

    def _add_disk(self, index: int, spec: DiskSpec) -> VirtioBlk:
        from core.storage import open_image
        image = open_image(spec.path, spec.format, read_only=spec.readonly, cache=spec.cache)
        self.images.append(image)
        blk = VirtioBlk(image, serial=f"vireo-disk{index}")
        transport = VirtioPciDevice(blk, self.memory, msi_sink=self.interrupts.send_msi)
        self.disk_transports.append(transport)
        slot = self.pci.add(transport)
        self.boot_devices.add("disk", pci_boot_path(slot))
        return blk

    def _add_nic(self, index: int, spec: NicSpec) -> VirtioNet:
        from core.devices.virtio.net import VirtioNet
        from core.net.nic import random_mac
        from core.net.passt import PASST_MTU, PasstBackend
        from core.net.tap import open_tap
        if spec.backend == "tap":
            mtu, connect = 1500, lambda: open_tap(spec.tap, spec.bridge)
        else:
            # The spec's forwards as they are at each (re)connect: a running VM's new forwards
            # (core/vmproc/net_control.py) take effect when its passt restarts.
            mtu, connect = PASST_MTU, lambda: PasstBackend.start(list(spec.forwards))
        nic = VirtioNet(spec.mac or random_mac(), connect, mtu=mtu, name=f"net{index}")
        nic.switch_up = spec.link
        self.pci.add(VirtioPciDevice(nic, self.memory, msi_sink=self.interrupts.send_msi))
        return nic

    def start_nics(self) -> None:
        """Connect every card's backend (passt, a TAP): one that fails leaves that card's link down."""
        for nic in self.nics:
            nic.start()

    def reset(self) -> None:
        """A machine reset: the interrupt controllers, what the accelerator owns (vCPUs' hidden state, local
        APICs) and every device back to power-on state; RAM keeps its contents. With firmware, resetting the host
        bridge's PAM registers brings back the pristine BIOS image at 0xC0000-0xFFFFF. Call with every vCPU
        stopped."""
        assert self.accel is not None
        if self.interrupt_controllers is not None:
            self.interrupt_controllers.reset()
        self.accel.reset_platform()
        for dev in self.devices:
            dev.reset()

    def end_boot_once(self) -> None:
        """After the first reset, the firmware tries the lasting boot order instead of the boot-once one (QEMU's
        -boot once=): an installer that reboots at its end boots the disk it installed, not itself again."""
        if self.fw_cfg is not None and self._config.boot_once:
            set_boot_order(self.fw_cfg, self._config, self.boot_devices, self._config.boot)

    def firmware_reset_state(self) -> None:
        """Power-on CPU state for firmware boot: the BSP in real mode at F000:FFF0 with CS base 0xFFFF0000, so its
        first fetch is the image's reset vector at 0xFFFFFFF0 (Intel SDM vol. 3, 9.1.4); APs wait for INIT/SIPI."""
        state = CpuState()
        state.regs["rdx"] = 0x600          # EDX holds the processor signature after RESET (family 6)
        self.vcpus[0].set_state(state)
        for vcpu in self.vcpus[1:]:
            vcpu.reset_to_wait_for_sipi()

    def close(self) -> None:
        """The machine has stopped for good (or never got built): give back what it holds on the host -- disk
        images (and their locks), the emulator or KVM objects, the timer thread. Video memory stays readable for
        a last screendump."""
        if self.vga is not None:
            self.vga.close()
        for nic in self.nics:
            nic.stop()                # its threads end and its passt exits before guest RAM goes away
        for transport in self.disk_transports:
            transport.close()         # the disk's worker thread finishes its request before the image closes
        if self.ide is not None:
            self.ide.close()          # likewise the IDE channels' workers
        for image in self.images:
            try:
                image.close()
            except Exception:
                log.exception("closing a disk image failed")
        self.images = []
        self.timers.stop()
        if self.accel is not None:
            try:
                self.accel.close()
            except Exception:
                log.exception("closing the accelerator failed")
