"""The accelerator combo box of the New VM wizard and of Details: each entry says what it resolves to on this host
(issue 17, defect 11: "The KVM choice on a host whose KVM cannot run stock kernels (kvm_pvm) is marked as such in
the accelerator list, not only in a warning line").

The texts come from the bridge's cached host facts (HostInfo's kvm_usable / kvm_hardware / kvm_reason and the
host's accel_preview for each choice), so the same host reached remotely is described by its own answers.
"""
from __future__ import annotations

from PyQt6.QtCore import Qt
from PyQt6.QtWidgets import QComboBox

from app.host_bridge import HostBridge
from core.config import ACCELERATORS
from core.host import HostError

PVM_LABEL = "KVM (kvm_pvm: runs only small guests, not stock kernels)"
SOFT_KVM_LABEL = "KVM (no VT-x/AMD-V: runs only small guests, not stock kernels)"
NO_KVM_LABEL = "KVM (not available)"
_SHOWN = {"kvm": "KVM", "software": "the software CPU"}


def accel_item(requested: str, bridge: HostBridge) -> tuple[str, str]:
    """(text, tooltip) of the entry for `requested` (auto/kvm/software) on the bridge's host."""
    host = bridge.host_info
    try:
        name, why = bridge.accel_preview(requested)
        error = ""
    except HostError as exc:
        name, why, error = "", "", str(exc)
    if requested == "auto":
        return (f"Automatic (uses {_SHOWN.get(name, name)} here)" if name else "Automatic"), why or error
    if requested == "software":
        return ("Software CPU" if not error else "Software CPU (not available)"), why if not error else error
    if host is None:                      # facts not read yet: nothing to claim
        return "KVM", error
    if not host.kvm_usable:
        return NO_KVM_LABEL, host.kvm_reason
    if host.kvm_hardware:
        return "KVM (hardware)", host.kvm_reason
    # A KVM API without VT-x/AMD-V underneath; the host's reason names kvm_pvm when that is what it is
    # (core.hypervisor.hostcaps.PVM_REASON), and the app does not import the engine to ask again.
    label = PVM_LABEL if "kvm_pvm" in host.kvm_reason else SOFT_KVM_LABEL
    return label, (f"{host.kvm_reason}. Small test guests run on it; a stock Linux kernel does not run at a usable "
                   "speed there, so choose Automatic or Software CPU for one.")


def label_accel_combo(combo: QComboBox, bridge: HostBridge) -> None:
    """Refresh the texts and tooltips of a combo filled by fill_accel_combo (e.g. once the host's facts arrive)."""
    for i in range(combo.count()):
        text, tip = accel_item(combo.itemData(i), bridge)
        combo.setItemText(i, text)
        combo.setItemData(i, tip, Qt.ItemDataRole.ToolTipRole)
    combo.setToolTip(combo.itemData(combo.currentIndex(), Qt.ItemDataRole.ToolTipRole) or "")


def fill_accel_combo(combo: QComboBox, bridge: HostBridge) -> None:
    """One entry per accelerator (its data is the config value), each saying what it is on this host."""
    for requested in ACCELERATORS:
        combo.addItem(requested, requested)
    label_accel_combo(combo, bridge)
    combo.currentIndexChanged.connect(
        lambda i: combo.setToolTip(combo.itemData(i, Qt.ItemDataRole.ToolTipRole) or ""))
