"""Host-side networking for virtio-net: the NIC description (nic.py), the frame backends (backend.py: the
length-prefixed stream passt speaks, a TAP device), passt itself (passt.py) and TAP setup (tap.py). See
docs/network.md."""
