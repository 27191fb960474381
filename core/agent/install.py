"""Getting the agent onto a host, over an authenticated SSH transport (client side; paramiko objects passed in).

1. Probe (probe.py's source piped to the remote `python3 -`): the interpreter, its ABI, the per-user data
   directory, the engine versions installed and which third-party modules it can import.
2. When this engine's version is not installed, upload engine-<version>.tar.gz over SFTP into the data directory
   and unpack it (unpack.py, the same way) into agent/<version>/ — versioned, so hosts keep working engines of
   other client versions side by side; versions no client has used for PRUNE_DAYS days, and that nothing runs,
   are removed (prune.py).
3. numpy is required; psutil optional (the agent reads /proc without it); unicorn gives the software CPU. A
   module the remote interpreter lacks is copied from this computer's when the ABI allows (bundle.py) — numpy
   and psutil always, unicorn by default after asking once (the client keeps the answer, core/remote/choices.py),
   since it is large and KVM needs none of it. What cannot be copied
   is reported: numpy missing stops the connection with what to install; unicorn missing means KVM only.

Returns an InstallReport the host row and the CLI show.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from core.agent import bundle
from core.agent.version import engine_version
from core.host.api import HostError

COMMAND_TIMEOUT = 120.0
PRUNE_DAYS = 30         # an engine version no client has used for this long, and nothing runs, is removed
log = logging.getLogger(__name__)
Progress = Callable[[str, int, int], None]      # (what, bytes done, bytes total)


class InstallError(HostError):
    """The agent cannot run on the host; one line saying what to do."""


@dataclass
class InstallReport:
    python: str = ""
    abi: str = ""
    agent_dir: str = ""
    deps_dir: str = ""
    uploaded: list[str] = field(default_factory=list)      # "engine 0.1.0+…", "numpy 2.4.6", …
    upload_seconds: float = 0.0
    upload_bytes: int = 0
    software_cpu: bool = False
    software_cpu_reason: str = ""
    kvm: str = ""
    notes: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)        # engine versions removed as unused (prune.py)


def run_command(transport, command: str, stdin: bytes = b"", timeout: float = COMMAND_TIMEOUT) -> tuple[int, bytes,
                                                                                                          bytes]:
    """Run `command` on the host (through the user's shell, as ssh does); (exit status, stdout, stderr)."""
    chan = transport.open_session(timeout=timeout)
    try:
        chan.settimeout(timeout)
        chan.exec_command(command)
        if stdin:
            chan.sendall(stdin)
        chan.shutdown_write()
        out, err = bytearray(), bytearray()
        deadline = time.monotonic() + timeout
        while not (chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready()):
            if time.monotonic() > deadline:
                raise InstallError(f"{command.split()[0]} on the host did not finish within {timeout:.0f} s")
            if chan.recv_ready():
                out += chan.recv(65536)
            elif chan.recv_stderr_ready():
                err += chan.recv_stderr(65536)
            else:
                chan.status_event.wait(0.01)
        return chan.recv_exit_status(), bytes(out), bytes(err)
    finally:
        chan.close()


def _script(name: str) -> bytes:
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), name), "rb") as f:
        return f.read()


def probe(transport, python: str) -> dict:
    status, out, err = run_command(transport, f"{shlex.quote(python)} -", _script("probe.py"))
    if status == 127 or b"not found" in err:
        raise InstallError(f"the host has no {python}: install Python 3 there (e.g. apt install python3)")
    if status != 0:
        raise InstallError(f"probing the host's {python} failed (status {status}): "
                           f"{err.decode(errors='replace').strip().splitlines()[-1:]}")
    try:
        facts = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise InstallError(f"probing the host's {python} printed no result: {err.decode(errors='replace')[:200]}") \
            from None
    if not isinstance(facts, dict) or not isinstance(facts.get("modules"), dict):
        raise InstallError("probing the host gave an unexpected answer")
    major_minor = tuple(int(x) for x in str(facts.get("python", "0.0")).split(".")[:2])
    if major_minor < (3, 11):
        raise InstallError(f"the host's {python} is {facts.get('python')}: the agent needs Python 3.11 or newer")
    return facts


def _sftp_mkdirs(sftp, path: str) -> None:
    parts = path.strip("/").split("/")
    current = ""
    for part in parts:
        current += "/" + part
        try:
            sftp.stat(current)
        except FileNotFoundError:
            sftp.mkdir(current, 0o700)


def upload_and_unpack(transport, python: str, data_dir: str, local: Path, dest: str, what: str,
                      progress: Progress | None = None) -> int:
    """Send one bundle and unpack it into `dest` on the host; returns the bytes sent."""
    sftp = transport.open_sftp_client()
    try:
        _sftp_mkdirs(sftp, data_dir)
        remote = f"{data_dir}/.upload-{secrets.token_hex(6)}.tar.gz"
        size = local.stat().st_size
        with open(local, "rb") as f:
            sftp.putfo(f, remote, file_size=size, confirm=True,
                       callback=(lambda done, total: progress(what, done, total)) if progress else None)
    finally:
        sftp.close()
    status, _, err = run_command(transport, f"{shlex.quote(python)} - {shlex.quote(remote)} {shlex.quote(dest)}",
                                 _script("unpack.py"))
    if status != 0:
        raise InstallError(f"unpacking {what} on the host failed: "
                           f"{err.decode(errors='replace').strip().splitlines()[-1:] or status}")
    return size


