"""The face-analysis stage: run the detector + recognizer over every image not yet analyzed.

On the CPU, two small ONNX sessions each pinned to one thread and fed by as many worker
threads as there are cores beat one session using every core (the models are too small for
intra-op parallelism to pay). Each image's faces are committed on their own, so a killed run
resumes where it stopped, and a run with another pack re-analyzes what that pack has not seen.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .faces import FaceAnalyzer, FacePack, onnx_providers, resolve_pack
from ..images import ImageError, load_rgb
from ..runs.parallel import bounded_map, usable_cpus
from ..workspace import Workspace

log = logging.getLogger(__name__)


@dataclass
class AnalyzeReport:
    pack: str
    analyzed: int = 0
    failed: int = 0
    skipped: int = 0
    note: str = ""
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"pack": self.pack, "analyzed": self.analyzed, "failed": self.failed,
                "already_analyzed": self.skipped, "note": self.note, "errors": self.errors}


def analyze(ws: Workspace, pack_spec: str = "auto", *, redo: bool = False, workers: int | None = None,
            progress: Callable[..., Iterable] | None = None, pack: FacePack | None = None,
            run_id: int | None = None, engine: str = "local", address: str | None = None,
            gpus_per_worker: float = 0.0) -> AnalyzeReport:
    """Detect faces, keypoints, embeddings and pose for every image that needs it.

    ``engine``: "local" (threads in this process, the default) or "ray" (an actor pool on a Ray
    cluster at ``address``, or a local Ray when None; ``workers`` actors).
    """
    if engine not in ("local", "ray"):
        raise ValueError(f"engine must be 'local' or 'ray', got {engine!r}")
    pack = pack or resolve_pack(pack_spec)
    store = ws.store
    todo = store.images_to_analyze(pack.label, redo=redo)
    report = AnalyzeReport(pack=pack.label, note=pack.note, skipped=store.counts()["images"] - len(todo))
    if not todo:
        return report

    def save(image_id: int, faces, error: str | None) -> None:
        if error is not None:
            store.save_analysis(image_id, pack.label, None, None, error=error, run_id=run_id)
            report.failed += 1
            report.errors.append(f"image {image_id}: {error}")
            return
        ratio = max((f["area_ratio"] for f in faces), default=0.0)
        store.save_analysis(image_id, pack.label, faces, ratio, run_id=run_id)
        report.analyzed += 1

    if engine == "ray":
        from .analyze_ray import analyze_on_ray

        analyze_on_ray(ws, pack, todo, save, address=address, workers=workers, gpus_per_worker=gpus_per_worker,
                       progress=progress)
        return report
    providers = onnx_providers()
    workers = workers or (1 if providers[0] != "CPUExecutionProvider" else usable_cpus())
    on_cpu = providers[0] == "CPUExecutionProvider"
    analyzer = FaceAnalyzer(pack, providers=providers, session_threads=1 if on_cpu and workers > 1 else 0)

    def work(row: tuple[int, str]):
        image_id, rel = row
        try:
            img = load_rgb(ws.media_path(rel))
            return image_id, analyzer.analyze(img.rgb), None
        except ImageError as exc:
            return image_id, None, f"{exc.code}: {exc.detail}"

    with ThreadPoolExecutor(workers) as pool:
        results: Iterable = bounded_map(pool, work, todo, ahead=2 * workers)
        if progress is not None:
            results = progress(results, total=len(todo), desc="analyze", unit="img")
        for image_id, faces, error in results:
            save(image_id, faces, error)
    return report
