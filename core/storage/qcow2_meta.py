"""Metadata overlap protection for qcow2 writers: which host clusters hold metadata, and refusing writes onto them.

QEMU docs/interop/qcow2.txt says every cluster in use has a refcount above 0, and a writer allocates only clusters
with refcount 0. A damaged (or hostile) image can break that promise: a refcount of 0 on the header, an L2 table
or a refcount block, or a refcount-table entry of 0 over metadata, and the allocator would hand that cluster to
guest data — one guest write could then rewrite the header (for example naming /etc/passwd as the backing file).
QEMU keeps a map of its metadata (qcow2_check_metadata_overlap) and refuses such a write with "Preventing invalid
write on metadata", marks the image corrupt (incompatible feature bit 1) and fails the request. This module is
that map: the header cluster, the active and snapshot L1 tables, the L2 tables they point to, the refcount table
and blocks, the snapshot table and the bitmap directory. Every allocation and every write is checked against it;
a write may only land on metadata of the kind it means to update. A cluster leaves the map only when the
structure it belongs to is freed (never because a refcount reached 0: a damaged L2 entry pointing at metadata
could get it there), and dropping a data reference to a cluster in the map is itself refused.
"""
from __future__ import annotations

TYPE_CHECKING = False     # not typing's: `img snapshot` starts without typing and collections (bench/snapshot.py)
if TYPE_CHECKING:
    from collections.abc import Callable

HEADER = "qcow2_header"
L1 = "active L1 table"
L2 = "L2 table"
REFTABLE = "refcount table"
REFBLOCK = "refcount block"
SNAPTABLE = "snapshot table"
SNAP_L1 = "snapshot L1 table"
BITMAPDIR = "bitmap directory"


class MetadataGuard:
    """Host clusters that hold metadata, by kind; check() refuses a write that would land on another kind."""

    def __init__(self, path: str, cluster_bits: int, on_violation: Callable[[str], Exception]) -> None:
        self.path = path
        self.cluster_bits = cluster_bits
        self.owner: dict[int, str] = {}
        # Called with the message; marks the image corrupt and returns the exception to raise.
        self.on_violation = on_violation

    def _clusters(self, offset: int, length: int) -> range:
        if length <= 0:
            return range(0)
        return range(offset >> self.cluster_bits, ((offset + length - 1) >> self.cluster_bits) + 1)

    def add(self, offset: int, length: int, kind: str) -> None:
        for c in self._clusters(offset, length):
            self.owner[c] = kind

    def forget(self, offset: int, length: int) -> None:
        for c in self._clusters(offset, length):
            self.owner.pop(c, None)

    def forget_clusters(self, clusters: list[int], kind: str) -> None:
        """Forget those of `clusters` that hold metadata of `kind` (e.g. the L2 tables among freed clusters)."""
        for c in clusters:
            if self.owner.get(c) == kind:
                del self.owner[c]

    def check_data(self, clusters: list[int], what: str) -> None:
        """Refuse to treat metadata clusters as data (an L2 entry that points at metadata)."""
        if not self.owner:
            return
        for c in clusters:
            kind = self.owner.get(c)
            if kind is not None:
                raise self.on_violation(
                    f"{self.path}: {what} points at host offset {c << self.cluster_bits:#x}, which holds the {kind}; "
                    "the image is marked corrupt and this request fails (repair it with qemu-img check -r all)")

    def kind(self, offset: int) -> str | None:
        return self.owner.get(offset >> self.cluster_bits)

    def check(self, offset: int, length: int, allowed: str | None = None) -> None:
        """Raise (after marking the image corrupt) if [offset, offset+length) touches metadata other than
        `allowed` (None: no metadata at all, e.g. guest data or a freshly allocated cluster)."""
        if not self.owner:
            return
        for c in self._clusters(offset, length):
            kind = self.owner.get(c)
            if kind is not None and kind != allowed:
                raise self.on_violation(
                    f"{self.path}: Preventing invalid write on metadata (overlaps with {kind}) at host offset "
                    f"{c << self.cluster_bits:#x}; the image is marked corrupt and this request fails (repair it "
                    "with qemu-img check -r all)")