def ensure_agent(transport, python: str = "python3", copy_unicorn: bool | Callable[[int], bool] = False,
                 progress: Progress | None = None) -> InstallReport:
    """Probe the host and install what is missing; raises InstallError when the agent cannot run there.
    `copy_unicorn`: copy this computer's unicorn when the host lacks it (True), not (False), or ask — a function
    given the bytes to send, called only when the host lacks unicorn and this computer's can run there."""
    facts = probe(transport, python)
    version = engine_version()
    data_dir = str(facts["data_dir"])
    report = InstallReport(python=f"{facts.get('executable', python)} {facts.get('python')}",
                           abi=str(facts.get("abi", "")), agent_dir=f"{data_dir}/agent/{version}",
                           deps_dir=str(facts.get("deps_dir", "")), kvm=str(facts.get("kvm", "")))
    started = time.monotonic()
    if version not in facts.get("agents", []):
        report.upload_bytes += upload_and_unpack(transport, python, data_dir, bundle.engine_bundle(),
                                                 report.agent_dir, f"engine {version}", progress)
        report.uploaded.append(f"engine {version}")
    modules = facts["modules"]
    missing = [name for name in ("numpy", "psutil") if not modules.get(name)]
    need_unicorn = not modules.get("unicorn") and copy_unicorn is not False
    if missing or need_unicorn:
        ok, why = bundle.can_copy_modules_to(report.abi, str(facts.get("libc", "")))
        copy = list(missing)
        if need_unicorn and copy_unicorn is True:
            copy.append("unicorn")
        elif need_unicorn and ok and callable(copy_unicorn):
            try:
                size = bundle.modules_bundle(["unicorn"]).stat().st_size
            except LookupError:
                size = 0        # this computer has none to give: the host stays KVM-only, unasked
            if size and copy_unicorn(size):
                copy.append("unicorn")
        if ok and copy:
            try:
                local = bundle.modules_bundle(copy)
            except LookupError as exc:
                ok, why = False, str(exc)
            else:
                report.upload_bytes += upload_and_unpack(transport, python, data_dir, local, report.deps_dir,
                                                         " and ".join(copy), progress)
                report.uploaded += [f"{n} {bundle.local_module(n)[0]}" for n in copy]
                for name in copy:
                    modules[name] = "copied"
        if not ok and copy:
            if "numpy" in missing:
                raise InstallError(f"the host's {python} lacks numpy, which the engine needs, and this computer's "
                                   f"copy cannot be used there ({why}): install it on the host "
                                   "(apt install python3-numpy, or pip install numpy)")
            report.notes.append(f"could not copy {', '.join(copy)}: {why}")
    report.upload_seconds = time.monotonic() - started if report.uploaded else 0.0
    report.pruned = prune_agents(transport, python, data_dir, version)
    if report.pruned:
        report.notes.append(f"removed engine versions unused for {PRUNE_DAYS} days: {', '.join(report.pruned)}")
    unicorn = modules.get("unicorn")
    if unicorn and str(unicorn) not in ("copied",) and not str(unicorn).startswith("2.1.4"):
        report.software_cpu_reason = (f"the host has unicorn {unicorn}; the software CPU needs 2.1.4: "
                                      "only KVM is available")
    elif unicorn:
        report.software_cpu = True
    else:
        report.software_cpu_reason = ("the host's python has no unicorn module, so the software CPU is not "
                                      "available there: only KVM (connect with the unicorn upload enabled, or "
                                      "pip install unicorn==2.1.4 on the host)")
    return report


def prune_agents(transport, python: str, data_dir: str, version: str, days: float = PRUNE_DAYS) -> list[str]:
    """Mark `version` used on the host and remove the engine versions there that no client has used for `days`
    and no process runs (prune.py); the versions removed. A failure only costs disk space: it is logged."""
    status, out, err = run_command(transport, f"{shlex.quote(python)} - {shlex.quote(data_dir)} "
                                              f"{shlex.quote(version)} {days:g}", _script("prune.py"))
    try:
        result = json.loads(out.decode().strip().splitlines()[-1]) if status == 0 else {}
    except (ValueError, IndexError):
        result = {}
    if status != 0 or not isinstance(result.get("pruned"), list):
        log.warning("pruning old engines on the host failed (status %s): %s", status,
                    err.decode(errors="replace").strip()[-300:])
        return []
    return [str(v) for v in result["pruned"]]


def bridge_command(python: str, report: InstallReport) -> str:
    """The command whose stdio the agent protocol runs over."""
    path = f"{report.agent_dir}:{report.deps_dir}" if report.deps_dir else report.agent_dir
    return f"cd / && PYTHONPATH={shlex.quote(path)} exec {shlex.quote(python)} -m core.agent.bridge"
