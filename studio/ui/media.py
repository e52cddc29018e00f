"""Photos in galleries: a workspace file, or a placeholder when it was deleted behind the studio's back."""
from __future__ import annotations

from ..config import ASSETS_DIR
from ..workspace import Workspace

MISSING = ASSETS_DIR / "ui" / "missing.png"


def gallery_image(ws: Workspace, media_path: str, missing: bool | None = None) -> str:
    """Path to show for a workspace photo; ``missing`` when the caller already checked the file."""
    path = ws.media_path(media_path)
    if missing is None:
        missing = not path.is_file()
    return str(MISSING if missing else path)
