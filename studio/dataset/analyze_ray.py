"""Face analysis on Ray: the same detector + recognizer in an actor pool (see :mod:`studio.runs.ray_map`)."""
from __future__ import annotations

import pickle
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from ..runs.ray_map import map_on_ray


class FaceActor:
    """One per Ray worker: the face models are loaded once, then every batch reuses them."""

    def __init__(self, name: str, detector: str, recognizer: str, threads: int = 1):
        from .faces import FaceAnalyzer, FacePack, onnx_providers

        self.analyzer = FaceAnalyzer(FacePack(name, Path(detector), Path(recognizer)), providers=onnx_providers(),
                                     session_threads=threads)

    def __call__(self, batch: dict) -> dict:
        from ..images import ImageError, load_rgb

        faces_out, errors = [], []
        for path in batch["path"]:
            try:
                faces = self.analyzer.analyze(load_rgb(Path(str(path))).rgb)
                faces_out.append(pickle.dumps(faces, protocol=5))  # float32 embeddings travel as they are
                errors.append("")
            except ImageError as exc:
                faces_out.append("")
                errors.append(f"{exc.code}: {exc.detail}")
        return {"image_id": np.asarray(batch["image_id"]), "faces": np.array(faces_out, dtype=object),
                "error": np.array(errors, dtype=object)}


def analyze_on_ray(ws, pack, todo: list[tuple[int, str]], save: Callable[[int, list | None, str | None], None], *,
                   address: str | None = None, workers: int | None = None, gpus_per_worker: float = 0.0,
                   batch_size: int = 8, progress: Callable[..., Iterable] | None = None) -> None:
    """Analyse ``todo`` (image id, media path) on Ray; ``save(image_id, faces, error)`` runs on the driver."""
    rows = [{"image_id": i, "path": str(ws.media_path(rel))} for i, rel in todo]
    for b in map_on_ray(rows, FaceActor, (pack.name, str(pack.detector), str(pack.recognizer)), address=address,
                        workers=workers, gpus_per_worker=gpus_per_worker, batch_size=batch_size, progress=progress,
                        desc="analyze (ray)"):
        with ws.store.transaction():  # one commit per batch: the driver, the only writer, keeps up
            for image_id, payload, error in zip(b["image_id"], b["faces"], b["error"]):
                if error:
                    save(int(image_id), None, str(error))
                else:
                    save(int(image_id), pickle.loads(payload), None)  # our own actors' output
