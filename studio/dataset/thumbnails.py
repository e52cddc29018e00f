"""Thumbnails that show the whole photo: a face dataset browser must never crop faces off."""
from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from ..images import load_rgb
from ..workspace import atomic_write_bytes

THUMB_SIDE = 320


def make_thumbnail(src: Path, dest: Path, side: int = THUMB_SIDE) -> Path:
    """The upright photo scaled to fit ``side`` x ``side`` (aspect kept, nothing cut), as JPEG."""
    if not dest.exists():
        img = Image.fromarray(load_rgb(src, draft_side=side).rgb)
        img.thumbnail((side, side), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=85)
        dest.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(dest, buf.getvalue())
    return dest
