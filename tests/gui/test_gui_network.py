"""Issue 13's GUI, through the real widgets (pytest-qt, offscreen) against the sandboxed Vireo service, with a Debian
guest (the tests' kernel and busybox initramfs) on the software CPU and Debian's passt:

  * Details ▸ Network of a shut-off VM: a forward rule added in the table shows as "host 127.0.0.1:PORT → guest
    :80" and is saved with Apply; the VM started, busybox httpd in the guest answers a host-side client through
    that rule;
  * the link switched down on the page: the guest's /sys/class/net/eth0/carrier reads 0; up again: 1;
  * a rule on a host port that is taken, added while the VM runs: one line naming the port under the table, the
    VM keeps its old rule; a free one added live answers at once (passt restarted with it);
  * the Performance tab's network graph and the page's counters grow after traffic;
  * passt killed: the status line says why in one line; Reconnect brings the link back;
  * a saved rule on a taken port at start: the status line names the port;
  * the wizard's default network (user NAT): the new VM's eth0 gets a DHCP lease from passt.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import time
from pathlib import Path

import pytest

pytest.importorskip("pytestqt")

from PyQt6.QtWidgets import QApplication, QWizard  # noqa: E402

from core.config import BootConfig, ConfigStore, NicConfig, VmConfig  # noqa: E402
from tests.gui.test_gui import app_parts, reload, vm_rows, xdg  # noqa: E402,F401,F811
from tests.gui.test_gui_journey import click, serial_text, toolbar_button, type_into, wait_serial  # noqa: E402
from tests.helpers.initrd import initrd_with_current_init  # noqa: E402
from tests.helpers.wizard import wizard_of
from tests.net.test_net_guest import _fetch, free_port  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("passt") is None and os.environ.get("CI") != "true",
                                reason="passt is not installed (apt-get install passt)")
BOOT_MS = 120_000
STATE_MS = 15_000
NETWORK_PAGE = 6
SHOTS = os.environ.get("VIREO_SCREENSHOTS", "")     # a folder to save the page's pictures in, for a look


@pytest.fixture(scope="module")
def initrd(busybox_initramfs, tmp_path_factory) -> Path:
    return initrd_with_current_init(busybox_initramfs, tmp_path_factory.mktemp("initrd"))


def _shot(widget, name: str) -> None:
    if SHOTS:
        for _ in range(3):          # the layout requests a text change posted are handled first
            QApplication.processEvents()
        os.makedirs(SHOTS, exist_ok=True)
        widget.grab().save(os.path.join(SHOTS, f"{name}.png"))


def _vm(kernel, initrd, name: str, cmdline: str, **kw) -> VmConfig:
    cfg = VmConfig(name=name, memory_mib=256, accel="software",
                   boot=BootConfig(kernel=str(kernel), initrd=str(initrd), cmdline=f"console=ttyS0 quiet {cmdline}"),
                   **kw)
    ConfigStore().save(cfg)
    return cfg


def _open_page(qtbot, window, bridge, cfg: VmConfig):
    reload(qtbot, bridge)
    window.open_vm((bridge, cfg.uuid), "details")
    vm_window = window.vm_windows[cfg.uuid]
    details = vm_window.details
    qtbot.waitExposed(details)
    details.pages.setCurrentRow(NETWORK_PAGE)
    assert details.stack.currentWidget() is details.nic_page
    return vm_window, details, details.nic_page


def _start(qtbot, window, vm_window, uuid: str, name: str) -> None:
    window.select_vm(uuid)
    # Run is enabled once the row is selected and no request for the VM (an Apply just made) is in flight.
    qtbot.waitUntil(lambda: window.vm_actions.run.isEnabled(), timeout=STATE_MS)
    click(qtbot, toolbar_button(window, window.vm_actions.run))
    qtbot.waitUntil(lambda: vm_rows(window)[name] == "Running", timeout=STATE_MS)


def _passt_of(uuid: str) -> list[int]:
    """The passt processes started for the VM process of `uuid` (run with --uuid UUID): its children, or, once a
    card's passt has been restarted, children of the passt launcher it started (core/vmproc/launcher.py)."""

    def parent_of(pid: str) -> str:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[1]

    def is_vm_process(pid: str) -> bool:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return uuid.encode() in f.read()

    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as f:
                if not f.read().startswith("passt"):
                    continue
            parent = parent_of(entry)
            if is_vm_process(parent) or (parent != "1" and is_vm_process(parent_of(parent))):
                found.append(int(entry))
        except OSError:
            continue
    return found


