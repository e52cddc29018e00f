"""Checks on a caption's text: what the paper's prompt exists to prevent.

No dependencies, so that the store's migrations can flag captions imported by old versions.
"""
from __future__ import annotations

import re

FLAGS = ("empty", "refusal", "structured", "too_long")

_STRUCTURE = [
    re.compile(r"^\s*\d+[.)]\s+\S", re.M),  # numbered list
    re.compile(r"^\s*[-*•]\s+\S", re.M),  # bulleted list
    re.compile(r"^\s*\|.*\|\s*$", re.M),  # markdown table row
    re.compile(r"\*\*[^*\n]+\*\*"),  # bold heading
    re.compile(r"^\s*#{1,6}\s+\S", re.M),  # markdown heading
]
_REFUSAL = re.compile(
    r"\b(I'?m sorry|I am sorry|I can(?:'|no)t (?:help|assist|identify|provide|describe)|I'?m (?:not able|unable) to"
    r"|I am (?:not able|unable) to|as an AI)\b", re.I)
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")


def check_caption(text: str) -> list[str]:
    """Flags for what the paper's prompt exists to prevent: lists, tables, long answers, refusals."""
    t = (text or "").strip()
    if not t:
        return ["empty"]
    flags = []
    if _REFUSAL.search(t):
        flags.append("refusal")
    if any(p.search(t) for p in _STRUCTURE):
        flags.append("structured")
    if len(_SENTENCE_END.findall(t)) > 4:
        flags.append("too_long")
    return flags


