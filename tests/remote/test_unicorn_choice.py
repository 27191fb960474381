"""The software CPU's module (unicorn) goes to a remote host that lacks it by default, asked once per host (issue
17, remote parity), from the command line against a real sshd whose system python3 has no unicorn: without a
terminal the default (copy) is taken and said on stderr; the next command neither asks nor uploads it again, and
the host runs the software CPU; --no-copy-unicorn keeps another host KVM-only."""
from __future__ import annotations

import os

import pytest

from core.remote import choices
from core.remote.host import RemoteHost
from core.remote.ssh import parse_uri
from tests.gui.test_remote_gui import _Trusting, server  # noqa: F401
from tests.remote.test_remote import cli

SYSTEM_PYTHON = "/usr/bin/python3"


def _list(server, *extra: str):  # noqa: F811
    return cli(server, "list", "--all", "--connect", server.uri(python=SYSTEM_PYTHON), "--identity",
               str(server.user_key), *extra)


def test_unicorn_is_copied_by_default_and_the_answer_kept(server) -> None:  # noqa: F811
    if not os.path.exists(SYSTEM_PYTHON):
        pytest.skip("no system python3")
    label = f"{server.user}@127.0.0.1:{server.port}"
    try:
        first = _list(server)
        assert first.returncode == 0, first.stderr
        assert f"vireo: {label} has no unicorn, which the software CPU needs" in first.stderr
        assert "copying it (--no-copy-unicorn refuses; the answer is kept for this host)" in first.stderr
        assert choices.get(label, "copy_unicorn") is True
        assert list((server.data_home / "vireo" / "deps").glob("*/unicorn"))       # it is on the host
        second = _list(server)
        assert second.returncode == 0 and "unicorn" not in second.stderr, second.stderr
        host = RemoteHost(parse_uri(server.uri(python=SYSTEM_PYTHON)), _Trusting())
        host.target.identity = str(server.user_key)
        host.connect()
        try:
            assert host.report.uploaded == [] and host.report.software_cpu
            assert host.agent_status()["software_cpu"] is True
        finally:
            host.close()
    finally:
        server.stop_agent()


def test_no_copy_unicorn_refuses_without_asking(server, tmp_path) -> None:  # noqa: F811
    if not os.path.exists(SYSTEM_PYTHON):
        pytest.skip("no system python3")
    label = f"{server.user}@127.0.0.1:{server.port}"
    try:
        result = _list(server, "--no-copy-unicorn")
        assert result.returncode == 0 and "unicorn" not in result.stderr, result.stderr
        assert choices.get(label, "copy_unicorn") is None         # nothing was asked, so nothing is kept
        assert not list((server.data_home / "vireo" / "deps").glob("*/unicorn"))
    finally:
        server.stop_agent()
