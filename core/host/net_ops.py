"""A VM's network cards through the Host API (issue 13), for LocalHost (core/host/local.py) as a mixin:

- net_status(uuid): each card of a running or paused VM as its VM process reports it (core/vmproc/net_status.py:
  MAC, backend, link up with the one-line reason it is down, the link switch, forwards, rx/tx counters); [] for a
  VM that is not started.
- net_reconnect(uuid, nic): restart that card's backend (passt), the GUI's "Reconnect".
- net_set(uuid, nic, link=, forwards=): the link switch and the port forwards of a card, saved in the definition
  and, on a started VM, applied at once (core/vmproc/net_control.py: the switch flips the guest's carrier; new
  forwards restart the card's passt). A forward passt cannot bind is refused with passt's line naming the port,
  and the card goes back to the forwards it had, so the VM keeps its network.

These are the only definition changes a running VM takes besides core.config.running_vm_takes', which is why they
are their own call rather than define().
"""
from __future__ import annotations

from typing import Any

from core.config import ConfigError
from core.host.api import EventKind, HostError, HostEvent, VmState

_STARTED = (VmState.RUNNING, VmState.PAUSED)


class LocalNetOps:
    """Mixed into LocalHost, whose _vm, _proc, _snapshot, store and _emit it uses."""

    def net_status(self, vm_uuid: str) -> list[dict[str, Any]]:
        from core.vmproc.handle import VmProcessError

        vm = self._vm(vm_uuid)
        proc = vm.proc
        if proc is None or vm.state not in _STARTED:
            return []
        try:
            return proc.net_status()
        except VmProcessError as exc:
            raise HostError(f"{vm.config.name}: {exc}") from None

    def net_reconnect(self, vm_uuid: str, nic: int | None = None) -> None:
        from core.vmproc.handle import VmProcessError

        vm = self._vm(vm_uuid)
        with vm.op_lock:
            proc = self._proc(vm, *_STARTED)
            try:
                proc.net_reconnect(nic)
            except VmProcessError as exc:
                raise HostError(f"{vm.config.name}: {exc}") from None

    def net_set(self, vm_uuid: str, nic: int, link: bool | None = None, forwards: list[str] | None = None):
        from core.vmproc.handle import VmProcessError

        vm = self._vm(vm_uuid)
        with vm.op_lock:
            config = vm.config.copy()
            if not isinstance(nic, int) or not 0 <= nic < len(config.nics):
                raise HostError(f"{config.name} has no network card {nic}")
            card = config.nics[nic]
            old_forwards = list(card.forwards)
            if link is not None:
                card.link = bool(link)
            if forwards is not None:
                card.forwards = [str(f) for f in forwards]
            try:
                config.validate()
            except ConfigError as exc:
                raise HostError(str(exc)) from None
            if vm.proc is not None and vm.state in _STARTED:
                try:
                    vm.proc.net_set(nic, link=link, forwards=forwards)
                except VmProcessError as exc:
                    if forwards is not None:
                        try:       # back to the forwards that worked: the VM keeps its network
                            vm.proc.net_set(nic, forwards=old_forwards)
                        except VmProcessError:
                            pass
                    raise HostError(str(exc)) from None
            try:
                self.store.save(config)
            except (ConfigError, OSError) as exc:
                raise HostError(f"cannot save {config.name}'s definition: {exc}") from None
            vm.config = config
        self._emit(HostEvent(EventKind.UPDATED, vm_uuid, vm.state))
        return self._snapshot(vm)
