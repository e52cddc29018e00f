"""Thumbnails that show the whole photo: a face dataset browser must never crop faces off."""
from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from ..images import load_rgb
from ..workspace import atomic_write_bytes

THUMB_SIDE = 320


def _save_thumbnail(img: Image.Image, dest: Path, side: int) -> Path:
    img.thumbnail((side, side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(dest, buf.getvalue())
    return dest


def make_thumbnail(src: Path, dest: Path, side: int = THUMB_SIDE) -> Path:
    """The upright photo scaled to fit ``side`` x ``side`` (aspect kept, nothing cut), as JPEG."""
    if not dest.exists():
        _save_thumbnail(Image.fromarray(load_rgb(src, draft_side=side).rgb), dest, side)
    return dest


def make_face_thumbnail(src: Path, dest: Path, bbox: tuple[float, float, float, float], side: int = THUMB_SIDE,
                        context: float = 2.2) -> Path:
    """A square thumbnail centred on a face box (``context`` times its larger side, clipped to the photo).

    A review queue's square cells would otherwise show the middle of a tall photo: a torso."""
    if not dest.exists():
        rgb = load_rgb(src).rgb
        x1, y1, x2, y2 = bbox
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        half = max(x2 - x1, y2 - y1) * context / 2
        h, w = rgb.shape[:2]
        half = min(half, w / 2, h / 2)  # a square inside the photo: shift it rather than cut it
        left, top = min(max(0.0, cx - half), w - 2 * half), min(max(0.0, cy - half), h - 2 * half)
        crop = Image.fromarray(rgb).crop((int(left), int(top), int(left + 2 * half), int(top + 2 * half)))
        _save_thumbnail(crop, dest, side)
    return dest
