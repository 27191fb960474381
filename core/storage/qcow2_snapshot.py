"""qcow2 internal snapshots: create, apply (revert), delete, list, and the VM-state area of a snapshot.

QEMU docs/interop/qcow2.txt, "Snapshots". A snapshot is a copy of the active L1 table plus an entry in the
snapshot table; the L2 tables and data clusters are shared, which is what the refcounts count: a cluster's
refcount is the number of L1 tables (active and snapshots) that reach it, an L2 table's the number of L1 tables
that point to it. The active image writes in place only where the copied flag says the refcount is exactly 1;
everything else is copied on write (qcow2_write), so a snapshot never changes.

The order of writes is QEMU's, so that a kill -9 at any instant leaves at worst leaked clusters (refcounts too
high), never a count too low:
- create: copy the active L1 table to new clusters, raise the refcounts of everything it reaches, clear the
  copied flags in the active L2 tables and L1 table, write a new snapshot table, and only then point the header
  at it (one 12-byte write of nb_snapshots and snapshots_offset); the old table is freed last.
- apply: raise the refcounts of everything the snapshot reaches, overwrite the active L1 table with the
  snapshot's (copied flags clear: all of it is shared now), then drop the references of the old active tables.
- delete: write the snapshot table without the entry and point the header at it, drop the references the
  snapshot's L1 table held, free it, then set the copied flags again where a refcount came back to 1.
A kill between raising a refcount and clearing a flag (create), or between lowering one and setting a flag
(delete), leaves a copied flag that disagrees with its refcount; like QEMU's, such an image is repaired by
`check -r all` (qemu-img's or ours). Nothing the guest wrote is lost at any point.

VM state (the machine's RAM and device state, for a later machine-state feature) lives as QEMU stores it: like
disk data, at guest offsets past the disk, starting at the first L1 entry that maps no disk cluster. It is
written into the active image before the snapshot is created (write_vm_state), recorded as the snapshot's
vm_state_size, dropped from the active image afterwards, and read back from the snapshot (read_vm_state).

Qcow2Snapshots is a mixin of Qcow2Image.
"""
from __future__ import annotations

import struct
import time
from bisect import bisect_left

from core.storage.errors import ImageError
from core.storage.qcow2_header import COMPRESSED, COPIED, L1_OFFSET_MASK, MAX_SNAPSHOTS
from core.storage.qcow2_lanes import from_array, sequential_run, to_array
from core.storage.qcow2_meta import HEADER, L1, L2, SNAP_L1, SNAPTABLE
from core.storage.qcow2_snaptable import MAX_TABLE_BYTES, Snapshot, pack_table

_OFF = 0x00FF_FFFF_FFFF_FE00


