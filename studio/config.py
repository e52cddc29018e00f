"""Settings shared by the CLI and the UI: curation thresholds and where things live."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
ASSETS_DIR = REPO_ROOT / "assets"


@dataclass(frozen=True)
class CurationRules:
    """The paper's filtering rules (§3.2) plus the identity-consistency check.

    Defaults follow the paper: 1-3 faces, both sides at least 512 px, the largest face at least
    4% of the image. ``identity_threshold`` is the cosine to the person's robust centroid below
    which an image is flagged as probably mislabelled; persons with fewer than
    ``min_person_images`` usable photos are not judged.
    """

    min_faces: int = 1
    max_faces: int = 3
    min_side: int = 512
    min_face_ratio: float = 0.04
    identity_threshold: float = 0.3
    min_person_images: int = 3
    reject_outliers: bool = True

    def __post_init__(self) -> None:
        problems = []
        if self.min_faces < 1:
            problems.append("min_faces must be >= 1")
        if self.max_faces < self.min_faces:
            problems.append(f"max_faces ({self.max_faces}) must be >= min_faces ({self.min_faces})")
        if self.min_side < 1:
            problems.append("min_side must be >= 1")
        if not 0.0 <= self.min_face_ratio <= 1.0:
            problems.append("min_face_ratio must be within [0, 1]")
        if not -1.0 <= self.identity_threshold <= 1.0:
            problems.append("identity_threshold must be within [-1, 1]")
        if self.min_person_images < 2:
            problems.append("min_person_images must be >= 2")
        if problems:
            raise ValueError("invalid curation rules: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> "CurationRules":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (data or {}).items() if k in known})

    def replace(self, **changes) -> "CurationRules":
        data = self.to_dict()
        data.update({k: v for k, v in changes.items() if v is not None})
        return CurationRules.from_dict(data)


def default_workspace() -> Path:
    """``STUDIO_WORKSPACE``, else the Space's persistent disk (/data) when present, else ./workspaces/demo."""
    env = os.environ.get("STUDIO_WORKSPACE")
    if env:
        return Path(env)
    if Path("/data").is_dir() and os.access("/data", os.W_OK) and os.environ.get("SPACE_ID"):
        return Path("/data/crossfaceid-demo")
    return REPO_ROOT / "workspaces" / "demo"


def face_pack_spec() -> str:
    return os.environ.get("STUDIO_FACE_PACK", "auto")
