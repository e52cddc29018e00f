"""The studio's fixed vocabularies, defined once: curation status and reasons, caption status, run
and study status, the human-evaluation criteria.

Stored values: a verdict's status is an integer in the browse index (``CurationStatus``), a
caption's status is text (``CaptionStatus``), rejection reasons are bits in ``reasons_mask``
(position in ``REASONS``), run and study statuses are text (``RunStatus``, ``StudyStatus``: string
enums, so they compare, format and store as their text). Every module that filters or shows them
imports them from here; the Annotate page's keyboard script is written from ``CRITERIA``.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum, StrEnum


class CurationStatus(IntEnum):
    PENDING = 0
    PASS = 1
    FAIL = 2

    @property
    def label(self) -> str:
        return self.name.lower()


class CaptionStatus(str, Enum):
    NONE = "none"  # no caption yet (browse index only)
    IMPORTED = "imported"
    GENERATED = "generated"
    EDITED = "edited"
    APPROVED = "approved"
    REJECTED = "rejected"


#: statuses of caption versions (every status but NONE)
CAPTION_VERSION_STATUSES = tuple(s.value for s in CaptionStatus if s is not CaptionStatus.NONE)
#: caption statuses a person gave; a model rerun never displaces these
HUMAN_REVIEWED = (CaptionStatus.APPROVED.value, CaptionStatus.EDITED.value)

REASONS = (
    "not_analyzed", "analysis_failed", "no_face", "too_few_faces", "too_many_faces",
    "low_resolution", "small_face", "identity_outlier",
)


def reasons_mask(reasons) -> int:
    """Reasons as bits (position in REASONS), so browsing can filter on any of them with one test."""
    return sum(1 << REASONS.index(r) for r in set(reasons))


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


RUN_STATUSES = tuple(s.value for s in RunStatus)
#: a run in one of these has ended (its worker is gone)
RUN_FINISHED = (RunStatus.DONE.value, RunStatus.FAILED.value, RunStatus.CANCELLED.value)


class StudyStatus(StrEnum):
    DRAFT = "draft"  # being set up: annotators do not see it
    OPEN = "open"  # annotators score it
    CLOSED = "closed"  # scores are final; results stay readable


@dataclass(frozen=True)
class Criterion:
    """One scale of a human study (paper §5.3): its stored name, what it asks, the scores it takes."""
    name: str
    definition: str
    low: int = 0
    high: int = 5

    @property
    def scale(self) -> list[str]:
        return [str(v) for v in range(self.low, self.high + 1)]


SCALES = (
    Criterion("customization", "Does the image do what the prompt asks (expression, pose, attribute, scene)? "
                               "0: ignores it · 3: partly · 5: exactly as asked."),
    Criterion("fidelity", "Is the person in the image the person of the input face? "
                          "0: someone else · 3: a resemblance · 5: unmistakably the same person."),
    Criterion("quality", "How good is the image itself (anatomy, artefacts, realism)? "
                         "0: broken · 3: usable with flaws · 5: flawless."),
)
CRITERIA = tuple(c.name for c in SCALES)
