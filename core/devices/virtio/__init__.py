"""Virtio 1.x devices: split virtqueues, the modern PCI transport, and device types (block, ...)."""
