"""A service client's disk-image calls (core/agent/connection.py's create_disk, list_images, delete_image,
resize_image and run_img on the other end), mixed into core/remote/service.py's ServiceClient. What the service
answers is read as untrusted."""
from __future__ import annotations

from core.agent import wire
from core.host.api import HostError, Progress
from core.host.images import ImageEntry
from core.remote.client import AgentGone

LONG_CALL = 3600.0      # a check or a preallocated create may take long on a big image


class ImageClient:
    """Uses ServiceClient's _call, _agent and name."""

    def create_disk(self, path: str, size_bytes: int, fmt: str = "raw", preallocate: bool = False,
                    progress: Progress | None = None) -> None:
        client = self._agent()
        try:
            client.call("create_disk", path=path, size_bytes=int(size_bytes), fmt=fmt,
                        preallocate=bool(preallocate), progress=progress, timeout=LONG_CALL)
        except AgentGone as exc:
            raise HostError(f"{self.name}: {exc}") from None

    def list_images(self) -> list[ImageEntry]:
        value, _ = self._call("list_images")
        if not isinstance(value, list):
            raise HostError("the service sent a malformed image list")
        try:
            return [wire.image_from(v) for v in value]
        except wire.WireError as exc:
            raise HostError(f"the service sent a malformed image list: {exc}") from None

    def delete_image(self, path: str) -> None:
        self._call("delete_image", path=path)

    def resize_image(self, path: str, new_size: int) -> None:
        self._call("resize_image", path=path, new_size=int(new_size))

    def run_img(self, fields: dict[str, object]) -> tuple[int, str, str]:
        client = self._agent()
        try:
            value, _ = client.call("run_img", fields=fields, timeout=LONG_CALL)
        except AgentGone as exc:
            raise HostError(f"{self.name}: {exc}") from None
        if not (isinstance(value, list) and len(value) == 3 and isinstance(value[0], int)
                and all(isinstance(v, str) for v in value[1:])):
            raise HostError("the service sent a malformed img result")
        return value[0], value[1], value[2]
