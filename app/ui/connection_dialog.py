"""The Add Connection dialog (host, port, user, how to authenticate) and QtPrompter, which asks the SSH layer's
questions — an unknown host key, a key's passphrase, a password or keyboard-interactive prompt — in dialogs.

The SSH connection is made on a worker thread (the GUI never waits on the network), so QtPrompter hands each
question to the GUI thread through a blocking queued signal and returns the answer to the worker. Answers are
used for that one attempt and never stored; what the dialog remembers (QSettings) is only host, port, user, key
file path, authentication kind and the remote interpreter.
"""
from __future__ import annotations

import getpass

from PyQt6.QtCore import QObject, Qt, QThread, pyqtSignal, pyqtSlot
from PyQt6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.widgets.range_spin import RangeSpinBox
from app.widgets.text import as_sentence
from core.connect import Check, SshTarget, is_libvirt_uri

LIBVIRT_CHOICE = "libvirt (qemu:///session, qemu:///system, qemu+ssh://…)"
SSH_NOTE = ("The host needs only sshd and Python 3: Vireo installs its agent there on first connect. "
            "Passwords and passphrases are asked for when needed and never stored.")
LIBVIRT_NOTE = ("The domains of a libvirt host, listed beside Vireo's: start, shut down, pause, and their VNC "
                "and serial consoles. Needs libvirt-python (docs/libvirt.md); qemu+ssh:// uses your SSH keys.")
AUTH_CHOICES = (("auto", "Automatic (SSH agent, keys, then password)"), ("agent", "SSH agent"),
                ("key", "Key file"), ("password", "Password"))


class AddConnectionDialog(QDialog):
    def __init__(self, parent: QWidget | None = None, target: SshTarget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Add Connection")
        self.setObjectName("addConnectionDialog")
        self.host_edit = QLineEdit(self)
        self.host_edit.setObjectName("hostEdit")
        self.host_edit.setPlaceholderText("host name or address")
        # An out-of-range port stays as typed, with the range, and Connect stays disabled (issue 17, defect 10).
        self.port_spin = RangeSpinBox("Port", self)
        self.port_spin.setObjectName("portSpin")
        self.port_spin.setAllowedRange(1, 65535)
        self.port_spin.setValue(22)
        self.user_edit = QLineEdit(getpass.getuser(), self)
        self.user_edit.setObjectName("userEdit")
        self.auth_combo = QComboBox(self)
        self.auth_combo.setObjectName("authCombo")
        for value, text in AUTH_CHOICES:
            self.auth_combo.addItem(text, value)
        self.key_edit = QLineEdit(self)
        self.key_edit.setObjectName("keyEdit")
        self.key_edit.setPlaceholderText("~/.ssh/id_ed25519 (empty: the agent's and the default keys)")
        browse = QPushButton("Browse…", self)
        browse.clicked.connect(self._browse)
        # The row is a widget, not a bare layout: QFormLayout gives a label a buddy only for a widget field, and a
        # label without a buddy paints "&Key file:" with its ampersand.
        key_row = QWidget(self)
        key_lay = QHBoxLayout(key_row)
        key_lay.setContentsMargins(0, 0, 0, 0)
        key_lay.addWidget(self.key_edit, 1)
        key_lay.addWidget(browse)
        self.python_edit = QLineEdit("python3", self)
        self.python_edit.setObjectName("pythonEdit")
        self.python_edit.setToolTip("The interpreter the Vireo agent runs on, on the remote host")
        self.unicorn_check = QCheckBox("Offer to copy the software CPU (unicorn) there if the host lacks it", self)
        self.unicorn_check.setObjectName("unicornCheck")
        self.unicorn_check.setToolTip("Asked once for this host (the answer is kept); unchecked, a host without "
                                      "unicorn runs VMs with KVM only")
        self.unicorn_check.setChecked(True)
        # libvirt connections (app/ui/libvirt_connections.py) take only a URI; the SSH rows hide for them.
        self.kind_combo = QComboBox(self)
        self.kind_combo.setObjectName("kindCombo")
        self.kind_combo.addItem("Vireo over SSH", "ssh")
        self.kind_combo.addItem(LIBVIRT_CHOICE, "libvirt")
        self.uri_edit = QLineEdit("qemu:///session", self)
        self.uri_edit.setObjectName("uriEdit")
        self.uri_edit.setToolTip("A libvirt connection URI: qemu:///session (your user's VMs), qemu:///system, "
                                 "qemu+ssh://user@host/system")
        form = QFormLayout()
        self.form = form
        form.addRow("&Type:", self.kind_combo)
        form.addRow("U&RI:", self.uri_edit)
        form.addRow("&Host:", self.host_edit)
        form.addRow("&Port:", self.port_spin)
        form.addRow("", self.port_spin.error)
        form.addRow("&User:", self.user_edit)
        form.addRow("&Authentication:", self.auth_combo)
        form.addRow("&Key file:", key_row)
        form.labelForField(key_row).setBuddy(self.key_edit)    # Alt+K goes to the path, not the row
        form.addRow("P&ython:", self.python_edit)
        form.addRow("", self.unicorn_check)
        note = QLabel(SSH_NOTE, self)
        self.note = note
        note.setWordWrap(True)
        note.setStyleSheet("color: #666;")
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel,
                                        self)
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Connect")
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(note)
        lay.addWidget(self.buttons)
        self.host_edit.textChanged.connect(self._validate)
        self.uri_edit.textChanged.connect(self._validate)
        self.kind_combo.currentIndexChanged.connect(self._kind_changed)
        self.auth_combo.currentIndexChanged.connect(self._validate)
        self.port_spin.problemChanged.connect(self._validate)
        if target is not None:
            self.set_target(target)
        self._kind_changed()

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "SSH private key", self.key_edit.text() or "~/.ssh")
        if path:
            self.key_edit.setText(path)

    def kind(self) -> str:
        """"ssh" (a Vireo host over SSH: target()) or "libvirt" (a libvirt URI: uri())."""
        return self.kind_combo.currentData()

    def uri(self) -> str:
        return self.uri_edit.text().strip()

    def _kind_changed(self) -> None:
        libvirt = self.kind() == "libvirt"
        for row in range(self.form.rowCount()):
            field = self.form.itemAt(row, QFormLayout.ItemRole.FieldRole)
            widget = field.widget() if field is not None else None
            if widget is not self.kind_combo:
                self.form.setRowVisible(row, (widget is self.uri_edit) == libvirt)
        self.port_spin.error.setVisible(not libvirt and bool(self.port_spin.problem()))
        self.note.setText(LIBVIRT_NOTE if libvirt else SSH_NOTE)
        self._validate()
        self.adjustSize()          # no blank space where the hidden rows were

    def _validate(self) -> None:
        if self.kind() == "libvirt":
            self.buttons.button(QDialogButtonBox.StandardButton.Ok).setEnabled(is_libvirt_uri(self.uri()))
            return
        ok = bool(self.host_edit.text().strip()) and not any(c.isspace() for c in self.host_edit.text().strip()) \
            and not self.port_spin.problem()
        self.key_edit.setEnabled(self.auth_combo.currentData() in ("auto", "key"))
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setEnabled(ok)

    def set_target(self, target: SshTarget) -> None:
        self.host_edit.setText(target.host)
        self.port_spin.setValue(target.port)
        self.user_edit.setText(target.user)
        self.auth_combo.setCurrentIndex(max(0, self.auth_combo.findData(target.auth)))
        self.key_edit.setText(target.identity)
        self.python_edit.setText(target.python)

    def target(self) -> SshTarget:
        return SshTarget(host=self.host_edit.text().strip(), port=self.port_spin.value(),
                         user=self.user_edit.text().strip() or getpass.getuser(),
                         identity=self.key_edit.text().strip(), auth=self.auth_combo.currentData(),
                         python=self.python_edit.text().strip() or "python3")

    @property
    def copy_unicorn(self) -> bool | None:
        """None: ask once whether to copy unicorn (the default); False: never copy it."""
        return None if self.unicorn_check.isChecked() else False