class Qcow2Snapshots:
    """Internal snapshots for Qcow2Image."""

    # --- lookup --------------------------------------------------------------------------------------------

    def find_snapshot(self, name: str) -> Snapshot:
        """The snapshot with ID `name`, else the first named `name` (qemu-img's rule)."""
        for sn in self.snapshots:
            if sn.id_str == name:
                return sn
        for sn in self.snapshots:
            if sn.name == name:
                return sn
        raise ImageError(f"{self.path}: no snapshot with ID or name {name!r}; list them with img snapshot -l")

    def vm_state_offset(self) -> int:
        """Guest offset where VM state starts: the first L1 entry that maps no disk cluster (as QEMU)."""
        span = self.cs * self.l2_entries
        return -(-self._size // span) * span

    # --- references of an L1 table -------------------------------------------------------------------------

    def _l2_raw(self, l2_off: int) -> bytes:
        table = self._l2_cache.get(l2_off)
        return bytes(table) if table is not None else self.file.pread(l2_off, self.cs)

    def _l2_run(self, raw: bytes) -> int | None:
        """The first host cluster if the L2 table maps consecutive host clusters with one set of flags, none of
        them compressed (a preallocated image, a disk written front to back); else None."""
        first = sequential_run(raw, self.cs)
        if first is None or first & COMPRESSED or not first & _OFF:
            return None
        host = first & _OFF
        if host + (len(raw) // 8 - 1) * self.cs > _OFF:
            return None                        # the ramp would run into the flag bits
        return host >> self.cluster_bits

    def _references(self, l1: list[int]) -> tuple[list[int], list[tuple[int, int]]]:
        """(L2 table offsets, runs (first host cluster, count) of every reference the L2 tables hold, with repeats)
        of an L1 table: per table, its standard clusters in entry order, then its compressed clusters' spans."""
        l2s: list[int] = []
        runs: list[tuple[int, int]] = []
        for entry in l1:
            off = entry & L1_OFFSET_MASK
            if not off:
                continue
            self._l2_table_offset_checked(off)
            l2s.append(off)
            raw = self._l2_raw(off)
            first = self._l2_run(raw)
            if first is not None:
                runs.append((first, len(raw) // 8))
                continue
            compressed = []
            run_first, run_len = -1, 0
            bits = self.cluster_bits
            for e in to_array(raw, 64):
                if e & COMPRESSED:
                    compressed.append(e)
                    continue
                host = e & _OFF
                if not host:
                    continue
                cluster = host >> bits
                if cluster == run_first + run_len and run_len:
                    run_len += 1
                else:
                    if run_len:
                        runs.append((run_first, run_len))
                    run_first, run_len = cluster, 1
            if run_len:
                runs.append((run_first, run_len))
            for e in compressed:
                host, length = self._compressed_range(e)
                first, last = host >> bits, (host + length - 1) >> bits
                runs.append((first, last - first + 1))
        if runs and max(f + n - 1 for f, n in runs) >= -(-self.file.size // self.cs):
            raise self._corruption(f"{self.path}: an L2 table points past the end of the file; the snapshot "
                                   "operation is refused (repair the image with qemu-img check -r all)")
        if self.guard.owner and runs:
            meta = sorted(self.guard.owner)
            hits = []
            for f, n in runs:
                i = bisect_left(meta, f)
                while i < len(meta) and meta[i] < f + n:
                    hits.append(meta[i])
                    i += 1
            self.guard.check_data(hits, "an L2 entry")
        return l2s, runs

    def _l2_table_offset_checked(self, off: int) -> None:
        if off % self.cs or off + self.cs > self.file.size:
            raise self._corruption(f"{self.path}: an L1 entry points to an L2 table at {off:#x}, misaligned or past "
                                   "the end of the file; repair the image with qemu-img check -r all")

    def _adjust(self, l1: list[int], delta: int) -> list[int]:
        """Add `delta` to the refcount of every L2 table and cluster `l1` reaches; return clusters freed."""
        l2s, runs = self._references(l1)
        l2_runs = [(off >> self.cluster_bits, 1) for off in l2s]
        if delta > 0:
            # Data first, then the tables: every step of a raise only adds references.
            self.refcounts.update_runs(runs, delta)
            return self.refcounts.update_runs(l2_runs, delta)
        freed_tables = self.refcounts.update_runs(l2_runs, delta)
        self.guard.forget_clusters(freed_tables, L2)
        freed = self.refcounts.update_runs(runs, delta)
        return sorted(set(freed).union(freed_tables))

    # --- copied flags --------------------------------------------------------------------------------------

    def _set_copied_flags(self, clear_all: bool) -> None:
        """Make the copied flags of the active L1 table and of its exclusive L2 tables say "refcount is 1"
        (clear_all: clear every flag, as after a snapshot is taken)."""
        new_l1 = []
        for entry in self.l1:
            off = entry & L1_OFFSET_MASK
            if not off:
                new_l1.append(entry)
                continue
            exclusive = not clear_all and self.refcounts.get(off >> self.cluster_bits) == 1
            if clear_all or exclusive:
                raw = self._l2_raw(off)
                new = self._copied_table(raw, exclusive)
                if new != raw:
                    self.guard.check(off, self.cs, L2)
                    self.file.pwrite(off, new)
                    self._l2_cache.pop(off, None)
            new_l1.append(off | (COPIED if exclusive else 0))
        self._write_l1(new_l1)

    def _copied_table(self, raw: bytes, exclusive: bool) -> bytes:
        """The L2 table `raw` with the copied flag of each standard entry set where the cluster's refcount is 1
        (never if not `exclusive`) and cleared elsewhere; compressed entries as they are."""
        high = raw[0::8]            # each entry's top byte: the copied (bit 63) and compressed (bit 62) flags
        if 1 not in high.translate(_COMPRESSED_BIT):
            # Every entry is standard: when one answer holds for all of them (clear, or a run whose refcounts
            # are all 1 or none 1), the flags change together, as one translation of the top bytes.
            every = False
            if exclusive:
                first = self._l2_run(raw)
                every = None if first is None else self.refcounts.all_equal_one(first, len(raw) // 8)
            if every is not None:
                new = bytearray(raw)
                new[0::8] = high.translate(_SET_COPIED if every else _CLEAR_COPIED)
                return bytes(new)
        entries = to_array(raw, 64)
        rc = self.refcounts.get
        for i, e in enumerate(entries):
            if e & COMPRESSED:
                continue
            host = e & _OFF
            if exclusive and host and rc(host >> self.cluster_bits) == 1:
                entries[i] = e | COPIED
            else:
                entries[i] = e & ~COPIED
        return from_array(entries)

    def _write_l1(self, entries: list[int]) -> None:
        if entries == self.l1 or not entries:
            self.l1 = entries
            return
        raw = struct.pack(f">{len(entries)}Q", *entries)
        self.guard.check(self.header.l1_table_offset, len(raw), L1)
        self.file.pwrite(self.header.l1_table_offset, raw)
        self.l1 = entries

    # --- the snapshot table --------------------------------------------------------------------------------

    def _write_table(self, snapshots: list[Snapshot]) -> None:
        """Write a new snapshot table, point the header at it, then free the old one."""
        raw = pack_table(snapshots)
        if len(raw) > MAX_TABLE_BYTES:
            raise ImageError(f"{self.path}: the snapshot table would exceed {MAX_TABLE_BYTES >> 20} MiB; delete "
                             "some snapshots first")
        new = 0
        if raw:
            clusters = -(-len(raw) // self.cs)
            new = self.refcounts.alloc(clusters)
            self._data_write(new, raw + bytes(clusters * self.cs - len(raw)))
            self.file.barrier()
        old_off, old_size = self.header.snapshots_offset, self.snapshot_table_size
        self.guard.check(60, 12, HEADER)
        self.file.pwrite(60, struct.pack(">IQ", len(snapshots), new))     # nb_snapshots, snapshots_offset
        self.file.barrier()
        self.header.nb_snapshots, self.header.snapshots_offset = len(snapshots), new
        self.snapshots, self.snapshot_table_size = snapshots, len(raw)
        if raw:
            self.guard.add(new, len(raw), SNAPTABLE)
        if old_size:
            self.guard.forget(old_off, old_size)
            self.refcounts.free(old_off, -(-old_size // self.cs))

    # --- operations ----------------------------------------------------------------------------------------

    def snapshot_create(self, name: str, vm_state_size: int = 0, vm_clock_nsec: int = 0) -> Snapshot:
        """Take an internal snapshot of the disk as it is now (and of the VM state written with write_vm_state
        if `vm_state_size`); return its table entry. Names need not be unique (as in QEMU); IDs are."""
        self._check_writable()
        if not name or len(name.encode()) > 0xFFFF:
            raise ImageError(f"{self.path}: a snapshot name must be 1 to 65535 bytes")
        if len(self.snapshots) >= MAX_SNAPSHOTS:
            raise ImageError(f"{self.path}: the image already has {MAX_SNAPSHOTS} snapshots; delete some first")
        with self._lock:
            ids = [int(s.id_str) for s in self.snapshots if s.id_str.isdigit()]
            now = time.time_ns()
            sn = Snapshot(str(max(ids, default=0) + 1), name, 0, len(self.l1), now // 10**9, now % 10**9,
                          vm_clock_nsec, vm_state_size, self._size, 0)
            if self.l1:
                clusters = -(-len(self.l1) * 8 // self.cs)
                raw = struct.pack(f">{len(self.l1)}Q", *[e & ~COPIED for e in self.l1])
                sn.l1_table_offset = self.refcounts.alloc(clusters)
                self._data_write(sn.l1_table_offset, raw + bytes(clusters * self.cs - len(raw)))
                self.guard.add(sn.l1_table_offset, len(raw), SNAP_L1)
                self._adjust(self.l1, +1)
                self._set_copied_flags(clear_all=True)
                self.file.barrier()
            self._write_table([*self.snapshots, sn])
            if vm_state_size:
                # The state now belongs to the snapshot; keeping it in the active image would only cost copies.
                self._drop_vm_state(vm_state_size)
            self._compressed_cache = None
            return sn

    def snapshot_apply(self, name: str) -> Snapshot:
        """Revert the disk to snapshot `name` (ID or name); what was written since is dropped."""
        self._check_writable()
        with self._lock:
            sn = self.find_snapshot(name)
            if sn.problem:
                raise ImageError(f"{self.path}: cannot apply snapshot {name!r}: {sn.problem}")
            size = sn.disk_size if sn.disk_size is not None else self._size
            span = self.cs * self.l2_entries
            needed = max(sn.l1_size, -(-size // span), len(self.l1))
            if needed > len(self.l1):
                self._grow_l1(needed)
            sn_l1 = self.read_l1(sn.l1_table_offset, sn.l1_size)
            old = list(self.l1)
            self._adjust(sn_l1, +1)
            self.file.barrier()
            new = [e & ~COPIED for e in sn_l1] + [0] * (len(old) - len(sn_l1))
            self._l2_cache.clear()
            self._compressed_cache = None
            self._write_l1(new)
            self.file.barrier()
            if size != self._size:
                self.guard.check(24, 8, HEADER)
                self.file.pwrite(24, struct.pack(">Q", size))
                self._size = self.header.size = size - size % 512
            freed = self._adjust(old, -1)
            self._set_copied_flags(clear_all=False)
            self._punch(freed)
            return sn

    def snapshot_delete(self, name: str) -> Snapshot:
        """Delete snapshot `name` (ID or name) and free what only it used."""
        self._check_writable()
        with self._lock:
            sn = self.find_snapshot(name)
            sn_l1 = [] if sn.problem else self.read_l1(sn.l1_table_offset, sn.l1_size)
            self._write_table([s for s in self.snapshots if s is not sn])
            if sn.problem:
                return sn           # its L1 table cannot be followed: what it held stays leaked
            freed = self._adjust(sn_l1, -1)
            if sn.l1_size:
                self.guard.forget(sn.l1_table_offset, sn.l1_size * 8)
                self.refcounts.free(sn.l1_table_offset, -(-sn.l1_size * 8 // self.cs))
            self._l2_cache.clear()
            self._set_copied_flags(clear_all=False)
            self._punch(freed)
            return sn

    def _punch(self, clusters: list[int]) -> None:
        """Give the host space of freed clusters (ascending) back, a call per run (best effort: a file system
        without holes keeps it)."""
        i = 0
        while i < len(clusters):
            j = i + 1
            while j < len(clusters) and clusters[j] == clusters[j - 1] + 1:
                j += 1
            self.file.punch_hole(clusters[i] * self.cs, (j - i) * self.cs)
            i = j

    # --- VM state ------------------------------------------------------------------------------------------

    def write_vm_state(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write VM state bytes at `offset` of the state area of the snapshot about to be taken."""
        self._check_writable()
        src = memoryview(data).cast("B")
        if offset < 0:
            raise ImageError(f"{self.path}: negative VM state offset {offset}")
        with self._lock:
            start = self.vm_state_offset() + offset
            span = self.cs * self.l2_entries
            needed = -(-(start + len(src)) // span)
            if needed > len(self.l1):
                self._grow_l1(needed)
            self._write_locked(start, src)

    def read_vm_state(self, name: str, offset: int, length: int) -> bytes:
        """Read `length` bytes at `offset` of snapshot `name`'s VM state."""
        with self._lock:
            sn = self.find_snapshot(name)
            if offset < 0 or length < 0 or offset + length > sn.vm_state_size:
                raise ImageError(f"{self.path}: VM state request at {offset} length {length} is outside snapshot "
                                 f"{name!r}'s {sn.vm_state_size} bytes of state")
            if sn.problem:
                raise ImageError(f"{self.path}: cannot read snapshot {name!r}: {sn.problem}")
            span = self.cs * self.l2_entries
            size = sn.disk_size if sn.disk_size is not None else self._size
            pos = -(-size // span) * span + offset
            l1 = self.read_l1(sn.l1_table_offset, sn.l1_size)
            out = bytearray()
            end = pos + length
            while pos < end:
                ci, in_off = divmod(pos, self.cs)
                n = min(self.cs - in_off, end - pos)
                l1_index = ci // self.l2_entries
                entry = 0
                if l1_index < len(l1) and l1[l1_index] & L1_OFFSET_MASK:
                    l2 = l1[l1_index] & L1_OFFSET_MASK
                    self._l2_table_offset_checked(l2)
                    entry = struct.unpack_from(">Q", self._l2_raw(l2), ci % self.l2_entries * 8)[0]
                out += self._cluster_contents(ci, entry, backing=False)[in_off:in_off + n]
                pos += n
            return bytes(out)

    def _drop_vm_state(self, size: int) -> None:
        start = self.vm_state_offset()
        first, last = start // self.cs, -(-(start + size) // self.cs)
        self._replace_entries(first, last, 0, punch=False)



# bytes.translate tables for an entry's top byte (COPIED is bit 63, COMPRESSED bit 62 of the 64-bit entry).
_COMPRESSED_BIT = bytes((b >> 6) & 1 for b in range(256))
_SET_COPIED = bytes(b | 0x80 for b in range(256))
_CLEAR_COPIED = bytes(b & 0x7F for b in range(256))