def _guest(bridge, uuid: str, line: str) -> None:
    bridge.send_serial(uuid, (line + "\n").encode())


def test_nic_page_forward_link_taken_port_graph_and_reconnect(qtbot, app_parts, debian_kernel, initrd):  # noqa: F811
    host, bridge, window = app_parts
    cfg = _vm(debian_kernel, initrd, "netpage", "vireo.action=net vireo.httpd=80", nics=[NicConfig()])
    vm_window, details, page = _open_page(qtbot, window, bridge, cfg)
    mac = host.get(cfg.uuid).config.nics[0].mac
    assert re.fullmatch(r"52:54:00(:[0-9a-f]{2}){3}", mac)
    assert (page.backend.currentData(), page.model.currentText(), page.mac.text()) == ("user", "virtio-net", mac)
    assert page.link.isChecked() and page.status.text() == "Not running." and page.table.rowCount() == 0

    # 1. A forward added on the page of the shut-off VM, saved with Apply.
    port = free_port()
    type_into(qtbot, page.host_port.lineEdit(), str(port))
    type_into(qtbot, page.guest_port.lineEdit(), "80")
    click(qtbot, page.add_forward)
    assert page.table.item(0, 0).text() == f"host 127.0.0.1:{port} \u2192 guest :80"
    assert page.table.item(0, 1).text() == "TCP"
    # A UDP rule shows as such; selected and removed, it is gone.
    page.proto.setCurrentIndex(page.proto.findData("udp"))
    type_into(qtbot, page.host_port.lineEdit(), "5353")
    type_into(qtbot, page.guest_port.lineEdit(), "53")
    click(qtbot, page.add_forward)
    assert (page.table.item(1, 0).text(), page.table.item(1, 1).text()) == \
        ("udp host 127.0.0.1:5353 \u2192 guest :53", "UDP")
    assert not page.remove_forward.isEnabled()                  # nothing selected yet
    page.table.selectRow(1)
    click(qtbot, page.remove_forward)
    assert page.table.rowCount() == 1 and page.forwards() == [f"tcp:127.0.0.1:{port}-:80"]
    # The same host port twice is refused on the page, in one line.
    page.proto.setCurrentIndex(page.proto.findData("tcp"))
    type_into(qtbot, page.host_port.lineEdit(), str(port))
    click(qtbot, page.add_forward)
    assert "forwarded twice" in page.forward_error.text() and page.table.rowCount() == 1
    # ... and a new MAC (the guest sees it once started).
    click(qtbot, page.new_mac)
    assert page.mac.text() != mac and re.fullmatch(r"52:54:00(:[0-9a-f]{2}){3}", page.mac.text())
    mac = page.mac.text()
    _shot(details, "nic-page-shut-off")
    click(qtbot, details.apply_button)
    qtbot.waitUntil(lambda: host.get(cfg.uuid).config.nics[0].forwards == [f"tcp:127.0.0.1:{port}-:80"],
                    timeout=STATE_MS)
    assert host.get(cfg.uuid).config.nics[0].mac == mac
    assert ConfigStore().load_all()[0][0].nics[0].forwards == [f"tcp:127.0.0.1:{port}-:80"]

    # 2. Started: httpd in the guest answers a host-side client through the rule.
    _start(qtbot, window, vm_window, cfg.uuid, "netpage")
    term = vm_window.console.terminal
    wait_serial(qtbot, term, "VIREO-HTTPD-READY", BOOT_MS)
    assert _fetch(f"http://127.0.0.1:{port}/").decode().strip() == f"VIREO-HTTPD-PAGE {mac}"
    vm_window.show_tab("details")
    qtbot.waitUntil(lambda: page.status.text().startswith("Link up: passt"), timeout=STATE_MS)
    assert not page.mac.isEnabled() and not page.backend.isEnabled() and page.link.isEnabled()
    assert page.reconnect.isEnabled() and page.add_forward.isEnabled()
    _shot(details, "nic-page-running")

    # 3. The link switch: the guest's carrier follows.
    click(qtbot, page.link)
    qtbot.waitUntil(lambda: host.get(cfg.uuid).config.nics[0].link is False, timeout=STATE_MS)
    _guest(bridge, cfg.uuid, "until [ $(cat /sys/class/net/eth0/carrier) = 0 ]; do sleep 0.1; done; "
                             "echo CARRIER-IS-$(cat /sys/class/net/eth0/carrier)")
    wait_serial(qtbot, term, "CARRIER-IS-0", STATE_MS)
    qtbot.waitUntil(lambda: "switched off" in page.status.text(), timeout=STATE_MS)
    click(qtbot, page.link)
    qtbot.waitUntil(lambda: host.get(cfg.uuid).config.nics[0].link is True, timeout=STATE_MS)
    _guest(bridge, cfg.uuid, "until [ $(cat /sys/class/net/eth0/carrier) = 1 ]; do sleep 0.1; done; "
                             "echo CARRIER-IS-$(cat /sys/class/net/eth0/carrier)")
    wait_serial(qtbot, term, "CARRIER-IS-1", STATE_MS)
    assert _fetch(f"http://127.0.0.1:{port}/", timeout=20).decode().strip() == f"VIREO-HTTPD-PAGE {mac}"

    # 4. A rule on a taken port, added live: one line naming the port; the VM keeps its rule.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        type_into(qtbot, page.host_port.lineEdit(), str(busy))
        type_into(qtbot, page.guest_port.lineEdit(), "81")
        click(qtbot, page.add_forward)
        try:
            qtbot.waitUntil(lambda: f"127.0.0.1:{busy}" in page.forward_error.text(), timeout=STATE_MS)
        except qtbot.TimeoutError:
            pytest.fail(f"error line {page.forward_error.text()!r}, rows {page.table.rowCount()}, "
                        f"{host.get(cfg.uuid).config.nics[0]}")
    assert "\n" not in page.forward_error.text() and "in use" in page.forward_error.text()
    _shot(details, "nic-page-taken-port")
    assert page.table.rowCount() == 1
    assert host.get(cfg.uuid).config.nics[0].forwards == [f"tcp:127.0.0.1:{port}-:80"]
    assert _fetch(f"http://127.0.0.1:{port}/", timeout=20).decode().strip() == f"VIREO-HTTPD-PAGE {mac}"
    # A free one, live: passt restarts with both rules.
    port2 = free_port()
    type_into(qtbot, page.host_port.lineEdit(), str(port2))
    type_into(qtbot, page.guest_port.lineEdit(), "80")
    click(qtbot, page.add_forward)
    qtbot.waitUntil(lambda: page.table.rowCount() == 2, timeout=STATE_MS)
    assert page.forward_error.text() == ""
    assert page.table.item(1, 0).text() == f"host 127.0.0.1:{port2} \u2192 guest :80"
    try:
        assert _fetch(f"http://127.0.0.1:{port2}/", timeout=20).decode().strip() == f"VIREO-HTTPD-PAGE {mac}"
    except OSError as exc:
        try:
            other = _fetch(f"http://127.0.0.1:{port}/", timeout=5)
        except OSError as e2:
            other = e2
        pytest.fail(f"{exc}; port {port}: {other}; {host.net_status(cfg.uuid)}; {serial_text(term)[-1500:]}")

    # 5. Traffic: the page's counters and the Performance tab's network graph grow.
    qtbot.waitUntil(lambda: page._status is not None and "tx_bytes" in page._status, timeout=STATE_MS)
    before = dict(page._status)
    _guest(bridge, cfg.uuid, "dd if=/dev/zero of=/www/zero bs=1k count=2048 2>/dev/null; echo ZERO-MADE")
    wait_serial(qtbot, term, "ZERO-MADE", STATE_MS)
    for _ in range(4):
        assert len(_fetch(f"http://127.0.0.1:{port}/zero", timeout=30)) == 2 << 20
    qtbot.waitUntil(lambda: page._status["tx_bytes"] > before["tx_bytes"] + (8 << 20), timeout=STATE_MS)
    assert page._status["rx_bytes"] > before["rx_bytes"] and "sent" in page.traffic.text()
    vm_window.show_tab("performance")
    perf = vm_window.performance
    qtbot.waitUntil(lambda: max(list(perf.net.curve.yData if perf.net.curve.yData is not None else []) or [0])
                    > 256, timeout=STATE_MS)                        # KiB/s: megabytes went by
    assert "network" in perf.summary.text()
    _shot(perf, "performance")

    # 6. passt killed: one line on the page; Reconnect brings the link back.
    vm_window.show_tab("details")
    passt, = _passt_of(cfg.uuid)
    os.kill(passt, signal.SIGKILL)
    qtbot.waitUntil(lambda: "passt was killed by signal 9" in page.status.text(), timeout=STATE_MS)
    assert page.status.text().count("Link down") == 1
    _shot(details, "nic-page-passt-killed")
    click(qtbot, page.reconnect)
    qtbot.waitUntil(lambda: page.status.text().startswith("Link up"), timeout=STATE_MS)
    assert _passt_of(cfg.uuid) not in ([], [passt])
    assert _fetch(f"http://127.0.0.1:{port2}/", timeout=20).decode().strip() == f"VIREO-HTTPD-PAGE {mac}"
    host.force_off(cfg.uuid)
    qtbot.waitUntil(lambda: vm_rows(window)["netpage"] == "Shut off", timeout=STATE_MS)
    assert page.status.text() == "Not running." and page.mac.isEnabled()


