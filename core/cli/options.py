"""The options every host command shares (the VM's name, --connect and its SSH options), apart from the code
that acts on them (connect.py): main.py adds them at every start, and this module imports nothing else."""
from __future__ import annotations

import argparse


def add_vm_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", help="the VM's name, uuid or Id (see `vireo list --all`)")


def add_connect_arguments(p: argparse.ArgumentParser, required: bool = False) -> None:
    """--connect and the SSH options that go with it (-c too, unless the command has its own -c: img snapshot)."""
    names = ["--connect"] if "-c" in p._option_string_actions else ["--connect", "-c"]
    p.add_argument(*names, metavar="ssh://USER@HOST[:PORT]", required=required,
                   help="act on this host through its Vireo agent (installed over SSH when missing); "
                        "default: this computer's Vireo service")
    p.add_argument("--identity", "-i", metavar="KEY", default="", help="SSH private key file (default: ssh-agent "
                   "keys, then ~/.ssh/id_ed25519, id_ecdsa, id_rsa)")
    p.add_argument("--accept-new-host-key", action="store_true",
                   help="trust a host key not yet in ~/.ssh/known_hosts (and record it); a changed key is always "
                        "refused")
    p.add_argument("--remote-python", metavar="PATH", default="",
                   help="the interpreter the agent runs on, on the host (default python3)")
    copy = p.add_mutually_exclusive_group()
    copy.add_argument("--copy-unicorn", action="store_const", const=True, dest="copy_unicorn", default=None,
                      help="copy this computer's unicorn to a host that lacks it (the software CPU) without asking "
                           "(default: asked once per host, yes when there is no terminal)")
    copy.add_argument("--no-copy-unicorn", action="store_const", const=False, dest="copy_unicorn",
                      help="never copy unicorn: a host without it offers KVM only")
