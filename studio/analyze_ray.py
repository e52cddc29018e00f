"""Face analysis on Ray: the same detector + recognizer, spread over a Ray cluster's workers.

Ray Data's ``map_batches`` runs :class:`FaceActor` in an actor pool: each actor loads the face
pack once and analyses batches of images (1 CPU each, or a share of a GPU with onnxruntime-gpu).
The driver streams the results back and is the only writer, so SQLite stays consistent and each
image is committed on its own: a killed run resumes with what is not committed yet. Without an
address Ray starts locally; on a cluster (``--address auto`` on a node of it) the workspace must be
on storage every node reads at the same path, and the studio package travels with the job.
"""
from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np


class FaceActor:
    """One per Ray worker: the face models are loaded once, then every batch reuses them."""

    def __init__(self, name: str, detector: str, recognizer: str, threads: int = 1):
        from .faces import FaceAnalyzer, FacePack, onnx_providers

        self.analyzer = FaceAnalyzer(FacePack(name, Path(detector), Path(recognizer)), providers=onnx_providers(),
                                     session_threads=threads)

    def __call__(self, batch: dict) -> dict:
        from .images import ImageError, load_rgb

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
    import ray

    import studio

    started = not ray.is_initialized()
    if started:
        local = address is None  # "local": always a fresh local instance, never one left by another process
        ray.init(address="local" if local else address, num_cpus=(workers or os.cpu_count() or 1) if local else None,
                 include_dashboard=False, log_to_driver=False, configure_logging=False,
                 runtime_env={"py_modules": [str(Path(studio.__file__).parent)]})
    try:
        size = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        ds = ray.data.from_items([{"image_id": i, "path": str(ws.media_path(rel))} for i, rel in todo],
                                 override_num_blocks=max(1, min(len(todo), size * 4)))
        results = ds.map_batches(FaceActor, fn_constructor_args=(pack.name, str(pack.detector), str(pack.recognizer)),
                                 batch_size=batch_size, concurrency=size, num_cpus=1, num_gpus=gpus_per_worker or None,
                                 batch_format="numpy")
        rows: Iterable = (row for b in results.iter_batches(batch_size=batch_size, batch_format="numpy")
                          for row in zip(b["image_id"], b["faces"], b["error"]))
        if progress is not None:
            rows = progress(rows, total=len(todo), desc="analyze (ray)", unit="img")
        pending: list = []

        def flush() -> None:
            with ws.store.transaction():  # one commit per batch: the driver, the only writer, keeps up
                for image_id, payload, error in pending:
                    if error:
                        save(int(image_id), None, str(error))
                    else:
                        save(int(image_id), pickle.loads(payload), None)  # our own actors' output
            pending.clear()

        for row in rows:
            pending.append(row)
            if len(pending) >= batch_size:
                flush()
        if pending:
            flush()
    finally:
        if started:
            ray.shutdown()
