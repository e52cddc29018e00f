"""Caption review: approve, reject, edit, regenerate; every action is a new version with who and when."""
from __future__ import annotations

from .attributes import tag_image
from .captions import check_caption
from .workspace import Workspace

REVIEW_STATUSES = ("imported", "generated", "edited", "approved", "rejected")


def _current(ws: Workspace, image_id: int) -> dict:
    cur = ws.store.current_caption(image_id)
    if cur is None:
        raise ValueError(f"image {image_id} has no caption to review")
    return cur


def _require_author(author: str | None) -> str:
    if not author:
        raise ValueError("a review action needs the reviewer's name")
    return author


def approve(ws: Workspace, image_id: int, author: str) -> dict:
    cur = _current(ws, image_id)
    ws.store.add_caption(image_id, cur["text"], status="approved", origin="human", author=_require_author(author),
                         flags=cur["flags"])
    return ws.store.current_caption(image_id)


def reject(ws: Workspace, image_id: int, author: str) -> dict:
    cur = _current(ws, image_id)
    with ws.store.transaction():
        ws.store.add_caption(image_id, cur["text"], status="rejected", origin="human", author=_require_author(author),
                             flags=cur["flags"])
        tag_image(ws, image_id, None)
    return ws.store.current_caption(image_id)


def edit(ws: Workspace, image_id: int, text: str, author: str) -> dict:
    text = (text or "").strip()
    if not text:
        raise ValueError("an edited caption cannot be empty; reject the caption instead")
    _current(ws, image_id)
    with ws.store.transaction():
        ws.store.add_caption(image_id, text, status="edited", origin="human", author=_require_author(author),
                             flags=check_caption(text))
        tag_image(ws, image_id, text)
    return ws.store.current_caption(image_id)


def bulk_approve_unflagged(ws: Workspace, author: str, statuses: tuple[str, ...] = ("generated", "imported", "edited")) -> int:
    """Approve every current caption with no flag whose status is one of ``statuses``; returns how many."""
    _require_author(author)
    n = 0
    with ws.store.transaction():
        for status in statuses:
            while True:
                rows, _ = ws.store.caption_queue(status=status, flag="none", limit=500)
                if not rows:
                    break
                for r in rows:
                    ws.store.add_caption(r["image_id"], r["text"], status="approved", origin="human", author=author)
                    n += 1
    return n
