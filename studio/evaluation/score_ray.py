"""Evaluation scoring on Ray: each actor loads CLIP and the face pack once and scores batches of
samples with the same :class:`studio.evaluation.metrics.Scorer` as the single-process path."""
from __future__ import annotations

import pickle
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from ..runs.ray_map import map_on_ray


class ScoreActor:
    """One per Ray worker: CLIP + face models loaded once, reference features cached across batches."""

    def __init__(self, clip_model: str, clip_pretrained: str | None, device: str | None, pack_name: str,
                 detector: str, recognizer: str, threads: int = 1):
        from ..dataset.faces import FaceAnalyzer, FacePack, onnx_providers
        from .metrics import ClipSpec, Scorer, load_clip

        analyzer = FaceAnalyzer(FacePack(pack_name, Path(detector), Path(recognizer)), providers=onnx_providers(),
                                session_threads=threads)
        self.scorer = Scorer(load_clip(ClipSpec(clip_model, clip_pretrained), device), analyzer, workers=threads)

    def __call__(self, batch: dict) -> dict:
        inputs = [pickle.loads(p) for p in batch["input"]]  # ScoreInputs pickled by our own driver
        rows = [r for part in self.scorer.score(inputs) for r in part]
        return {"scores": np.array([pickle.dumps(r, protocol=5) for r in rows], dtype=object)}


def score_on_ray(inputs: Sequence, clip_spec, pack, *, device: str | None = None, address: str | None = None,
                 workers: int | None = None, gpus_per_worker: float = 0.0, batch_size: int = 16,
                 progress: Callable[..., Iterable] | None = None) -> Iterator[list[dict]]:
    """Yield the score dicts of each batch as it arrives (what ``Scorer.score`` yields locally)."""
    from .metrics import check_attributes

    check_attributes(inputs)
    model, pretrained = clip_spec.open_clip_args()  # a folder travels as its absolute path
    rows = [{"input": pickle.dumps(i, protocol=5)} for i in inputs]
    for b in map_on_ray(rows, ScoreActor, (model, pretrained, device, pack.name, str(pack.detector),
                                           str(pack.recognizer)),
                        address=address, workers=workers, gpus_per_worker=gpus_per_worker, batch_size=batch_size,
                        progress=progress, desc="scoring (ray)"):
        yield [pickle.loads(s) for s in b["scores"]]
