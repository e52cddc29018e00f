"""Generated samples with every setting that made them."""
from __future__ import annotations

import json

from .base import now


class GenerationsMixin:
    # -- generations ---------------------------------------------------------------------
    def add_generation(self, *, batch: str, model: str, model_spec: dict, settings: dict, reference: str, face: dict,
                       output_path: str, author: str, run_id: int | None = None) -> int:
        with self.transaction() as conn:
            cur = conn.execute(
                """INSERT INTO generations(batch, model, model_spec, settings, reference, face, output_path, author,
                                           created_at, run_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (batch, model, json.dumps(model_spec), json.dumps(settings), reference, json.dumps(face), output_path,
                 author, now(), run_id))
            return int(cur.lastrowid)

    def generations(self, batch: str | None = None) -> list[dict]:
        sql, args = "SELECT * FROM generations", ()
        if batch:
            sql, args = sql + " WHERE batch = ?", (batch,)
        out = []
        for r in self.conn.execute(sql + " ORDER BY id", args):
            d = dict(r)
            for k in ("model_spec", "settings", "face"):
                d[k] = json.loads(d[k])
            out.append(d)
        return out
