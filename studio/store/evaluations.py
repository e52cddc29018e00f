"""Evaluation test sets, generated evaluation samples (reused across runs) and their metric scores."""
from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from .base import marks, now


class EvaluationsMixin:
    # -- test sets ---------------------------------------------------------------------------
    def save_testset(self, *, name: str, kind: str, source: str, settings: dict, pack: str, items: Sequence[dict],
                     run_id: int | None = None, replace: bool = False) -> int:
        """Store a test set and its items in one transaction; an existing name is refused unless ``replace``."""
        with self.transaction() as conn:
            old = conn.execute("SELECT id FROM testsets WHERE name = ?", (name,)).fetchone()
            if old is not None:
                if not replace:
                    raise ValueError(f"a test set named {name!r} exists; choose another name or replace it")
                conn.execute("DELETE FROM testsets WHERE id = ?", (old[0],))
            cur = conn.execute(
                "INSERT INTO testsets(name, kind, source, settings, pack, created_at, run_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (name, kind, source, json.dumps(settings), pack, now(), run_id))
            tid = int(cur.lastrowid)
            conn.executemany(
                """INSERT INTO testset_items(testset_id, idx, person, input_image_id, input_path, face, embedding,
                                             prompt, attribute, target_image_id, target_path)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                [(tid, i, it.get("person"), it.get("input_image_id"), it["input_path"], json.dumps(it["face"]),
                  np.asarray(it["embedding"], np.float32).tobytes(), it["prompt"], it.get("attribute"),
                  it.get("target_image_id"), it.get("target_path")) for i, it in enumerate(items)])
            return tid

    def testsets(self) -> list[dict]:
        rows = self.conn.execute(
            """SELECT t.*, COUNT(i.id) AS items FROM testsets t LEFT JOIN testset_items i ON i.testset_id = t.id
               GROUP BY t.id ORDER BY t.id""").fetchall()
        return [{**dict(r), "settings": json.loads(r["settings"])} for r in rows]

    def testset(self, name: str) -> dict | None:
        return next((t for t in self.testsets() if t["name"] == name), None)

    def testset_items(self, testset_id: int) -> list[dict]:
        rows = self.conn.execute("SELECT * FROM testset_items WHERE testset_id = ? ORDER BY idx", (testset_id,))
        return [_item(r) for r in rows]

    def delete_testset(self, name: str) -> bool:
        with self.transaction() as conn:
            return conn.execute("DELETE FROM testsets WHERE name = ?", (name,)).rowcount > 0

    # -- samples -----------------------------------------------------------------------------
    def eval_samples(self, keys: Sequence[str]) -> dict[str, dict]:
        out: dict[str, dict] = {}
        keys = list(keys)
        for start in range(0, len(keys), 900):
            chunk = keys[start:start + 900]
            for r in self.conn.execute(f"SELECT * FROM eval_samples WHERE key IN ({marks(chunk)})", chunk):
                out[r["key"]] = {**dict(r), "settings": json.loads(r["settings"])}
        return out

    def add_eval_sample(self, *, key: str, item_id: int, model: str, ip_scale: float, seed: int, settings: dict,
                        generation_id: int | None, output_path: str, run_id: int | None) -> None:
        """Record a sample (or point an existing key at a regenerated file) and link it to the run."""
        with self.transaction() as conn:
            conn.execute(
                """INSERT INTO eval_samples(key, item_id, model, ip_scale, seed, settings, generation_id, output_path,
                                            run_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT(key) DO UPDATE SET generation_id = excluded.generation_id,
                       output_path = excluded.output_path, run_id = excluded.run_id, created_at = excluded.created_at""",
                (key, item_id, model, ip_scale, seed, json.dumps(settings), generation_id, output_path, run_id, now()))
            conn.execute("DELETE FROM eval_scores WHERE sample_key = ?", (key,))  # scores of a replaced file
            if run_id is not None:
                conn.execute("INSERT OR IGNORE INTO eval_run_samples(run_id, sample_key) VALUES (?, ?)", (run_id, key))

    def link_eval_samples(self, run_id: int, keys: Sequence[str]) -> None:
        with self.transaction() as conn:
            conn.executemany("INSERT OR IGNORE INTO eval_run_samples(run_id, sample_key) VALUES (?, ?)",
                             [(run_id, k) for k in keys])

    # -- scores ------------------------------------------------------------------------------
    def eval_scores(self, keys: Sequence[str], scorer: str) -> dict[str, dict]:
        out: dict[str, dict] = {}
        keys = list(keys)
        for start in range(0, len(keys), 900):
            chunk = keys[start:start + 900]
            for r in self.conn.execute(
                    f"SELECT * FROM eval_scores WHERE scorer = ? AND sample_key IN ({marks(chunk)})", [scorer, *chunk]):
                out[r["sample_key"]] = dict(r)
        return out

    def save_eval_scores(self, scorer: str, rows: Sequence[dict], run_id: int | None) -> None:
        with self.transaction() as conn:
            conn.executemany(
                """INSERT OR REPLACE INTO eval_scores(sample_key, scorer, clip_t, clip_i, face_sim, faces, attribute,
                                                     attr_score, attr_correct, yaw, pitch, pose, run_id, scored_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                [(r["key"], scorer, r.get("clip_t"), r.get("clip_i"), r.get("face_sim"), int(r["faces"]),
                  r.get("attribute"), r.get("attr_score"),
                  None if r.get("attr_correct") is None else int(bool(r["attr_correct"])),
                  r.get("yaw"), r.get("pitch"), r.get("pose"), run_id, now()) for r in rows])

    def eval_run_rows(self, run_id: int, scorer: str) -> list[dict]:
        """Every sample of an evaluation run with its test set, item and scores (None where not scored)."""
        rows = self.conn.execute(
            """SELECT s.key, s.model, s.ip_scale, s.seed, s.output_path, s.generation_id, i.id AS item_id, i.idx,
                      i.person, i.prompt, i.attribute AS asked, i.input_path, i.target_path, t.name AS testset,
                      t.kind, t.pack AS testset_pack, sc.clip_t, sc.clip_i, sc.face_sim, sc.faces, sc.attribute,
                      sc.attr_score, sc.attr_correct, sc.yaw, sc.pitch, sc.pose, sc.scorer
               FROM eval_run_samples r JOIN eval_samples s ON s.key = r.sample_key
               JOIN testset_items i ON i.id = s.item_id JOIN testsets t ON t.id = i.testset_id
               LEFT JOIN eval_scores sc ON sc.sample_key = s.key AND sc.scorer = ?
               WHERE r.run_id = ? ORDER BY t.name, s.model, s.ip_scale, i.idx""", (scorer, run_id)).fetchall()
        return [dict(r) for r in rows]

    # -- what a test set is built from -------------------------------------------------------
    def testset_candidates(self, split: str | None, persons: Sequence[str] | None) -> list[dict]:
        """Kept images (of a split's persons, or of named persons) with their subject face and caption."""
        where, args = ["c.passed = 1", "f.embedding IS NOT NULL"], []
        join = ""
        if split:
            join = "JOIN splits s ON s.person_id = i.person_id AND s.split = ?"
            args.append(split)
        if persons:
            where.append(f"p.name IN ({marks(persons)})")
            args += list(persons)
        rows = self.conn.execute(
            f"""SELECT i.id, p.name AS person, i.media_path, i.width, i.height, a.pack, f.x1, f.y1, f.x2, f.y2, f.kps,
                       f.embedding, f.pose, f.yaw, f.pitch, b.caption, b.caption_status
                FROM images i JOIN persons p ON p.id = i.person_id {join}
                JOIN curation c ON c.image_id = i.id
                JOIN analyses a ON a.image_id = i.id
                JOIN faces f ON f.image_id = i.id AND f.face_index = COALESCE(c.subject_face, 0)
                LEFT JOIN browse b ON b.image_id = i.id
                WHERE {' AND '.join(where)} ORDER BY p.name, i.id""", args).fetchall()
        out = []
        for r in rows:
            d = dict(r)
            d["kps"] = json.loads(d["kps"])
            d["embedding"] = np.frombuffer(d["embedding"], dtype=np.float32)
            out.append(d)
        return out


def _item(r) -> dict:
    d = dict(r)
    d["face"] = json.loads(d["face"])
    d["embedding"] = np.frombuffer(d["embedding"], dtype=np.float32)
    return d