def test_a_saved_rule_on_a_taken_port_names_it_in_the_status(qtbot, app_parts, debian_kernel, initrd):  # noqa: F811
    host, bridge, window = app_parts
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        cfg = _vm(debian_kernel, initrd, "nettaken", "vireo.action=shell",
                  nics=[NicConfig(forwards=[f"tcp:127.0.0.1:{busy}-:22"])])
        vm_window, details, page = _open_page(qtbot, window, bridge, cfg)
        _start(qtbot, window, vm_window, cfg.uuid, "nettaken")
        vm_window.show_tab("details")
        qtbot.waitUntil(lambda: f"tcp port 127.0.0.1:{busy}" in page.status.text(), timeout=STATE_MS)
    assert page.status.text().count("Link down") == 1
    host.force_off(cfg.uuid)


def test_the_wizard_default_network_gets_a_dhcp_lease(qtbot, app_parts, debian_kernel, initrd) -> None:  # noqa: F811
    host, bridge, window = app_parts
    click(qtbot, toolbar_button(window, window.new_action))
    wizard = wizard_of(qtbot, window)
    qtbot.waitExposed(wizard)
    next_button = wizard.button(QWizard.WizardButton.NextButton)
    click(qtbot, wizard.source_page.kernel)
    click(qtbot, next_button)
    type_into(qtbot, wizard.boot_page.kernel, str(debian_kernel))
    type_into(qtbot, wizard.boot_page.initrd, str(initrd))
    type_into(qtbot, wizard.boot_page.cmdline, "console=ttyS0 quiet vireo.action=net")
    click(qtbot, next_button)
    type_into(qtbot, wizard.resources_page.memory.lineEdit(), "256")
    click(qtbot, next_button)
    click(qtbot, wizard.storage_page.none)
    click(qtbot, next_button)
    finish = wizard.finish_page
    assert finish.network.currentData() == "user"                  # user NAT unless changed
    assert [finish.network.itemData(i) for i in range(finish.network.count())] == ["user", "tap", "none"]
    finish.network.setCurrentIndex(finish.network.findData("tap"))
    assert finish.network_choice.tap_row.isVisible() and "TAP vtap0" in finish.summary.text()
    finish.network.setCurrentIndex(finish.network.findData("user"))
    assert not finish.network_choice.tap_row.isVisible() and "user-mode NAT" in finish.summary.text()
    type_into(qtbot, finish.name, "wiznet")
    finish.accel.setCurrentIndex(finish.accel.findData("software"))
    _shot(wizard, "wizard-network")
    with qtbot.waitSignal(wizard.created, timeout=30_000) as created:
        click(qtbot, wizard.button(QWizard.WizardButton.FinishButton))
    uuid, start = created.args
    assert start is True
    nics = host.get(uuid).config.nics
    assert [(n.backend, n.link) for n in nics] == [("user", True)] and nics[0].mac.startswith("52:54:00:")
    qtbot.waitUntil(lambda: vm_rows(window).get("wiznet") == "Running", timeout=STATE_MS)
    vm_window = window.vm_windows[uuid]
    vm_window.show_tab("serial")
    term = vm_window.console.terminal
    wait_serial(qtbot, term, "VIREO-NET-LEASE=", BOOT_MS)
    text = serial_text(term)
    assert re.search(r"VIREO-NET-LEASE=\d+\.\d+\.\d+\.\d+", text) and f"VIREO-NET-MAC={nics[0].mac}" in text, text
    host.force_off(uuid)
    time.sleep(0)


