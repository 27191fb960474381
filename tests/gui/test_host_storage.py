"""Host Details' storage folder (issue 17, "Host details"), through the real widgets (pytest-qt, offscreen) against
the sandboxed local service: the images in the host's images folder with format, sizes and the VM that needs
each; an image a VM lists, or a qcow2 overlay reads as its backing file, cannot be deleted (the button is off and
the host refuses it too); a free one is deleted after the question, New Image… makes one there, and Resize…
grows one (never shrinks it)."""
from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess

import pytest

if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

pytest.importorskip("pytestqt")

from PyQt6.QtCore import Qt  # noqa: E402
from PyQt6.QtWidgets import QApplication, QDialogButtonBox  # noqa: E402

from app.ui.context_menus import menu_for  # noqa: E402
from app.ui.host_details import HostDetailsDialog  # noqa: E402
from core.config import ConfigStore, DiskConfig, images_dir  # noqa: E402
from core.host import HostError  # noqa: E402
from core.storage import create_image  # noqa: E402
from tests.gui.test_context_menus import _action  # noqa: E402
from tests.gui.test_gui import app_parts, define, reload, xdg  # noqa: E402,F401
from tests.gui.test_gui_journey import click  # noqa: E402
from tests.helpers.dialogs import answer_question  # noqa: E402

TIMEOUT_MS = 10_000
GIB = 1024 ** 3


def _names(view) -> list[list[str]]:
    table = view.table
    return [[table.item(r, c).text() for c in range(table.columnCount())] for r in range(table.rowCount())]


def _select(qtbot, view, name: str) -> None:
    row = [r[0] for r in _names(view)].index(name)
    rect = view.table.visualItemRect(view.table.item(row, 0))
    qtbot.mouseClick(view.table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())


def test_storage_lists_images_keeps_used_ones_and_deletes_and_creates(qtbot, app_parts) -> None:  # noqa: F811
    host, bridge, window = app_parts
    folder = images_dir()
    folder.mkdir(parents=True, exist_ok=True)
    base, overlay, spare = folder / "base.qcow2", folder / "web.qcow2", folder / "spare.img"
    create_image(str(base), "qcow2", 2 * GIB)
    create_image(str(overlay), "qcow2", 2 * GIB, backing_file=str(base), backing_format="qcow2")
    with open(spare, "wb") as f:
        f.truncate(GIB)
    cfg = define("web")
    cfg.disks = [DiskConfig(path=str(overlay), format="qcow2")]
    ConfigStore().save(cfg)
    reload(qtbot, bridge)

    _action(menu_for(window, window.host_items[0]), "Host Details…").trigger()
    (dialog,) = [w for w in QApplication.topLevelWidgets() if isinstance(w, HostDetailsDialog) and w.isVisible()]
    view = dialog.storage
    assert str(folder) in view.title.text()
    qtbot.waitUntil(lambda: view.table.rowCount() == 3, timeout=TIMEOUT_MS)
    assert _names(view) == [
        ["base.qcow2", "qcow2", "2.0 GiB", _names(view)[0][3], f"backing file of {overlay} (VM 'web')"],
        ["spare.img", "raw", "1.0 GiB", _names(view)[1][3], "—"],
        ["web.qcow2", "qcow2", "2.0 GiB", _names(view)[2][3], "used by VM 'web'"],
    ]

    # The images a VM needs cannot be picked for deletion, and the host refuses them whatever a client asks.
    for name in ("web.qcow2", "base.qcow2"):
        _select(qtbot, view, name)
        assert not view.delete_button.isEnabled() and view.delete_button.toolTip().startswith("Cannot delete: ")
    with pytest.raises(HostError, match=r"is used by VM 'web': remove it from that VM first"):
        host.delete_image(str(overlay))
    with pytest.raises(HostError, match=r"is backing file of .*web.qcow2 \(VM 'web'\)"):
        host.delete_image(str(base))

    # A free image: Delete… asks (Cancel keeps it), then Delete removes it.
    _select(qtbot, view, "spare.img")
    assert view.delete_button.isEnabled()
    asked: list[str] = []
    answer_question(qtbot, "Cancel", asked)
    click(qtbot, view.delete_button)
    assert asked == ["Delete the disk image spare.img? Its data is lost; this cannot be undone."]
    assert spare.exists()
    answer_question(qtbot, "Delete", asked)
    click(qtbot, view.delete_button)
    qtbot.waitUntil(lambda: not spare.exists() and view.table.rowCount() == 2, timeout=TIMEOUT_MS)
    assert view.status.text() == "2 images"

    # New Image…: a name already there is refused; another is made in the folder.
    click(qtbot, view.new_button)
    new = view.new_dialog
    qtbot.waitExposed(new)
    ok = new.buttons.button(QDialogButtonBox.StandardButton.Ok)
    qtbot.keyClicks(new.name, "web")
    assert new.problem.text() == f"web.qcow2 already exists in {folder}." and not ok.isEnabled()
    new.name.selectAll()
    qtbot.keyClicks(new.name, "scratch")
    new.size.lineEdit().selectAll()
    qtbot.keyClicks(new.size.lineEdit(), "3")
    assert ok.isEnabled()
    click(qtbot, ok)
    qtbot.waitUntil(lambda: view.table.rowCount() == 3, timeout=TIMEOUT_MS)
    assert ["scratch.qcow2", "qcow2", "3.0 GiB"] == _names(view)[1][:3]
    assert (folder / "scratch.qcow2").is_file()

    # Resize…: the least it offers is the current size; 5 GiB is what qemu-img would read back.
    _select(qtbot, view, "scratch.qcow2")
    click(qtbot, view.resize_button)
    resize = view.resize_dialog
    qtbot.waitExposed(resize)
    ok = resize.buttons.button(QDialogButtonBox.StandardButton.Ok)
    resize.size.lineEdit().selectAll()
    qtbot.keyClicks(resize.size.lineEdit(), "1")
    assert resize.size.error.text() == "New size: 1 GiB is less than 3 GiB." and not ok.isEnabled()
    resize.size.lineEdit().selectAll()
    qtbot.keyClicks(resize.size.lineEdit(), "5")
    click(qtbot, ok)
    qtbot.waitUntil(lambda: _names(view)[1][2] == "5.0 GiB", timeout=TIMEOUT_MS)
    assert view.status.text() == "3 images"
    qemu_img = shutil.which("qemu-img")
    if qemu_img is None:
        assert not os.environ.get("CI"), "qemu-img is missing (Debian's qemu-utils)"
    else:
        facts = json.loads(subprocess.run([qemu_img, "info", "--output=json", str(folder / "scratch.qcow2")],
                                          check=True, capture_output=True, text=True).stdout)
        assert (facts["format"], facts["virtual-size"]) == ("qcow2", 5 * GIB)
        subprocess.run([qemu_img, "check", str(folder / "scratch.qcow2")], check=True, capture_output=True)
    with pytest.raises(HostError, match="Vireo only grows images"):
        host.resize_image(str(folder / "scratch.qcow2"), GIB)
    dialog.close()


