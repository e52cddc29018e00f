"""Person splits, cross-training pairs and cached perceptual hashes."""
from __future__ import annotations

from collections.abc import Iterable

from .base import marks, now

SPLITS = ("train", "validation", "test")


class PairsMixin:
    # -- splits ------------------------------------------------------------------------------
    def kept_persons(self) -> list[tuple[int, str, int]]:
        """(person id, name, kept images) for every person with at least one kept image."""
        return [tuple(r) for r in self.conn.execute(
            """SELECT p.id, p.name, COUNT(*) FROM images i JOIN persons p ON p.id = i.person_id
               JOIN curation c ON c.image_id = i.id WHERE c.passed = 1 GROUP BY p.id ORDER BY p.name""")]

    def splits(self) -> dict[str, str]:
        """Person name -> split."""
        return {r[0]: r[1] for r in self.conn.execute(
            "SELECT p.name, s.split FROM splits s JOIN persons p ON p.id = s.person_id")}

    def save_splits(self, assignment: dict[int, str], seed: int, run_id: int | None, replace: bool) -> None:
        """Store person id -> split; ``replace`` drops every earlier assignment (and the pairs built on it)."""
        bad = {s for s in assignment.values() if s not in SPLITS}
        if bad:
            raise ValueError(f"unknown split(s) {sorted(bad)}; one of {SPLITS}")
        with self.transaction() as conn:
            if replace:
                conn.execute("DELETE FROM splits")
                conn.execute("DELETE FROM pairs")
            conn.executemany(
                "INSERT OR IGNORE INTO splits(person_id, split, seed, run_id, assigned_at) VALUES (?, ?, ?, ?, ?)",
                [(pid, split, seed, run_id, now()) for pid, split in assignment.items()])

    def split_counts(self) -> list[dict]:
        """Per split: persons, images and kept images (Table 1 per split)."""
        rows = self.conn.execute(
            """SELECT COALESCE(s.split, 'unassigned') AS split, COUNT(DISTINCT i.person_id) AS persons,
                      COUNT(*) AS images, SUM(COALESCE(c.passed, 0)) AS kept
               FROM images i LEFT JOIN splits s ON s.person_id = i.person_id
               LEFT JOIN curation c ON c.image_id = i.id GROUP BY 1""").fetchall()
        order = {s: n for n, s in enumerate(SPLITS + ("unassigned",))}
        return sorted((dict(r) for r in rows), key=lambda r: order.get(r["split"], 9))

    # -- pairing inputs ------------------------------------------------------------------------
    def pairing_candidates(self, split: str) -> list[dict]:
        """Kept images of the persons in ``split`` with their subject face's pose and embedding row."""
        rows = self.conn.execute(
            """SELECT i.id, i.person_id, p.name AS person, i.media_path, f.pose, f.embedding,
                      f.x1, f.y1, f.x2, f.y2, h.phash, h.face_phash, b.caption_status
               FROM images i JOIN persons p ON p.id = i.person_id
               JOIN splits s ON s.person_id = i.person_id AND s.split = ?
               JOIN curation c ON c.image_id = i.id AND c.passed = 1
               LEFT JOIN faces f ON f.image_id = i.id AND f.face_index = COALESCE(c.subject_face, 0)
               LEFT JOIN image_hashes h ON h.image_id = i.id
               LEFT JOIN browse b ON b.image_id = i.id
               ORDER BY p.name, i.id""", (split,)).fetchall()
        return [dict(r) for r in rows]

    def tags_by_image(self, image_ids: Iterable[int]) -> dict[int, set[str]]:
        ids = list(image_ids)
        out: dict[int, set[str]] = {i: set() for i in ids}
        for start in range(0, len(ids), 900):
            chunk = ids[start:start + 900]
            for image_id, tag in self.conn.execute(
                    f"SELECT image_id, tag FROM image_tags WHERE image_id IN ({marks(chunk)})", chunk):
                out[image_id].add(tag)
        return out

    def save_phashes(self, hashes: dict[int, tuple[str, str | None]]) -> None:
        """image id -> (whole-photo hash, subject-face hash)."""
        with self.transaction() as conn:
            conn.executemany("INSERT OR REPLACE INTO image_hashes(image_id, phash, face_phash) VALUES (?, ?, ?)",
                             [(i, whole, face) for i, (whole, face) in hashes.items()])

    # -- pairs ---------------------------------------------------------------------------------
    def save_pairs(self, split: str, pairs: list[tuple[int, int]], strategy: str, seed: int,
                   run_id: int | None) -> None:
        """Replace the pairs of ``split`` (a machine result: nothing human is stored here)."""
        with self.transaction() as conn:
            conn.execute("DELETE FROM pairs WHERE split = ?", (split,))
            conn.executemany(
                "INSERT INTO pairs(split, target_id, face_id, strategy, seed, run_id) VALUES (?, ?, ?, ?, ?, ?)",
                [(split, i, j, strategy, seed, run_id) for i, j in pairs])

    def pairs(self, split: str = "train") -> list[dict]:
        rows = self.conn.execute(
            """SELECT q.id, q.target_id, q.face_id, q.strategy, q.seed, q.run_id, p.name AS person,
                      ft.pose AS target_pose, ff.pose AS face_pose
               FROM pairs q JOIN images i ON i.id = q.target_id JOIN persons p ON p.id = i.person_id
               LEFT JOIN curation ct ON ct.image_id = q.target_id
               LEFT JOIN faces ft ON ft.image_id = q.target_id AND ft.face_index = COALESCE(ct.subject_face, 0)
               LEFT JOIN curation cf ON cf.image_id = q.face_id
               LEFT JOIN faces ff ON ff.image_id = q.face_id AND ff.face_index = COALESCE(cf.subject_face, 0)
               WHERE q.split = ? ORDER BY p.name, q.target_id, q.face_id""", (split,)).fetchall()
        return [dict(r) for r in rows]
