"""Vireo's engine: everything that runs without Qt (hypervisor backends, devices, boot, storage, hosts)."""