def _fstype(path) -> str:
    """The type of the file system holding `path` (the longest mount point above it in /proc/mounts)."""
    best, kind = "", ""
    with open("/proc/mounts") as f:
        for line in f:
            _dev, mount, fstype = line.split()[:3]
            if (str(path) + "/").startswith(mount.rstrip("/") + "/") and len(mount) >= len(best):
                best, kind = mount, fstype
    return kind


def test_host_details_graph_the_whole_hosts_load(qtbot, app_parts) -> None:  # noqa: F811
    """Host Details' graphs (issue 17, "Host details"): CPU, memory, disk and network of the whole host, sampled
    from the service on a worker; a disk write of 64 MiB on the host shows in the disk graph."""
    host, bridge, window = app_parts
    _action(menu_for(window, window.host_items[0]), "Host Details…").trigger()
    (dialog,) = [w for w in QApplication.topLevelWidgets() if isinstance(w, HostDetailsDialog) and w.isVisible()]
    view = dialog.performance
    assert view.timer.isActive() and view.timer.interval() == 1000
    qtbot.waitUntil(lambda: len(view.points) >= 1, timeout=TIMEOUT_MS)
    # Written and flushed to the disk during the next interval: the host's own write counters grow by it.
    target = images_dir()
    target.mkdir(parents=True, exist_ok=True)
    with open(target / "load.bin", "wb") as f:
        f.write(os.urandom(64 << 20))
        f.flush()
        os.fsync(f.fileno())
    seen = len(view.points)
    qtbot.waitUntil(lambda: len(view.points) >= seen + 2, timeout=TIMEOUT_MS)
    cpu, mem, _disk, net = view.points[-1][1]
    total = bridge.host_info.memory_mib
    assert 0 <= cpu <= 100 and 0 < mem < total and net >= 0
    if _fstype(target) not in ("tmpfs", "ramfs"):       # a file system on a disk: the write reached one
        # The rates integrated over the intervals since the first point (sampled before the write): the bytes the
        # host wrote, however the write and its flush fell across the sampling intervals of a slow disk.
        pts = list(view.points)
        written_kib = sum(b[1][2] * (b[0] - a[0]) for a, b in itertools.pairwise(pts))
        assert written_kib >= 48 * 1024, pts
    xs, ys = view.mem.curve.getData()
    assert len(xs) == len(view.points) and ys[-1] == mem
    assert f"of {total} MiB" in view.summary.text()
    dialog.close()
    assert not view.timer.isActive()
    os.unlink(target / "load.bin")