class _Question:
    def __init__(self, kind: str, target: SshTarget, text: str, detail: str = "", echo: bool = False) -> None:
        self.kind, self.target, self.text, self.detail, self.echo = kind, target, text, detail, echo
        self.answer: object = None


class QtPrompter(QObject):
    """core.remote.ssh.Prompter answered with dialogs on the GUI thread (callable from any thread)."""

    _ask = pyqtSignal(object)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__()
        self.parent_widget = parent
        self._ask.connect(self._answer, Qt.ConnectionType.BlockingQueuedConnection)

    def _question(self, question: _Question) -> object:
        if QThread.currentThread() is self.thread():
            self._answer(question)
        else:
            self._ask.emit(question)     # blocks this worker until the GUI thread has the answer
        return question.answer

    @pyqtSlot(object)
    def _answer(self, q: _Question) -> None:
        if q.kind == "hostkey":
            box = QMessageBox(QMessageBox.Icon.Question, "Unknown host key",
                              as_sentence(q.text, f"Connecting to {q.target.host}"), parent=self.parent_widget)
            box.setInformativeText("Trust this host and record its key in your known_hosts file? Compare the "
                                   "fingerprint with the one the host's administrator gives (ssh-keygen -lf "
                                   "/etc/ssh/ssh_host_ed25519_key.pub on the host).")
            box.setObjectName("hostKeyQuestion")
            box.setStandardButtons(QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No)
            box.setDefaultButton(QMessageBox.StandardButton.No)
            q.answer = box.exec() == QMessageBox.StandardButton.Yes
            return
        if q.kind == "unicorn":
            box = QMessageBox(QMessageBox.Icon.Question, "Software CPU", f"Copy the software CPU to "
                              f"{q.target.label}?", parent=self.parent_widget)
            box.setInformativeText(f"{q.text} Without it, VMs there run with KVM only. Asked once for this host.")
            box.setObjectName("unicornQuestion")
            box.setStandardButtons(QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No)
            box.setDefaultButton(QMessageBox.StandardButton.Yes)
            q.answer = box.exec() == QMessageBox.StandardButton.Yes
            return
        mode = QLineEdit.EchoMode.Normal if q.echo else QLineEdit.EchoMode.Password
        text, ok = QInputDialog.getText(self.parent_widget, f"Connecting to {q.target.label}", q.text, mode)
        q.answer = text if ok else None

    def confirm_copy_unicorn(self, target: SshTarget, size: int) -> bool:
        text = (f"{target.label} has no unicorn, the module Vireo's software CPU runs on; this computer's "
                f"({size / 1e6:.0f} MB) can run there.")
        return bool(self._question(_Question("unicorn", target, text)))

    def confirm_host_key(self, target: SshTarget, check: Check, key_type: str, key_fingerprint: str) -> bool:
        text = check.describe(target.host, target.port, key_type, key_fingerprint)
        return bool(self._question(_Question("hostkey", target, text)))

    def secret(self, target: SshTarget, prompt: str, echo: bool = False) -> str | None:
        answer = self._question(_Question("secret", target, prompt, echo=echo))
        return answer if isinstance(answer, str) else None
