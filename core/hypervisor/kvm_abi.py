"""The KVM user-space ABI for x86-64: ioctl numbers, exit codes and the structures those ioctls exchange.

Transcribed from the KVM API documentation (Documentation/virt/kvm/api.rst, sections 4.x for the ioctls and 5
"The kvm_run structure") and the uapi headers it describes (include/uapi/linux/kvm.h,
arch/x86/include/uapi/asm/kvm.h). tests/kvm/test_kvm_abi.py checks every size, offset and ioctl number here against
the system's <linux/kvm.h> when a C compiler is available.

ioctls go through libc's ioctl() via ctypes rather than fcntl.ioctl: fcntl passes the request as a signed C int
and its integer argument as an int, which cannot carry e.g. KVM_SET_TSS_ADDR's 0xfffbd000; ctypes also drops the
GIL for the duration of the call, so a vCPU blocked in KVM_RUN does not stall the other threads.
"""
from __future__ import annotations

import ctypes
import os
from ctypes import (
    Structure,
    Union,
    c_char,
    c_int,
    c_int64,
    c_uint8,
    c_uint16,
    c_uint32,
    c_uint64,
    c_ulong,
    c_void_p,
    sizeof,
)

# --- ioctl request encoding (include/uapi/asm-generic/ioctl.h) ----------------------------------------------
_IOC_NRBITS, _IOC_TYPEBITS, _IOC_SIZEBITS = 8, 8, 14
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS
_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2


def _IOC(direction: int, typ: int, nr: int, size: int) -> int:
    return (direction << _IOC_DIRSHIFT) | (typ << _IOC_TYPESHIFT) | (nr << _IOC_NRSHIFT) | (size << _IOC_SIZESHIFT)


def _IO(typ: int, nr: int) -> int:
    return _IOC(_IOC_NONE, typ, nr, 0)


def _IOR(typ: int, nr: int, struct: type) -> int:
    return _IOC(_IOC_READ, typ, nr, sizeof(struct))


def _IOW(typ: int, nr: int, struct: type) -> int:
    return _IOC(_IOC_WRITE, typ, nr, sizeof(struct))


def _IOWR(typ: int, nr: int, struct: type) -> int:
    return _IOC(_IOC_READ | _IOC_WRITE, typ, nr, sizeof(struct))


KVMIO = 0xAE
KVM_API_VERSION = 12

# --- structures ------------------------------------------------------------------------------------------------


class kvm_userspace_memory_region(Structure):
    _fields_ = [("slot", c_uint32), ("flags", c_uint32), ("guest_phys_addr", c_uint64),
                ("memory_size", c_uint64), ("userspace_addr", c_uint64)]


KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1


class kvm_regs(Structure):
    _fields_ = [(name, c_uint64) for name in (
        "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags")]


class kvm_segment(Structure):
    _fields_ = [("base", c_uint64), ("limit", c_uint32), ("selector", c_uint16), ("type", c_uint8),
                ("present", c_uint8), ("dpl", c_uint8), ("db", c_uint8), ("s", c_uint8), ("l", c_uint8),
                ("g", c_uint8), ("avl", c_uint8), ("unusable", c_uint8), ("padding", c_uint8)]


class kvm_dtable(Structure):
    _fields_ = [("base", c_uint64), ("limit", c_uint16), ("padding", c_uint16 * 3)]


KVM_NR_INTERRUPTS = 256


