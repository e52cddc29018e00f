"""The workspace database: the only package that speaks SQL, one module per aggregate.

``Store`` combines them: images, analyses and verdicts (:mod:`.images`), the browse index
(:mod:`.browse`, answered from the numpy snapshot of :mod:`.columns` at millions of images),
caption versions (:mod:`.captions`), generated samples (:mod:`.generations`)
runs (:mod:`.runs`), cross-training splits and pairs (:mod:`.pairs`) evaluation test sets, samples
and scores (:mod:`.evaluations`) and human-evaluation studies (:mod:`.studies`), over the connection and transaction handling of :mod:`.base` and the
schema versions of :mod:`.migrations`.
"""
from __future__ import annotations

from ..codes import CRITERIA, RUN_STATUSES
from ..codes import RUN_FINISHED as FINISHED
from ..codes import HUMAN_REVIEWED
from .base import StoreBase, StoreBusyError
from .browse import BrowseMixin
from .captions import CaptionsMixin, StaleCaptionError
from .evaluations import EvaluationsMixin
from .generations import GenerationsMixin
from .images import FaceRow, ImagesMixin
from .migrations import SCHEMA_VERSION
from .pairs import SPLITS, PairsMixin
from .runs import RunRow, RunsMixin
from .studies import StudiesMixin


class Store(ImagesMixin, BrowseMixin, CaptionsMixin, GenerationsMixin, RunsMixin, PairsMixin, EvaluationsMixin,
            StudiesMixin, StoreBase):
    """A workspace database (see the modules of this package for each part)."""


__all__ = ["Store", "StoreBusyError", "StaleCaptionError", "FaceRow", "RunRow", "SCHEMA_VERSION", "HUMAN_REVIEWED",
           "RUN_STATUSES", "FINISHED", "SPLITS", "CRITERIA"]
