"""Human-evaluation studies: items, per-annotator assignments in a shuffled order, scores with history."""
from __future__ import annotations

import time
from collections.abc import Sequence

from ..codes import CRITERIA, StudyStatus
from .base import now



class StudiesMixin:
    def create_study(self, *, name: str, instructions: str, per_item: int, seed: int, source: str, created_by: str,
                     items: Sequence[dict], assignments: dict[str, list[int]]) -> int:
        """A study, its items and each annotator's ordered item list (item indexes), in one transaction."""
        with self.transaction() as conn:
            if conn.execute("SELECT 1 FROM studies WHERE name = ?", (name,)).fetchone():
                raise ValueError(f"a study named {name!r} exists; choose another name")
            sid = int(conn.execute(
                """INSERT INTO studies(name, status, instructions, per_item, seed, source, created_by, created_at)
                   VALUES (?, 'draft', ?, ?, ?, ?, ?, ?)""",
                (name, instructions, per_item, seed, source, created_by, now())).lastrowid)
            ids: dict[int, int] = {}
            for it in sorted(items, key=lambda x: x.get("duplicate_of") is not None):  # originals first
                ids[it["idx"]] = int(conn.execute(
                    """INSERT INTO study_items(study_id, idx, kind, duplicate_of, model, prompt, image_path, face_path,
                                               generation_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                    (sid, it["idx"], "duplicate" if it.get("duplicate_of") is not None else "sample",
                     ids.get(it.get("duplicate_of")), it["model"], it["prompt"], it["image_path"], it["face_path"],
                     it.get("generation_id"))).lastrowid)
            conn.executemany(
                "INSERT INTO study_assignments(study_id, annotator, position, item_id) VALUES (?, ?, ?, ?)",
                [(sid, who, pos, ids[idx]) for who, order in assignments.items() for pos, idx in enumerate(order, 1)])
            return sid

    def studies(self) -> list[dict]:
        rows = self.conn.execute(
            """SELECT s.*, (SELECT COUNT(*) FROM study_items i WHERE i.study_id = s.id) AS items,
                      (SELECT COUNT(DISTINCT annotator) FROM study_assignments a WHERE a.study_id = s.id) AS annotators,
                      (SELECT COUNT(*) FROM study_assignments a WHERE a.study_id = s.id) AS assigned,
                      (SELECT COUNT(*) FROM study_assignments a WHERE a.study_id = s.id AND a.done = 1) AS done
               FROM studies s ORDER BY s.id""").fetchall()
        return [dict(r) for r in rows]

    def study(self, name: str) -> dict | None:
        return next((s for s in self.studies() if s["name"] == name), None)

    def set_study_status(self, study_id: int, status: str) -> None:
        column = {StudyStatus.OPEN: "opened_at", StudyStatus.CLOSED: "closed_at"}[status]
        with self.transaction() as conn:
            conn.execute(f"UPDATE studies SET status = ?, {column} = ? WHERE id = ?", (status, now(), study_id))

    def annotator_studies(self, annotator: str) -> list[dict]:
        """Open studies with items for ``annotator``: id, name, instructions, done and total."""
        rows = self.conn.execute(
            """SELECT s.id, s.name, s.instructions, COUNT(*) AS total, SUM(a.done) AS done
               FROM studies s JOIN study_assignments a ON a.study_id = s.id AND a.annotator = ?
               WHERE s.status = 'open' GROUP BY s.id ORDER BY s.id""", (annotator,)).fetchall()
        return [dict(r) for r in rows]

    def annotator_study(self, study: str | int, annotator: str) -> dict | None:
        """A study (by name or id) with whether ``annotator`` has items in it: one indexed lookup, no counting."""
        col = "id" if isinstance(study, int) else "name"
        r = self.conn.execute(
            f"""SELECT s.id, s.name, s.status, s.instructions,
                       EXISTS (SELECT 1 FROM study_assignments a WHERE a.study_id = s.id AND a.annotator = ?) AS assigned
                FROM studies s WHERE s.{col} = ?""", (annotator, study)).fetchone()
        return dict(r) if r else None

    def annotator_progress(self, study_id: int, annotator: str) -> tuple[int, int, int | None]:
        """(done, total, first position not yet fully scored or None)."""
        total, done = self.conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(done), 0) FROM study_assignments WHERE study_id = ? AND annotator = ?",
            (study_id, annotator)).fetchone()
        first = self.conn.execute(
            "SELECT MIN(position) FROM study_assignments WHERE study_id = ? AND annotator = ? AND done = 0",
            (study_id, annotator)).fetchone()[0]
        return int(done), int(total), first

    def next_unfinished(self, study_id: int, annotator: str, after: int) -> int | None:
        return self.conn.execute(
            "SELECT MIN(position) FROM study_assignments WHERE study_id = ? AND annotator = ? AND done = 0 AND position > ?",
            (study_id, annotator, after)).fetchone()[0]

    def assignment(self, study_id: int, annotator: str, position: int) -> dict | None:
        """The item at ``position`` of an annotator's list, with their own scores and comment."""
        r = self.conn.execute(
            """SELECT a.position, a.item_id, a.done, i.prompt, i.image_path, i.face_path, i.model, i.kind
               FROM study_assignments a JOIN study_items i ON i.id = a.item_id
               WHERE a.study_id = ? AND a.annotator = ? AND a.position = ?""",
            (study_id, annotator, position)).fetchone()
        if r is None:
            return None
        d = dict(r)
        d["scores"] = {c: s for c, s in self.conn.execute(
            "SELECT criterion, score FROM scores WHERE study_id = ? AND item_id = ? AND annotator = ?",
            (study_id, d["item_id"], annotator))}
        row = self.conn.execute("SELECT comment FROM item_comments WHERE study_id = ? AND item_id = ? AND annotator = ?",
                                (study_id, d["item_id"], annotator)).fetchone()
        d["comment"] = row[0] if row else ""
        return d

    def mark_shown(self, study_id: int, annotator: str, position: int) -> None:
        """When the item was put in front of the annotator (time spent is measured from here, server side)."""
        with self.transaction() as conn:
            conn.execute("UPDATE study_assignments SET shown_at = ? WHERE study_id = ? AND annotator = ? AND position = ?",
                         (time.time(), study_id, annotator, position))

    def save_scores(self, study_id: int, annotator: str, position: int, scores: dict[str, int],
                    comment: str | None) -> dict:
        """Write an annotator's scores for one item in one transaction; a changed score keeps its history.

        Refused (ValueError, nothing written) when the study is not open or the position is not theirs.
        Returns {"changed": n scores written or changed, "done": whether all criteria are scored}.
        """
        with self.transaction() as conn:
            status = conn.execute("SELECT status FROM studies WHERE id = ?", (study_id,)).fetchone()
            if status is None:
                raise ValueError(f"no study {study_id}")
            if status[0] != StudyStatus.OPEN:
                raise ValueError(f"the study is {status[0]}: scores are accepted only while it is open")
            a = conn.execute("SELECT item_id, shown_at FROM study_assignments WHERE study_id = ? AND annotator = ? "
                             "AND position = ?", (study_id, annotator, position)).fetchone()
            if a is None:
                raise ValueError(f"item {position} is not one of your items in this study")
            item_id, shown = a
            seconds = None if shown is None else round(min(time.time() - shown, 3600.0), 2)
            stamp, changed = now(), 0
            old = dict(conn.execute("SELECT criterion, score FROM scores WHERE study_id = ? AND item_id = ? "
                                    "AND annotator = ?", (study_id, item_id, annotator)).fetchall())
            for criterion, score in scores.items():
                if old.get(criterion) == score:
                    continue  # the same score again: nothing changes, no history row
                changed += 1
                _put_score(conn, study_id, item_id, annotator, criterion, score, seconds, stamp)
            if comment is not None:
                _put_comment(conn, study_id, item_id, annotator, comment, stamp)
            done = _mark_done(conn, study_id, annotator, position, set(old) | set(scores))
            return {"changed": changed, "done": done}

    def study_scores(self, study_id: int) -> list[dict]:
        """Every score of a study in long form, with the item's model and index (for results and exports)."""
        rows = self.conn.execute(
            """SELECT i.idx, i.id AS item_id, i.kind, d.idx AS duplicate_of, i.model, i.prompt, i.image_path,
                      s.annotator, s.criterion, s.score, s.seconds, s.updated_at
               FROM scores s JOIN study_items i ON i.id = s.item_id LEFT JOIN study_items d ON d.id = i.duplicate_of
               WHERE s.study_id = ? ORDER BY i.idx, s.annotator, s.criterion""", (study_id,)).fetchall()
        return [dict(r) for r in rows]

    def study_comments(self, study_id: int) -> list[dict]:
        """Every non-empty comment of a study: item id, annotator, comment."""
        return [dict(r) for r in self.conn.execute(
            "SELECT item_id, annotator, comment FROM item_comments WHERE study_id = ? AND comment != '' "
            "ORDER BY item_id, annotator", (study_id,))]

    def import_study_scores(self, study_id: int, scores: dict[tuple[str, int], dict[str, int]],
                            comments: dict[tuple[str, int], str], replace: bool = False) -> dict:
        """Scores and comments made elsewhere (keyed by (annotator, item id)), in one transaction.

        An annotator without that item gets it at the end of their list. A score the studio holds with
        another value is kept unless ``replace`` (counted in ``kept_different``); changes keep history."""
        added = changed = kept = same = assigned = 0
        with self.transaction() as conn:
            stamp = now()
            for (annotator, item_id) in sorted(set(scores) | set(comments)):
                row = conn.execute("SELECT position FROM study_assignments WHERE study_id = ? AND annotator = ? "
                                   "AND item_id = ?", (study_id, annotator, item_id)).fetchone()
                if row is None:
                    position = 1 + conn.execute("SELECT COALESCE(MAX(position), 0) FROM study_assignments "
                                                "WHERE study_id = ? AND annotator = ?", (study_id, annotator)).fetchone()[0]
                    conn.execute("INSERT INTO study_assignments(study_id, annotator, position, item_id) VALUES (?, ?, ?, ?)",
                                 (study_id, annotator, position, item_id))
                    assigned += 1
                else:
                    position = row[0]
                old = dict(conn.execute("SELECT criterion, score FROM scores WHERE study_id = ? AND item_id = ? "
                                        "AND annotator = ?", (study_id, item_id, annotator)).fetchall())
                for criterion, score in scores.get((annotator, item_id), {}).items():
                    if old.get(criterion) == score:
                        same += 1
                        continue
                    if criterion in old and not replace:
                        kept += 1
                        continue
                    added, changed = added + (criterion not in old), changed + (criterion in old)
                    _put_score(conn, study_id, item_id, annotator, criterion, score, None, stamp)  # not timed here
                if (annotator, item_id) in comments:
                    _put_comment(conn, study_id, item_id, annotator, comments[(annotator, item_id)], stamp)
                _mark_done(conn, study_id, annotator, position, set(old) | set(scores.get((annotator, item_id), {})))
        return {"scores_added": added, "scores_changed": changed, "scores_same": same, "kept_different": kept,
                "comments": len(comments), "assignments_added": assigned}

    def study_items(self, study_id: int) -> list[dict]:
        return [dict(r) for r in self.conn.execute("SELECT * FROM study_items WHERE study_id = ? ORDER BY idx",
                                                   (study_id,))]

    def score_history_count(self, study_id: int) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM score_history WHERE study_id = ?", (study_id,)).fetchone()[0])


def _put_score(conn, study_id: int, item_id: int, annotator: str, criterion: str, score: int, seconds: float | None,
               stamp: str) -> None:
    """Write one score (replacing the annotator's earlier one) and add it to the history."""
    conn.execute(
        """INSERT INTO scores(study_id, item_id, annotator, criterion, score, seconds, updated_at)
           VALUES (?, ?, ?, ?, ?, ?, ?)
           ON CONFLICT(study_id, item_id, annotator, criterion)
           DO UPDATE SET score = excluded.score, seconds = excluded.seconds, updated_at = excluded.updated_at""",
        (study_id, item_id, annotator, criterion, score, seconds, stamp))
    conn.execute("INSERT INTO score_history(study_id, item_id, annotator, criterion, score, seconds, created_at)"
                 " VALUES (?, ?, ?, ?, ?, ?, ?)", (study_id, item_id, annotator, criterion, score, seconds, stamp))


def _mark_done(conn, study_id: int, annotator: str, position: int, criteria: set[str]) -> bool:
    """Mark the annotator's item done once every criterion has a score; returns whether it is."""
    done = len(criteria) == len(CRITERIA)
    if done:
        conn.execute("UPDATE study_assignments SET done = 1 WHERE study_id = ? AND annotator = ? AND position = ?",
                     (study_id, annotator, position))
    return done


def _put_comment(conn, study_id: int, item_id: int, annotator: str, comment: str, stamp: str) -> None:
    conn.execute(
        """INSERT INTO item_comments(study_id, item_id, annotator, comment, updated_at) VALUES (?, ?, ?, ?, ?)
           ON CONFLICT(study_id, item_id, annotator) DO UPDATE SET comment = excluded.comment,
           updated_at = excluded.updated_at""", (study_id, item_id, annotator, comment, stamp))
