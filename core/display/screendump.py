"""Screendumps for scripts and tests: the last frame as PNG and, in text mode, the characters as a .txt file
(same path with .txt instead of .png), one line per text row, CP437 decoded to UTF-8."""
from __future__ import annotations

from pathlib import Path

from core.devices.vga import Vga
from core.display.renderer import Renderer, text_snapshot


def write_screendump(vga: Vga, path: str | Path, renderer: Renderer | None = None) -> list[Path]:
    """Save the current picture to `path` (PNG) and, in text mode, its text next to it. Returns the files written."""
    path = Path(path)
    renderer = renderer or Renderer(vga)
    frame = renderer.render(force=True)
    frame.save_png(str(path))
    written = [path]
    lines = text_snapshot(vga)
    if lines is not None:
        txt = path.with_suffix(".txt")
        txt.write_text("\n".join(lines) + "\n", encoding="utf-8")
        written.append(txt)
    return written
