"""Caption review: approve, reject, edit, regenerate; every action is a new version with who and when.

Each action names the version the reviewer saw. The store checks, in the same transaction as
the write, that it is still the current one, so two reviewers (or a review racing a regenerate)
never approve text nobody saw or put older text back over an edit.
"""
from __future__ import annotations

from ..dataset.attributes import tag_image
from .checks import check_caption
from ..codes import CAPTION_VERSION_STATUSES
from ..store import StaleCaptionError
from ..workspace import Workspace

REVIEW_STATUSES = CAPTION_VERSION_STATUSES

__all__ = ["REVIEW_STATUSES", "StaleCaptionError", "approve", "reject", "edit", "bulk_approve_unflagged"]


def _seen(ws: Workspace, image_id: int, version: int) -> dict:
    """The version the reviewer acted on (versions never change once written)."""
    for h in ws.store.caption_history(image_id):
        if h["version"] == int(version):
            return h
    if ws.store.current_caption(image_id) is None:
        raise ValueError(f"image {image_id} has no caption to review")
    raise ValueError(f"image {image_id} has no caption version {version}")


def _require_author(author: str | None) -> str:
    if not author:
        raise ValueError("a review action needs the reviewer's name")
    return author


def approve(ws: Workspace, image_id: int, version: int, author: str) -> dict:
    """Approve the text of ``version``, which must still be the current caption."""
    seen = _seen(ws, image_id, version)
    ws.store.add_caption(image_id, seen["text"], status="approved", origin="human", author=_require_author(author),
                         flags=seen["flags"], expected_version=version)
    return ws.store.current_caption(image_id)


def reject(ws: Workspace, image_id: int, version: int, author: str) -> dict:
    seen = _seen(ws, image_id, version)
    with ws.store.transaction():
        ws.store.add_caption(image_id, seen["text"], status="rejected", origin="human", author=_require_author(author),
                             flags=seen["flags"], expected_version=version)
        tag_image(ws, image_id, None)
    return ws.store.current_caption(image_id)


def edit(ws: Workspace, image_id: int, version: int, text: str, author: str) -> dict:
    """Replace the caption the reviewer saw (``version``) with their text."""
    text = (text or "").strip()
    if not text:
        raise ValueError("an edited caption cannot be empty; reject the caption instead")
    _seen(ws, image_id, version)
    with ws.store.transaction():
        ws.store.add_caption(image_id, text, status="edited", origin="human", author=_require_author(author),
                             flags=check_caption(text), expected_version=version)
        tag_image(ws, image_id, text)
    return ws.store.current_caption(image_id)


def bulk_approve_unflagged(ws: Workspace, author: str, statuses: tuple[str, ...] = ("generated", "imported", "edited"),
                           batch: int = 200) -> int:
    """Approve every current caption with no flag whose status is one of ``statuses``; returns how many.

    Each batch is read and written in one short transaction, so every approved text is the
    current one and other reviewers never wait long.
    """
    _require_author(author)
    n = 0
    for status in statuses:
        while True:
            with ws.store.transaction():
                rows, _ = ws.store.caption_queue(status=status, flag="none", limit=batch)
                for r in rows:
                    ws.store.add_caption(r["image_id"], r["text"], status="approved", origin="human", author=author,
                                         expected_version=r["version"])
            n += len(rows)
            if len(rows) < batch:
                break
    return n
