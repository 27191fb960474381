"""OS detection in the New VM wizard (issue 17), through the real widgets (pytest-qt, offscreen) against the
sandboxed local service and Debian's osinfo-db: an installer ISO whose volume ID the host reads ("Debian 11.7.0
amd64 n", Debian's netinst naming) is named Debian 11, and the memory, CPUs and disk size osinfo-db recommends
for it are set on the next pages; choosing another system from the list (typing its name, Enter) sets that one's;
an ISO osinfo-db does not know is said so, and the wizard's defaults stay; that line goes when the field names a file
that is no ISO."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

pytest.importorskip("pytestqt")

from PyQt6.QtCore import Qt  # noqa: E402
from PyQt6.QtWidgets import QWizard  # noqa: E402

from app.osinfo import OSINFO_DIR, database  # noqa: E402
from tests.gui.test_gui import app_parts, xdg  # noqa: E402,F401
from tests.gui.test_gui_install import _open  # noqa: E402
from tests.gui.test_gui_journey import type_into  # noqa: E402
from tests.helpers.iso import write_iso  # noqa: E402
from tests.helpers.runner import in_ci  # noqa: E402

TIMEOUT_MS = 10_000


@pytest.fixture
def osinfo():
    if not (OSINFO_DIR / "os").is_dir():
        reason = f"{OSINFO_DIR} is missing: install Debian's osinfo-db (./run-tests does)"
        if in_ci():
            pytest.fail(f"CI: {reason}", pytrace=False)
        pytest.skip(reason)
    return {entry.name: entry for entry in database()}


def test_the_isos_system_is_detected_and_its_resources_set(qtbot, app_parts, tmp_path: Path, osinfo) -> None:  # noqa: F811
    host, bridge, window = app_parts
    debian, fedora = osinfo["Debian 11"], osinfo["Fedora Linux 37"]
    assert (debian.ram_mib, debian.cpus, debian.storage_gib) == (1024, 1, 20.0)
    assert (fedora.ram_mib, fedora.storage_gib) == (2048, 20.0)
    iso = write_iso(tmp_path / "debian-11.7.0-amd64-netinst.iso", "Debian 11.7.0 amd64 n", size=3 << 20)
    wizard, next_button = _open(qtbot, window)
    next_button.click()                         # "Install from an ISO image", the first way
    page = wizard.boot_page
    choice = page.os_choice
    assert choice.combo.isVisible() and choice.combo.currentText() == "Generic (not detected)"
    qtbot.waitUntil(lambda: len(choice.entries) > 100, timeout=TIMEOUT_MS)       # read on a worker
    # A small host limit must not be exceeded: the recommendation is taken within it.
    wizard.resources_page.memory.setValue(256)
    type_into(qtbot, page.iso, str(iso))
    qtbot.waitUntil(lambda: choice.combo.currentText() == "Debian 11", timeout=TIMEOUT_MS)
    assert choice.note.text() == ("Detected from the disc's volume ID “Debian 11.7.0 amd64 n”; change it if it is "
                                  "wrong.")
    assert wizard.resources_page.memory.value() == min(1024, bridge.host_info.memory_mib)
    assert wizard.resources_page.cpus.value() == 1
    assert wizard.storage_page.size.value() == 20.0

    # Another system, chosen by typing its name in the list: its recommendations.
    edit = choice.combo.lineEdit()
    edit.setFocus()
    edit.selectAll()
    qtbot.keyClicks(edit, "Fedora Linux 37")
    qtbot.keyClick(edit, Qt.Key.Key_Return)
    assert choice.combo.currentText() == "Fedora Linux 37"
    assert wizard.resources_page.memory.value() == min(2048, bridge.host_info.memory_mib)
    for _ in range(3):
        next_button.click()
    assert wizard.currentPage() is wizard.finish_page
    assert "Operating system</td><td>Fedora Linux 37" in wizard.finish_page.summary.text()
    wizard.button(QWizard.WizardButton.CancelButton).click()


def test_an_unknown_disc_is_said_so_and_the_defaults_stay(qtbot, app_parts, tmp_path: Path, osinfo) -> None:  # noqa: F811
    host, bridge, window = app_parts
    iso = write_iso(tmp_path / "homemade.iso", "HOMEMADE LIVE", size=3 << 20)
    wizard, next_button = _open(qtbot, window)
    next_button.click()
    choice = wizard.boot_page.os_choice
    qtbot.waitUntil(lambda: len(choice.entries) > 100, timeout=TIMEOUT_MS)
    memory = wizard.resources_page.memory.value()
    type_into(qtbot, wizard.boot_page.iso, str(iso))
    qtbot.waitUntil(lambda: "not in osinfo-db" in choice.note.text(), timeout=TIMEOUT_MS)
    assert choice.note.text() == ("The disc's volume ID “HOMEMADE LIVE” is not in osinfo-db: choose its system, "
                                  "or keep Generic.")
    assert choice.combo.currentText() == "Generic (not detected)"
    assert wizard.resources_page.memory.value() == memory
    # Another file that is no ISO: the line about the disc goes with it (it named the previous file).
    readme = tmp_path / "README"
    readme.write_text("not a disc\n")
    type_into(qtbot, wizard.boot_page.iso, str(readme))
    qtbot.waitUntil(lambda: "text file" in wizard.boot_page.iso_check.note.text(), timeout=TIMEOUT_MS)
    assert choice.note.text() == "" and not choice.note.isVisible()
    wizard.button(QWizard.WizardButton.CancelButton).click()
