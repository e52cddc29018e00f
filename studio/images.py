"""The one safe way to open a photo.

Crawled face data is full of surprises: CMYK JPEGs, 16-bit PNGs, EXIF-rotated phone photos,
truncated downloads and the odd decompression bomb. Every stage opens images through
:func:`load_rgb` so that each of those becomes either a clean upright RGB image or an
:class:`ImageError` that names the file and the cause.
"""
from __future__ import annotations

import hashlib
import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

#: Largest image accepted, in pixels. Above this PIL's bomb check (2x the limit) or ours fires.
MAX_PIXELS = 80_000_000
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")

# Truncated files must raise, never load half an image silently.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageError(Exception):
    """A photo that cannot be used; ``code`` is machine-readable, ``str()`` names the file."""

    def __init__(self, path: str | Path, code: str, detail: str):
        self.path = str(path)
        self.code = code
        self.detail = detail
        super().__init__(f"{self.path}: {code}: {detail}")


@dataclass(frozen=True)
class LoadedImage:
    """An upright RGB photo plus what we learned while opening it."""

    rgb: np.ndarray  # HxWx3 uint8, RGB order
    original_mode: str
    exif_rotated: bool
    format: str | None

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_bytes(path: str | Path) -> bytes:
    """Read a file, turning OS errors into :class:`ImageError` with a stable code."""
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ImageError(path, "missing_file", "file does not exist") from None
    except IsADirectoryError:
        raise ImageError(path, "not_a_file", "is a directory") from None
    except PermissionError as exc:
        raise ImageError(path, "unreadable", f"permission denied ({exc.strerror})") from None
    except OSError as exc:
        raise ImageError(path, "unreadable", exc.strerror or str(exc)) from None


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; alpha is composited on white (as a viewer shows it)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo or 1.0) * 255.0
        return Image.fromarray(arr.astype(np.uint8), "L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    # CMYK, YCbCr, L, 1, LAB, HSV: PIL knows the conversion.
    return img.convert("RGB")


def decode(data: bytes, path: str | Path, max_pixels: int = MAX_PIXELS, draft_side: int | None = None) -> LoadedImage:
    """Decode image bytes into an upright RGB array, or raise :class:`ImageError`.

    ``draft_side``: the caller needs at most this many pixels per side (a thumbnail), so a JPEG
    may be decoded at 1/2, 1/4 or 1/8 scale directly, which is several times faster.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt = img.format
            w, h = img.size
            if w * h > max_pixels:
                raise ImageError(
                    path, "decompression_bomb", f"{w}x{h} = {w * h:,} pixels exceeds the studio's limit of {max_pixels:,} pixels"
                )
            if draft_side and fmt == "JPEG":
                img.draft("RGB", (draft_side, draft_side))
            img.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # PIL's message quotes PIL's own limit; say the studio's
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found.group(1)):,} pixels" if found else "the image"
        raise ImageError(path, "decompression_bomb", f"{size} exceeds the studio's limit of {max_pixels:,} pixels") from None
    except UnidentifiedImageError:
        raise ImageError(path, "not_an_image", "not a readable image format") from None
    except (OSError, SyntaxError, ValueError) as exc:
        msg = str(exc)
        code = "truncated" if "truncated" in msg or "broken data stream" in msg else "corrupt"
        raise ImageError(path, code, msg) from None
    original_mode = img.mode
    orientation = img.getexif().get(0x0112, 1)
    upright = ImageOps.exif_transpose(img) if orientation not in (None, 1) else img
    rgb = _to_rgb(upright)
    return LoadedImage(
        rgb=np.asarray(rgb, dtype=np.uint8).copy(),
        original_mode=original_mode,
        exif_rotated=orientation not in (None, 1),
        format=fmt,
    )


def load_rgb(path: str | Path, max_pixels: int = MAX_PIXELS, draft_side: int | None = None) -> LoadedImage:
    """Open a photo from disk: see :func:`decode`."""
    return decode(read_bytes(path), path, max_pixels=max_pixels, draft_side=draft_side)
