"""The New VM wizard warns when an imported disk image is one another VM on the same host lists (issue 17): an
orange line under the image's field names that VM — "Also used by VM 'web': two running VMs writing one image
corrupt it" — and the Finish page's summary repeats it; it blocks nothing, as virt-manager's warning does not, and
the VM is defined with the image. A fresh image gets no line; paths are compared normalised. Driven through the
real widgets (pytest-qt, offscreen) against the sandboxed local service, with the bridge's VM list re-read after the
test writes 'web's definition."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

pytest.importorskip("pytestqt")

from PyQt6.QtWidgets import QWizard  # noqa: E402

from app.ui.file_check import ORANGE  # noqa: E402
from core.config import DiskConfig  # noqa: E402
from tests.gui.test_gui import app_parts, define, reload, xdg  # noqa: E402,F401
from tests.gui.test_gui_journey import click, type_into  # noqa: E402
from tests.helpers.wizard import wizard_of

TIMEOUT_MS = 10_000
WARNING = "Also used by VM 'web': two running VMs writing one image corrupt it"


def test_import_warns_when_another_vm_lists_the_image(qtbot, app_parts, tmp_path: Path) -> None:  # noqa: F811
    host, bridge, window = app_parts
    shared, fresh = tmp_path / "web.img", tmp_path / "fresh.img"
    for image in (shared, fresh):
        image.write_bytes(bytes(1 << 20))
    define("web", disks=[DiskConfig(path=str(shared))])
    reload(qtbot, bridge)
    window.new_vm()
    wizard = wizard_of(qtbot, window)
    qtbot.waitExposed(wizard)
    next_button = wizard.button(QWizard.WizardButton.NextButton)
    click(qtbot, wizard.source_page.disk)
    click(qtbot, next_button)
    page = wizard.boot_page
    type_into(qtbot, page.disk, str(fresh))
    assert page.shared.text() == ""
    # Spelled another way, the same file: the paths are compared normalised.
    type_into(qtbot, page.disk, f"{tmp_path}/./web.img")
    assert page.shared.text() == WARNING
    assert page.shared.isVisible() and page.shared.styleSheet() == ORANGE
    # The host's check answers, in grey: the image itself is fine, and the warning does not block Next.
    qtbot.waitUntil(lambda: not page.disk_check.pending, timeout=TIMEOUT_MS)
    assert page.disk_check.note.text() == "raw disk image, 1 MiB" and not page.disk_check.problem
    assert page.shared.text() == WARNING and next_button.isEnabled()
    click(qtbot, next_button)
    click(qtbot, next_button)
    click(qtbot, next_button)
    finish = wizard.finish_page
    assert wizard.currentPage() is finish
    assert WARNING in finish.summary.text() and finish.error.text() == ""
    type_into(qtbot, finish.name, "web-copy")
    click(qtbot, finish.customize)                   # define it, do not start it
    with qtbot.waitSignal(wizard.created, timeout=TIMEOUT_MS) as created:
        click(qtbot, wizard.button(QWizard.WizardButton.FinishButton))
    uuid, _ = created.args
    assert [d.path for d in host.get(uuid).config.disks] == [f"{tmp_path}/./web.img"]


def test_import_of_a_fresh_image_has_no_warning(qtbot, app_parts, tmp_path: Path) -> None:  # noqa: F811
    host, bridge, window = app_parts
    shared, fresh = tmp_path / "web.img", tmp_path / "fresh.img"
    for image in (shared, fresh):
        image.write_bytes(bytes(1 << 20))
    define("web", disks=[DiskConfig(path=str(shared))])
    reload(qtbot, bridge)
    window.new_vm()
    wizard = wizard_of(qtbot, window)
    qtbot.waitExposed(wizard)
    click(qtbot, wizard.source_page.disk)
    wizard.next()
    page = wizard.boot_page
    type_into(qtbot, page.disk, str(fresh))
    qtbot.waitUntil(lambda: not page.disk_check.pending, timeout=TIMEOUT_MS)
    assert page.shared.text() == ""
    for _ in range(3):
        click(qtbot, wizard.button(QWizard.WizardButton.NextButton))
    summary = wizard.finish_page.summary.text()
    assert f"existing raw image {fresh}" in summary and "Also used by" not in summary