class kvm_sregs(Structure):
    _fields_ = [("cs", kvm_segment), ("ds", kvm_segment), ("es", kvm_segment), ("fs", kvm_segment),
                ("gs", kvm_segment), ("ss", kvm_segment), ("tr", kvm_segment), ("ldt", kvm_segment),
                ("gdt", kvm_dtable), ("idt", kvm_dtable),
                ("cr0", c_uint64), ("cr2", c_uint64), ("cr3", c_uint64), ("cr4", c_uint64), ("cr8", c_uint64),
                ("efer", c_uint64), ("apic_base", c_uint64),
                ("interrupt_bitmap", c_uint64 * ((KVM_NR_INTERRUPTS + 63) // 64))]


class kvm_fpu(Structure):
    _fields_ = [("fpr", (c_uint8 * 16) * 8), ("fcw", c_uint16), ("fsw", c_uint16), ("ftwx", c_uint8),
                ("pad1", c_uint8), ("last_opcode", c_uint16), ("last_ip", c_uint64), ("last_dp", c_uint64),
                ("xmm", (c_uint8 * 16) * 16), ("mxcsr", c_uint32), ("pad2", c_uint32)]


KVM_APIC_REG_SIZE = 0x400


class kvm_lapic_state(Structure):
    _fields_ = [("regs", c_char * KVM_APIC_REG_SIZE)]


class kvm_msr_entry(Structure):
    _fields_ = [("index", c_uint32), ("reserved", c_uint32), ("data", c_uint64)]


class kvm_msrs(Structure):
    """Header only; the entries follow in memory (see msrs_buffer)."""
    _fields_ = [("nmsrs", c_uint32), ("pad", c_uint32)]


class kvm_msr_list(Structure):
    """Header only; the indices follow in memory."""
    _fields_ = [("nmsrs", c_uint32)]


def msrs_buffer(n: int) -> Structure:
    """A kvm_msrs with room for n entries (the C struct ends in a flexible array)."""
    class _Msrs(Structure):
        _fields_ = [("nmsrs", c_uint32), ("pad", c_uint32), ("entries", kvm_msr_entry * n)]
    buf = _Msrs()
    buf.nmsrs = n
    return buf


def msr_list_buffer(n: int) -> Structure:
    class _MsrList(Structure):
        _fields_ = [("nmsrs", c_uint32), ("indices", c_uint32 * n)]
    buf = _MsrList()
    buf.nmsrs = n
    return buf


class kvm_cpuid_entry2(Structure):
    _fields_ = [("function", c_uint32), ("index", c_uint32), ("flags", c_uint32), ("eax", c_uint32),
                ("ebx", c_uint32), ("ecx", c_uint32), ("edx", c_uint32), ("padding", c_uint32 * 3)]


KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1 << 0   # (sic) spelled so in the header


class kvm_cpuid2(Structure):
    """Header only; the entries follow in memory (see cpuid_buffer)."""
    _fields_ = [("nent", c_uint32), ("padding", c_uint32)]


def cpuid_buffer(n: int) -> Structure:
    class _Cpuid2(Structure):
        _fields_ = [("nent", c_uint32), ("padding", c_uint32), ("entries", kvm_cpuid_entry2 * n)]
    buf = _Cpuid2()
    buf.nent = n
    return buf


class kvm_irq_level(Structure):
    # union { __u32 irq; __s32 status; }: status is only written back by KVM_IRQ_LINE_STATUS
    _fields_ = [("irq", c_uint32), ("level", c_uint32)]


class kvm_ioeventfd(Structure):
    _fields_ = [("datamatch", c_uint64), ("addr", c_uint64), ("len", c_uint32), ("fd", c_int),
                ("flags", c_uint32), ("pad", c_uint8 * 36)]


KVM_IOEVENTFD_FLAG_DEASSIGN = 1 << 2


class kvm_pit_config(Structure):
    _fields_ = [("flags", c_uint32), ("pad", c_uint32 * 15)]


KVM_PIT_SPEAKER_DUMMY = 1   # KVM also emulates port 0x61 (speaker gate / PIT channel 2 output)


class kvm_pit_channel_state(Structure):
    _fields_ = [("count", c_uint32), ("latched_count", c_uint16), ("count_latched", c_uint8),
                ("status_latched", c_uint8), ("status", c_uint8), ("read_state", c_uint8),
                ("write_state", c_uint8), ("write_latch", c_uint8), ("rw_mode", c_uint8), ("mode", c_uint8),
                ("bcd", c_uint8), ("gate", c_uint8), ("count_load_time", c_int64)]


class kvm_pit_state2(Structure):
    _fields_ = [("channels", kvm_pit_channel_state * 3), ("flags", c_uint32), ("reserved", c_uint32 * 9)]


class kvm_pic_state(Structure):
    _fields_ = [(name, c_uint8) for name in (
        "last_irr", "irr", "imr", "isr", "priority_add", "irq_base", "read_reg_select", "poll", "special_mask",
        "init_state", "auto_eoi", "rotate_on_auto_eoi", "special_fully_nested_mode", "init4", "elcr",
        "elcr_mask")]


KVM_IOAPIC_NUM_PINS = 24


class kvm_ioapic_state(Structure):
    _fields_ = [("base_address", c_uint64), ("ioregsel", c_uint32), ("id", c_uint32), ("irr", c_uint32),
                ("pad", c_uint32), ("redirtbl", c_uint64 * KVM_IOAPIC_NUM_PINS)]


class _irqchip_union(Union):
    _fields_ = [("dummy", c_char * 512), ("pic", kvm_pic_state), ("ioapic", kvm_ioapic_state)]


class kvm_irqchip(Structure):
    _fields_ = [("chip_id", c_uint32), ("pad", c_uint32), ("chip", _irqchip_union)]


KVM_IRQCHIP_PIC_MASTER = 0
KVM_IRQCHIP_PIC_SLAVE = 1
KVM_IRQCHIP_IOAPIC = 2


class kvm_irq_routing_irqchip(Structure):
    _fields_ = [("irqchip", c_uint32), ("pin", c_uint32)]


class _routing_union(Union):
    _fields_ = [("irqchip", kvm_irq_routing_irqchip), ("pad", c_uint32 * 8)]


class kvm_irq_routing_entry(Structure):
    _fields_ = [("gsi", c_uint32), ("type", c_uint32), ("flags", c_uint32), ("pad", c_uint32),
                ("u", _routing_union)]


class kvm_irq_routing(Structure):
    """Header only; the entries follow in memory (see routing_buffer)."""
    _fields_ = [("nr", c_uint32), ("flags", c_uint32)]


KVM_IRQ_ROUTING_IRQCHIP = 1


def routing_buffer(n: int) -> Structure:
    class _Routing(Structure):
        _fields_ = [("nr", c_uint32), ("flags", c_uint32), ("entries", kvm_irq_routing_entry * n)]
    buf = _Routing()
    buf.nr = n
    return buf


class kvm_msi(Structure):
    _fields_ = [("address_lo", c_uint32), ("address_hi", c_uint32), ("data", c_uint32), ("flags", c_uint32),
                ("devid", c_uint32), ("pad", c_uint8 * 12)]


class kvm_mp_state(Structure):
    _fields_ = [("mp_state", c_uint32)]


KVM_MP_STATE_RUNNABLE = 0
KVM_MP_STATE_UNINITIALIZED = 1
KVM_MP_STATE_INIT_RECEIVED = 2
KVM_MP_STATE_HALTED = 3
KVM_MP_STATE_SIPI_RECEIVED = 4


class _events_exception(Structure):
    _fields_ = [("injected", c_uint8), ("nr", c_uint8), ("has_error_code", c_uint8), ("pending", c_uint8),
                ("error_code", c_uint32)]


class _events_interrupt(Structure):
    _fields_ = [("injected", c_uint8), ("nr", c_uint8), ("soft", c_uint8), ("shadow", c_uint8)]


class _events_nmi(Structure):
    _fields_ = [("injected", c_uint8), ("pending", c_uint8), ("masked", c_uint8), ("pad", c_uint8)]


class _events_smi(Structure):
    _fields_ = [("smm", c_uint8), ("pending", c_uint8), ("smm_inside_nmi", c_uint8), ("latched_init", c_uint8)]


class kvm_vcpu_events(Structure):
    _fields_ = [("exception", _events_exception), ("interrupt", _events_interrupt), ("nmi", _events_nmi),
                ("sipi_vector", c_uint32), ("flags", c_uint32), ("smi", _events_smi),
                ("triple_fault_pending", c_uint8), ("reserved", c_uint8 * 26),
                ("exception_has_payload", c_uint8), ("exception_payload", c_uint64)]


KVM_VCPUEVENT_VALID_NMI_PENDING = 0x1
KVM_VCPUEVENT_VALID_SIPI_VECTOR = 0x2
KVM_VCPUEVENT_VALID_SHADOW = 0x4


class kvm_debugregs(Structure):
    _fields_ = [("db", c_uint64 * 4), ("dr6", c_uint64), ("dr7", c_uint64), ("flags", c_uint64),
                ("reserved", c_uint64 * 9)]


class kvm_xcr(Structure):
    _fields_ = [("xcr", c_uint32), ("reserved", c_uint32), ("value", c_uint64)]


KVM_MAX_XCRS = 16


class kvm_xcrs(Structure):
    _fields_ = [("nr_xcrs", c_uint32), ("flags", c_uint32), ("xcrs", kvm_xcr * KVM_MAX_XCRS),
                ("padding", c_uint64 * 16)]


# kvm_run and its exit union (api.rst section 5). On x86 the union starts right after apic_base.
class kvm_run_io(Structure):
    _fields_ = [("direction", c_uint8), ("size", c_uint8), ("port", c_uint16), ("count", c_uint32),
                ("data_offset", c_uint64)]


KVM_EXIT_IO_IN = 0
KVM_EXIT_IO_OUT = 1


class kvm_run_mmio(Structure):
    _fields_ = [("phys_addr", c_uint64), ("data", c_uint8 * 8), ("len", c_uint32), ("is_write", c_uint8)]


class kvm_run_hw(Structure):
    _fields_ = [("hardware_exit_reason", c_uint64)]


class kvm_run_fail_entry(Structure):
    _fields_ = [("hardware_entry_failure_reason", c_uint64), ("cpu", c_uint32)]


class kvm_run_internal(Structure):
    _fields_ = [("suberror", c_uint32), ("ndata", c_uint32), ("data", c_uint64 * 16)]


class kvm_run_system_event(Structure):
    _fields_ = [("type", c_uint32), ("ndata", c_uint32), ("data", c_uint64 * 16)]


class _kvm_run_exit(Union):
    _fields_ = [("hw", kvm_run_hw), ("fail_entry", kvm_run_fail_entry), ("io", kvm_run_io),
                ("mmio", kvm_run_mmio), ("internal", kvm_run_internal), ("system_event", kvm_run_system_event),
                ("padding", c_char * 256)]


class kvm_run(Structure):
    _fields_ = [("request_interrupt_window", c_uint8), ("immediate_exit", c_uint8), ("padding1", c_uint8 * 6),
                ("exit_reason", c_uint32), ("ready_for_interrupt_injection", c_uint8), ("if_flag", c_uint8),
                ("flags", c_uint16), ("cr8", c_uint64), ("apic_base", c_uint64), ("exit", _kvm_run_exit),
                ("kvm_valid_regs", c_uint64), ("kvm_dirty_regs", c_uint64)]


KVM_RUN_EXIT_OFFSET = kvm_run.exit.offset   # 32 on x86

# exit reasons
KVM_EXIT_UNKNOWN = 0
KVM_EXIT_EXCEPTION = 1
KVM_EXIT_IO = 2
KVM_EXIT_HYPERCALL = 3
KVM_EXIT_DEBUG = 4
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_IRQ_WINDOW_OPEN = 7
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTR = 10
KVM_EXIT_SET_TPR = 11
KVM_EXIT_TPR_ACCESS = 12
KVM_EXIT_NMI = 16
KVM_EXIT_INTERNAL_ERROR = 17
KVM_EXIT_SYSTEM_EVENT = 24
KVM_EXIT_IOAPIC_EOI = 26
KVM_EXIT_X86_RDMSR = 29
KVM_EXIT_X86_WRMSR = 30
KVM_EXIT_X86_BUS_LOCK = 33
KVM_EXIT_NOTIFY = 37
KVM_EXIT_MEMORY_FAULT = 39

EXIT_REASON_NAMES = {v: k for k, v in globals().items() if k.startswith("KVM_EXIT_") and isinstance(v, int)
                     and k not in ("KVM_EXIT_IO_IN", "KVM_EXIT_IO_OUT")}

KVM_INTERNAL_ERROR_EMULATION = 1
KVM_INTERNAL_ERROR_SIMUL_EX = 2
KVM_INTERNAL_ERROR_DELIVERY_EV = 3
KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON = 4

KVM_SYSTEM_EVENT_SHUTDOWN = 1
KVM_SYSTEM_EVENT_RESET = 2
KVM_SYSTEM_EVENT_CRASH = 3

# capabilities (KVM_CHECK_EXTENSION)
KVM_CAP_IRQCHIP = 0
KVM_CAP_HLT = 1
KVM_CAP_USER_MEMORY = 3
KVM_CAP_SET_TSS_ADDR = 4
KVM_CAP_EXT_CPUID = 7
KVM_CAP_NR_VCPUS = 9
KVM_CAP_NR_MEMSLOTS = 10
KVM_CAP_PIT = 11
KVM_CAP_MP_STATE = 14
KVM_CAP_IRQ_ROUTING = 25
KVM_CAP_PIT2 = 33
KVM_CAP_PIT_STATE2 = 35
KVM_CAP_IOEVENTFD = 36
KVM_CAP_SET_IDENTITY_MAP_ADDR = 37
KVM_CAP_VCPU_EVENTS = 41
KVM_CAP_DEBUGREGS = 50
KVM_CAP_XCRS = 56
KVM_CAP_MAX_VCPUS = 66
KVM_CAP_SIGNAL_MSI = 77
KVM_CAP_READONLY_MEM = 81
KVM_CAP_IMMEDIATE_EXIT = 136

# --- ioctl numbers ----------------------------------------------------------------------------------------------
# system ioctls (on the /dev/kvm fd)
KVM_GET_API_VERSION = _IO(KVMIO, 0x00)
KVM_CREATE_VM = _IO(KVMIO, 0x01)
KVM_GET_MSR_INDEX_LIST = _IOWR(KVMIO, 0x02, kvm_msr_list)
KVM_CHECK_EXTENSION = _IO(KVMIO, 0x03)
KVM_GET_VCPU_MMAP_SIZE = _IO(KVMIO, 0x04)
KVM_GET_SUPPORTED_CPUID = _IOWR(KVMIO, 0x05, kvm_cpuid2)
# VM ioctls
KVM_CREATE_VCPU = _IO(KVMIO, 0x41)
KVM_SET_USER_MEMORY_REGION = _IOW(KVMIO, 0x46, kvm_userspace_memory_region)
KVM_SET_TSS_ADDR = _IO(KVMIO, 0x47)
KVM_SET_IDENTITY_MAP_ADDR = _IOW(KVMIO, 0x48, c_uint64)
KVM_CREATE_IRQCHIP = _IO(KVMIO, 0x60)
KVM_IRQ_LINE = _IOW(KVMIO, 0x61, kvm_irq_level)
KVM_GET_IRQCHIP = _IOWR(KVMIO, 0x62, kvm_irqchip)
KVM_SET_IRQCHIP = _IOR(KVMIO, 0x63, kvm_irqchip)      # (sic) _IOR in the header
KVM_SET_GSI_ROUTING = _IOW(KVMIO, 0x6A, kvm_irq_routing)
KVM_CREATE_PIT2 = _IOW(KVMIO, 0x77, kvm_pit_config)
KVM_IOEVENTFD = _IOW(KVMIO, 0x79, kvm_ioeventfd)
KVM_SIGNAL_MSI = _IOW(KVMIO, 0xA5, kvm_msi)
KVM_GET_PIT2 = _IOR(KVMIO, 0x9F, kvm_pit_state2)
KVM_SET_PIT2 = _IOW(KVMIO, 0xA0, kvm_pit_state2)
# vCPU ioctls
KVM_RUN = _IO(KVMIO, 0x80)
KVM_GET_REGS = _IOR(KVMIO, 0x81, kvm_regs)
KVM_SET_REGS = _IOW(KVMIO, 0x82, kvm_regs)
KVM_GET_SREGS = _IOR(KVMIO, 0x83, kvm_sregs)
KVM_SET_SREGS = _IOW(KVMIO, 0x84, kvm_sregs)
KVM_GET_MSRS = _IOWR(KVMIO, 0x88, kvm_msrs)
KVM_SET_MSRS = _IOW(KVMIO, 0x89, kvm_msrs)
KVM_GET_FPU = _IOR(KVMIO, 0x8C, kvm_fpu)
KVM_SET_FPU = _IOW(KVMIO, 0x8D, kvm_fpu)
KVM_GET_LAPIC = _IOR(KVMIO, 0x8E, kvm_lapic_state)
KVM_SET_LAPIC = _IOW(KVMIO, 0x8F, kvm_lapic_state)
KVM_SET_CPUID2 = _IOW(KVMIO, 0x90, kvm_cpuid2)
KVM_GET_CPUID2 = _IOWR(KVMIO, 0x91, kvm_cpuid2)
KVM_GET_MP_STATE = _IOR(KVMIO, 0x98, kvm_mp_state)
KVM_SET_MP_STATE = _IOW(KVMIO, 0x99, kvm_mp_state)
KVM_GET_VCPU_EVENTS = _IOR(KVMIO, 0x9F, kvm_vcpu_events)
KVM_SET_VCPU_EVENTS = _IOW(KVMIO, 0xA0, kvm_vcpu_events)
KVM_GET_DEBUGREGS = _IOR(KVMIO, 0xA1, kvm_debugregs)
KVM_SET_DEBUGREGS = _IOW(KVMIO, 0xA2, kvm_debugregs)
KVM_GET_XCRS = _IOR(KVMIO, 0xA6, kvm_xcrs)
KVM_SET_XCRS = _IOW(KVMIO, 0xA7, kvm_xcrs)

# --- calling ioctl ----------------------------------------------------------------------------------------------
_libc = ctypes.CDLL(None, use_errno=True)
_ioctl = _libc.ioctl
_ioctl.argtypes = [c_int, c_ulong, c_void_p]
_ioctl.restype = c_int


def ioctl(fd: int, request: int, arg: int | Structure | ctypes.Array | None = None) -> int:
    """ioctl(fd, request, arg): arg is an integer value or a ctypes object passed by address.
    Returns the (non-negative) result; raises OSError with errno on failure."""
    if arg is None:
        ptr = None
    elif isinstance(arg, int):
        ptr = arg
    else:
        ptr = ctypes.addressof(arg)
    ret = _ioctl(fd, request, ptr)
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{_request_name(request)}: {os.strerror(err)}")
    return ret


def raw_ioctl() -> ctypes._CFuncPtr:
    """The bare ctypes function (argtypes int, unsigned long, void*), for hot paths that check errno
    themselves via ctypes.get_errno()."""
    return _ioctl


def _request_name(request: int) -> str:
    for name, value in globals().items():
        if value == request and name.startswith("KVM_") and name[4:8] not in ("CAP_", "EXIT", "MP_S"):
            return name
    return f"ioctl {request:#x}"

