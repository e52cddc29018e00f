"""Photos for the pages: single files handed to Gradio one by one, never a workspace folder.

Gradio may only serve what it was given, so the workspace is not in its allowed paths: a page
gets a thumbnail or a link to one file, made in a private serving folder outside the workspace,
and the file guard (:mod:`.guard`) decides by role who may fetch it.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from ..config import ASSETS_DIR
from ..images import ImageError
from ..dataset.thumbnails import make_face_thumbnail, make_thumbnail
from ..workspace import Workspace, atomic_copy, atomic_writer

MISSING = ASSETS_DIR / "ui" / "missing.png"


def strip_metadata(src: Path, dest: Path) -> Path:
    """Write ``src``'s pixels (EXIF orientation applied) to ``dest`` as PNG or JPEG with no metadata at all."""
    from PIL import Image, ImageOps

    with Image.open(src) as im:
        img = ImageOps.exif_transpose(im)
        img.load()
    mode = "RGBA" if dest.suffix == ".png" and "A" in img.getbands() else "RGB"
    pixels = Image.frombytes(mode, img.size, img.convert(mode).tobytes())  # a new image: no info carried over
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(dest) as fh:  # a temp name of its own: two events may clean the same photo at once
        if dest.suffix == ".png":
            pixels.save(fh, format="PNG")
        else:
            pixels.save(fh, format="JPEG", quality=95)
    return dest


class MediaServer:
    """Thumbnails and single-file links of one workspace, in a folder of their own."""

    def __init__(self, ws: Workspace, root: str | Path | None = None):
        self.ws = ws
        self.dir = Path(root) if root else Path(tempfile.mkdtemp(prefix="crossfaceid-serve-"))
        self.dir.mkdir(parents=True, exist_ok=True)

    def _name(self, rel: str, kind: str, suffix: str) -> Path:
        return self.dir / kind / (hashlib.sha256(f"{self.ws.root}:{rel}".encode()).hexdigest()[:32] + suffix)

    def thumbnail(self, media_path: str, missing: bool | None = None) -> str:
        """A whole-photo thumbnail of a workspace image, or the placeholder when its file is gone."""
        src = self.ws.media_path(media_path)
        if missing or (missing is None and not src.is_file()):
            return str(MISSING)
        try:
            return str(make_thumbnail(src, self._name(media_path, "thumbs", ".jpg")))
        except ImageError:
            return str(MISSING)

    def face_thumbnail(self, media_path: str, bbox) -> str:
        """A square thumbnail around the photo's subject face; the whole photo when it has no face box."""
        if bbox is None:
            return self.thumbnail(media_path)
        src = self.ws.media_path(media_path)
        if not src.is_file():
            return str(MISSING)
        key = f"{media_path}:" + ",".join(f"{v:.1f}" for v in bbox)
        try:
            return str(make_face_thumbnail(src, self._name(key, "faces", ".jpg"), tuple(bbox)))
        except ImageError:
            return str(MISSING)

    def file(self, rel: str) -> str | None:
        """One workspace file (a photo, a generated sample) linked for serving; None if it is gone."""
        src = self.ws.media_path(rel)
        if not src.is_file():
            return None
        dest = self._name(rel, "files", src.suffix.lower())
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dest)
            except FileExistsError:  # another event linked it a moment ago
                pass
            except OSError:  # another file system: a copy, appearing whole
                atomic_copy(src, dest)
        return str(dest)

    def clean(self, rel: str) -> str | None:
        """One workspace photo re-encoded without its metadata (EXIF, IPTC, XMP, ICC, text chunks), for a
        non-admin's page: an input face's press caption or camera serial is not theirs to read."""
        src = self.ws.media_path(rel)
        if not src.is_file():
            return None
        dest = self._name(rel, "clean", ".png" if src.suffix.lower() == ".png" else ".jpg")
        if not dest.exists():
            strip_metadata(src, dest)
        return str(dest)

    def download(self, rel: str) -> str | None:
        """Like :meth:`file`, keeping the file's own name (a CSV or Markdown export the user saves)."""
        src = self.ws.media_path(rel)
        if not src.is_file():
            return None
        dest = self._name(rel, "downloads", "") / src.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        atomic_copy(src, dest)  # refreshed each time: a rerun rewrites the export
        return str(dest)
