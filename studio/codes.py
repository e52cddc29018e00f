"""The studio's fixed vocabularies, defined once: curation status and reasons, caption status.

Stored values: a verdict's status is an integer in the browse index (``CurationStatus``), a
caption's status is text (``CaptionStatus``), rejection reasons are bits in ``reasons_mask``
(position in ``REASONS``). Every module that filters or shows them imports them from here.
"""
from __future__ import annotations

from enum import Enum, IntEnum


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
