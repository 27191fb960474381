"""numpy, imported on first use: the qcow2 snapshot and check code needs it, but opening an image for a VM (and
so `vireo run`'s start-up, which issue 12's power-on benchmark times) must not pay for importing it."""
from __future__ import annotations

import importlib
from typing import Any


class _LazyModule:
    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        module = importlib.import_module(self._name)
        return getattr(module, attr)


np: Any = _LazyModule("numpy")
