"""The training data of ``train_instantid.py``: a pair manifest read into tensors.

One manifest line is a target photo i (``image_file``, ``additional_feature`` = caption, ``bbox``,
``landmarks``) and the ArcFace embedding of a *different* photo j of the same person
(``insightface_feature_file``), the layout ``python -m studio manifest`` writes and CrossFaceID's
own script reads. Each photo is resized so its short side is the training resolution and cut to a
square around the face; the landmarks follow the resize and the crop, and the IdentityNet's
keypoint image is drawn in the cropped frame. SDXL's size conditioning gets the photo's original
size and the crop's top-left corner.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from studio.dataset.draw import draw_kps


class ManifestError(ValueError):
    """A manifest that cannot be trained on; the message names the lines and fields."""


@dataclass(frozen=True)
class Sample:
    image: Path
    caption: str
    bbox: tuple[float, float, float, float]
    landmarks: np.ndarray  # (5, 2)
    embedding: Path
    line: int


def read_manifest(path: str | Path, root: str | Path | None = None) -> list[Sample]:
    """Every line checked before training starts: missing files or bad fields are listed by line."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest {path} does not exist")
    root = Path(root) if root else path.parent
    samples, problems = [], []
    with open(path, encoding="utf-8") as fh:
        for n, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                d = json.loads(raw)
                image, emb = root / d["image_file"], root / d["insightface_feature_file"]
                bbox = tuple(float(v) for v in d["bbox"])
                kps = np.asarray(d["landmarks"], dtype=np.float32).reshape(5, 2)
                caption = d.get("additional_feature") or ""
                if len(bbox) != 4 or not isinstance(caption, str):
                    raise ValueError("bbox must have 4 numbers and additional_feature must be text")
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                problems.append(f"line {n}: {type(exc).__name__}: {exc}")
                continue
            for label, p in (("image_file", image), ("insightface_feature_file", emb)):
                if not p.is_file():
                    problems.append(f"line {n}: {label} {p} does not exist")
            samples.append(Sample(image, caption, bbox, kps, emb, n))
    if problems:
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise ManifestError(f"manifest {path}: " + "; ".join(problems[:10]) + more)
    if not samples:
        raise ManifestError(f"manifest {path} has no lines: the split or its pairs are empty "
                            "(run `python -m studio pairs`, then `python -m studio manifest`)")
    return samples


def manifest_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def face_crop(size: tuple[int, int], bbox, resolution: int) -> tuple[float, int, int]:
    """(scale, left, top): resize so the short side is ``resolution``, then a square centred on the face."""
    w, h = size
    scale = resolution / min(w, h)
    sw, sh = round(w * scale), round(h * scale)
    cx, cy = (bbox[0] + bbox[2]) / 2 * scale, (bbox[1] + bbox[3]) / 2 * scale
    left = int(min(max(cx - resolution / 2, 0), sw - resolution))
    top = int(min(max(cy - resolution / 2, 0), sh - resolution))
    return scale, left, top


class PairDataset(torch.utils.data.Dataset):
    """Manifest lines as training tensors; with ``cache`` the VAE latents and text embeddings come from it."""

    def __init__(self, samples: list[Sample], resolution: int, cache: "FeatureCache | None" = None):
        self.samples, self.resolution, self.cache = samples, resolution, cache

    def __len__(self) -> int:
        return len(self.samples)

    def geometry(self, idx: int) -> tuple[Image.Image | None, dict]:
        s = self.samples[idx]
        with Image.open(s.image) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")
        scale, left, top = face_crop(im.size, s.bbox, self.resolution)
        return im, {"scale": scale, "left": left, "top": top, "original_size": (im.height, im.width)}

    def pixels(self, im: Image.Image, g: dict) -> torch.Tensor:
        r = self.resolution
        sw, sh = round(im.width * g["scale"]), round(im.height * g["scale"])
        im = im.resize((sw, sh), Image.BICUBIC).crop((g["left"], g["top"], g["left"] + r, g["top"] + r))
        return torch.from_numpy(np.asarray(im, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)

    def __getitem__(self, idx: int) -> dict:
        s = self.samples[idx]
        im, g = self.geometry(idx)
        kps = s.landmarks * g["scale"] - np.array([g["left"], g["top"]], dtype=np.float32)
        kps_image = np.asarray(draw_kps(self.resolution, self.resolution, kps), dtype=np.float32) / 255.0
        item = {
            "index": torch.tensor(idx),
            "kps_image": torch.from_numpy(kps_image).permute(2, 0, 1),
            "face_embed": torch.from_numpy(np.load(s.embedding).astype(np.float32).reshape(-1)),
            "caption": s.caption,
            "time_ids": torch.tensor([*g["original_size"], g["top"], g["left"], self.resolution, self.resolution],
                                     dtype=torch.float32),
        }
        if self.cache is not None:
            item.update(self.cache.load(idx))
        else:
            item["pixel_values"] = self.pixels(im, g)
        return item


def collate(items: list[dict]) -> dict:
    out = {}
    for key in items[0]:
        values = [it[key] for it in items]
        out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return out


class FeatureCache:
    """VAE latents and text embeddings per sample on disk, so the VAE and text encoders need not stay on the GPU.

    Keyed by the image, caption and resolution, so a changed manifest line is encoded again.
    """

    def __init__(self, root: Path, samples: list[Sample], resolution: int):
        self.root, self.samples, self.resolution = Path(root), samples, resolution
        self.root.mkdir(parents=True, exist_ok=True)
        self._keys = [self._digest(s) for s in samples]  # once: every step loads by key

    def _digest(self, s: Sample) -> Path:
        digest = hashlib.sha1(f"{s.image.resolve()}|{s.image.stat().st_size}|{s.caption}|{s.bbox}|{self.resolution}"
                              .encode()).hexdigest()
        return self.root / f"{digest}.pt"

    def key(self, idx: int) -> Path:
        return self._keys[idx]

    def missing(self, indices) -> list[int]:
        return [i for i in indices if not self.key(i).is_file()]

    def save(self, idx: int, tensors: dict) -> None:
        path = self.key(idx)
        tmp = path.with_suffix(".tmp")
        torch.save({k: v.detach().cpu() for k, v in tensors.items()}, tmp)
        tmp.replace(path)

    def load(self, idx: int) -> dict:
        return torch.load(self.key(idx), map_location="cpu", weights_only=True)
