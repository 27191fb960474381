"""Errors raised by the disk-image layer.

Every error carries a one-line message that names the file and, where the user can act, what to do: the CLI
prints it as is and a VM reports it as the reason a disk could not be opened or a request failed.
"""
from __future__ import annotations


class ImageError(Exception):
    """Base class: anything wrong with a disk image or a request on it."""


class ImageFormatError(ImageError):
    """The file is not a valid image of the expected format (bad header, impossible sizes, truncated)."""


class UnsupportedImageError(ImageError):
    """A valid image that uses a feature this implementation does not handle (encryption, external data…)."""


class ImageIOError(ImageError):
    """One request failed (host I/O error, metadata pointing outside the file); the image stays usable."""


class ImageCorruptError(ImageIOError):
    """Metadata met during a request is inconsistent (misaligned or out-of-file offsets, bad refcounts)."""


class ImageLockedError(ImageError):
    """Another process (or another open in this one) holds a conflicting lock on the image."""


class ReadOnlyImageError(ImageError):
    """A write-type request on an image opened read-only."""


class ImageRangeError(ImageError):
    """A request outside the virtual disk (negative offset, or past the virtual size)."""
