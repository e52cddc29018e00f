"""Caption versions: every model answer, edit and review is a row; the browse row points at the current one."""
from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence

from ..codes import HUMAN_REVIEWED
from ..codes import CurationStatus
from .base import marks, now


PASS = int(CurationStatus.PASS)


class StaleCaptionError(ValueError):
    """A review action on a caption version that is no longer the current one."""


class CaptionsMixin:
    # -- captions ------------------------------------------------------------------------
    def captioned_keys(self) -> set[str]:
        """Cache keys of every model caption ever stored: a resumed run skips these."""
        return {r[0] for r in self.conn.execute("SELECT DISTINCT cache_key FROM captions WHERE cache_key IS NOT NULL")}

    def images_for_captioning(self, kept_only: bool = True) -> list[tuple[int, str, str]]:
        """(image id, sha256, media path) of the images a caption run covers."""
        sql = "SELECT i.id, i.sha256, i.media_path FROM images i JOIN browse b ON b.image_id = i.id"
        if kept_only:
            sql += f" WHERE b.status = {PASS}"
        return [(int(r[0]), r[1], r[2]) for r in self.conn.execute(sql + " ORDER BY i.id")]

    def add_caption(self, image_id: int, text: str, *, status: str, origin: str, author: str, flags: Sequence[str] = (),
                    model: str | None = None, prompt_version: str | None = None, params: dict | None = None,
                    cache_key: str | None = None, prompt_tokens: int | None = None,
                    completion_tokens: int | None = None, cost_usd: float | None = None,
                    expected_version: int | None = None, overwrite_reviewed: bool = False,
                    run_id: int | None = None) -> tuple[int, bool]:
        """Append a caption version; returns (version, whether it became the current caption).

        A model caption does not displace a human-reviewed one (approved or edited) unless
        ``overwrite_reviewed``; it is kept as a version to compare. ``expected_version`` is the
        version the person acting saw: if another one is current now, nothing is written and
        :class:`StaleCaptionError` says who changed it. Check and write are one transaction.
        """
        with self.transaction() as conn:
            cur = conn.execute(
                """SELECT c.version, c.status, c.author FROM browse b
                   JOIN captions c ON c.image_id = b.image_id AND c.version = b.caption_version
                   WHERE b.image_id = ?""", (image_id,)).fetchone()
            if expected_version is not None and (cur is None or int(cur[0]) != int(expected_version)):
                current = f"version {cur[0]} ({cur[1]} by {cur[2]})" if cur else "no caption"
                raise StaleCaptionError(
                    f"the caption of image {image_id} changed since you opened it: you saw version {expected_version}, "
                    f"the current one is {current}. Reload it and act again.")
            make_current = overwrite_reviewed or origin != "model" or cur is None or cur[1] not in HUMAN_REVIEWED
            version = conn.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM captions WHERE image_id = ?",
                                   (image_id,)).fetchone()[0]
            conn.execute(
                """INSERT INTO captions(image_id, version, text, status, origin, model, prompt_version, params, cache_key,
                                        prompt_tokens, completion_tokens, cost_usd, flags, author, created_at, run_id)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (image_id, version, text, status, origin, model, prompt_version,
                 json.dumps(params, sort_keys=True) if params is not None else None, cache_key, prompt_tokens,
                 completion_tokens, cost_usd, json.dumps(list(flags)), author, now(), run_id),
            )
            if not make_current:
                return int(version), False
            conn.execute("UPDATE browse SET caption = ?, caption_status = ?, caption_version = ? WHERE image_id = ?",
                         (text, status, version, image_id))
            conn.execute("DELETE FROM caption_fts WHERE rowid = ?", (image_id,))
            if text:
                conn.execute("INSERT INTO caption_fts(rowid, caption) VALUES (?, ?)", (image_id, text))
            return int(version), True

    def caption_history(self, image_id: int) -> list[dict]:
        rows = self.conn.execute("SELECT * FROM captions WHERE image_id = ? ORDER BY version", (image_id,)).fetchall()
        return [_caption_row(r) for r in rows]

    def current_caption(self, image_id: int) -> dict | None:
        row = self.conn.execute(
            """SELECT c.* FROM captions c JOIN browse b ON b.image_id = c.image_id AND c.version = b.caption_version
               WHERE c.image_id = ?""", (image_id,)).fetchone()
        return _caption_row(row) if row else None

    def caption_queue(self, *, status: str | None = None, flag: str | None = None, person: str | None = None,
                      limit: int = 50, offset: int = 0) -> tuple[list[dict], int]:
        """Current captions (newest version per image) filtered for review, oldest image first."""
        where, args = ["c.version = b.caption_version"], []
        if status:
            where.append("c.status = ?")
            args.append(status)
        if flag == "any":
            where.append("c.flags != '[]'")
        elif flag == "none":
            where.append("c.flags = '[]'")
        elif flag:
            where.append("EXISTS (SELECT 1 FROM json_each(c.flags) WHERE value = ?)")
            args.append(flag)
        if person:
            where.append("b.person_name = ?")
            args.append(person)
        clause = " AND ".join(where)
        base = f"FROM captions c JOIN browse b ON b.image_id = c.image_id JOIN images i ON i.id = c.image_id WHERE {clause}"
        total = self.conn.execute(f"SELECT COUNT(*) {base}", args).fetchone()[0]
        rows = self.conn.execute(
            f"SELECT c.*, b.person_name AS person, i.media_path {base} ORDER BY c.image_id LIMIT ? OFFSET ?",
            args + [limit, offset]).fetchall()
        out = []
        for r in rows:
            d = _caption_row(r)
            d["person"], d["media_path"] = r["person"], r["media_path"]
            out.append(d)
        return out, int(total)

    def caption_usage(self) -> dict:
        row = self.conn.execute(
            """SELECT COUNT(*), COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0),
                      COALESCE(SUM(cost_usd), 0) FROM captions WHERE origin = 'model'""").fetchone()
        return {"model_captions": int(row[0]), "prompt_tokens": int(row[1]), "completion_tokens": int(row[2]),
                "cost_usd": round(float(row[3]), 6)}

    def current_caption_flags(self, image_ids: Sequence[int] | None = None) -> dict[int, tuple[str, list[str]]]:
        """image id -> (status, flags) of its current caption (of every image, or of ``image_ids``)."""
        where = f"WHERE b.image_id IN ({marks(image_ids)})" if image_ids is not None else ""
        return {int(r[0]): (r[1], json.loads(r[2])) for r in self.conn.execute(
            f"""SELECT c.image_id, c.status, c.flags FROM browse b
                JOIN captions c ON c.image_id = b.image_id AND c.version = b.caption_version {where}""",
            tuple(image_ids or ()))}

    def caption_status_counts(self) -> list[tuple[str, int]]:
        return [(r[0], int(r[1])) for r in self.conn.execute(
            "SELECT caption_status, COUNT(*) FROM browse GROUP BY caption_status")]

    def current_captions(self) -> list[tuple[int, str, str]]:
        """(image id, text, status) of every image's current caption."""
        return [(int(r[0]), r[1], r[2]) for r in self.conn.execute(
            "SELECT image_id, caption, caption_status FROM browse WHERE caption IS NOT NULL")]


def _caption_row(r: sqlite3.Row) -> dict:
    d = dict(r)
    d["flags"] = json.loads(d["flags"])
    d["params"] = json.loads(d["params"]) if d["params"] else None
    return d