def test_a_second_card_on_tap_added_on_the_page_and_its_error_in_one_line(qtbot, app_parts, debian_kernel,  # noqa: F811
                                                                           initrd):
    """Add Card, TAP with a bridge that does not exist: saved from the page beside the first card; started, card
    2's status line says why its link is down (no such bridge as root, CAP_NET_ADMIN otherwise) while card 1 is
    up on passt, and the VM runs."""
    host, bridge, window = app_parts
    cfg = _vm(debian_kernel, initrd, "nettap", "vireo.action=shell", nics=[NicConfig()])
    vm_window, details, page = _open_page(qtbot, window, bridge, cfg)
    first_mac = host.get(cfg.uuid).config.nics[0].mac
    assert [page.card.itemText(i) for i in range(page.card.count())] == [f"1 \u00b7 {first_mac}"]
    click(qtbot, page.add_card)
    assert page.card.currentText() == "2 \u00b7 new card" and page.mac.text() == ""
    type_into(qtbot, page.mac, first_mac)                  # card 1's address: refused on the page
    assert "card 1's too" in page.mac_error.text() and not details.apply_button.isEnabled()
    click(qtbot, page.new_mac)
    assert page.mac_error.text() == "" and page.mac.text() != first_mac
    assert not page.tap_row.isVisible()
    page.backend.setCurrentIndex(page.backend.findData("tap"))
    assert page.tap_row.isVisible() and not page.forwards_box.isEnabled()
    assert "TAP" in details.apply_button.toolTip() and not details.apply_button.isEnabled()    # no name yet
    type_into(qtbot, page.tap, "vtapgui9")
    type_into(qtbot, page.bridge_name, "nosuchbr9")
    assert page.mac_error.text() == "" and details.apply_button.isEnabled()
    click(qtbot, details.apply_button)
    qtbot.waitUntil(lambda: len(host.get(cfg.uuid).config.nics) == 2, timeout=STATE_MS)
    first, card = host.get(cfg.uuid).config.nics
    assert (first.backend, first.mac) == ("user", first_mac)
    assert (card.backend, card.tap, card.bridge, card.forwards) == ("tap", "vtapgui9", "nosuchbr9", [])
    assert card.mac.startswith("52:54:00:") and card.mac != first_mac
    qtbot.waitUntil(lambda: page.card.count() == 2 and page.card.currentText() == f"2 \u00b7 {card.mac}",
                    timeout=15_000)
    _start(qtbot, window, vm_window, cfg.uuid, "nettap")
    vm_window.show_tab("details")
    qtbot.waitUntil(lambda: "Link down: tap vtapgui9" in page.status.text(), timeout=STATE_MS)
    assert "bridge nosuchbr9 does not exist" in page.status.text() or "CAP_NET_ADMIN" in page.status.text()
    assert not page.add_card.isEnabled() and not page.remove_card.isEnabled()
    _shot(details, "nic-page-tap-error")
    page.card.setCurrentIndex(0)
    qtbot.waitUntil(lambda: page.status.text().startswith("Link up: passt"), timeout=STATE_MS)
    assert page.backend.currentData() == "user" and page.mac.text() == first_mac
    host.force_off(cfg.uuid)
    qtbot.waitUntil(lambda: page.remove_card.isEnabled(), timeout=STATE_MS)
    click(qtbot, page.remove_card)                       # card 1 goes; card 2 (TAP) is the only one
    click(qtbot, details.apply_button)
    qtbot.waitUntil(lambda: [n.tap for n in host.get(cfg.uuid).config.nics] == ["vtapgui9"], timeout=STATE_MS)
