"""Attribute tags from captions: a configurable vocabulary of facial attributes (the paper's
Figure 3 distribution) matched as whole words, skipping simple negations ("not smiling")."""
from __future__ import annotations

import re

from ..workspace import Workspace

#: tag -> phrases that mean it (lower case, whole words; a trailing * matches any ending)
DEFAULT_VOCABULARY: dict[str, list[str]] = {
    "smiling": ["smile*", "smiling", "grin*", "beaming"],
    "laughing": ["laugh*"],
    "sad": ["sad", "sadness", "sorrowful", "tearful", "frown*"],
    "angry": ["angry", "anger", "furious", "scowl*"],
    "surprised": ["surprise*", "astonish*", "shocked"],
    "neutral": ["neutral", "expressionless", "blank expression", "calm expression", "serious"],
    "mouth open": ["mouth open", "open mouth", "mouth slightly open", "speaking", "talking"],
    "side profile": ["profile", "side view", "turned to the side", "turned sideways"],
    "looking up": ["looking up", "gazing upward", "looks up", "upward gaze"],
    "looking down": ["looking down", "gazing downward", "looks down", "downward gaze"],
    "eyes closed": ["eyes closed", "closed eyes"],
    "glasses": ["glasses", "eyeglasses", "spectacles"],
    "sunglasses": ["sunglasses", "shades"],
    "hat": ["hat", "cap", "beanie", "helmet"],
    "mask": ["mask", "face covering"],
    "beard": ["beard*", "goatee", "stubble"],
    "mustache": ["mustache", "moustache"],
    "earrings": ["earring*"],
}
_NEGATION = re.compile(r"\b(?:not|no|without|isn't|aren't|never)\b(?:\W+\w+){0,2}\W*$")


def _pattern(phrase: str) -> re.Pattern:
    words = [re.escape(w.rstrip("*")) + (r"\w*" if w.endswith("*") else "") for w in phrase.lower().split()]
    return re.compile(r"\b" + r"\s+".join(words) + r"\b")


def compile_vocabulary(vocab: dict[str, list[str]]) -> dict[str, list[re.Pattern]]:
    if not isinstance(vocab, dict) or not all(isinstance(v, list) and v for v in vocab.values()):
        raise ValueError("attribute vocabulary must map each tag to a non-empty list of phrases")
    return {tag: [_pattern(p) for p in phrases] for tag, phrases in vocab.items()}


def tags_for(text: str, compiled: dict[str, list[re.Pattern]]) -> list[str]:
    """Tags whose phrases occur in ``text`` and are not negated just before."""
    low = (text or "").lower()
    found = []
    for tag, patterns in compiled.items():
        for p in patterns:
            if any(not _NEGATION.search(low[: m.start()]) for m in p.finditer(low)):
                found.append(tag)
                break
    return sorted(found)


def vocabulary(ws: Workspace) -> dict[str, list[str]]:
    return ws.store.get_setting("attribute_vocabulary") or DEFAULT_VOCABULARY


def set_vocabulary(ws: Workspace, vocab: dict[str, list[str]]) -> None:
    compile_vocabulary(vocab)  # validate before storing
    ws.store.set_setting("attribute_vocabulary", vocab)


def tag_image(ws: Workspace, image_id: int, text: str | None, compiled=None) -> list[str]:
    tags = [] if not text else tags_for(text, compiled or compile_vocabulary(vocabulary(ws)))
    ws.store.set_tags(image_id, tags)
    return tags


def tag_workspace(ws: Workspace) -> dict[str, int]:
    """Re-tag every image from its current caption (rejected captions give no tags)."""
    compiled = compile_vocabulary(vocabulary(ws))
    counts: dict[str, int] = {}
    rows = ws.store.current_captions()
    for start in range(0, len(rows), 500):  # short transactions: reviewers never wait long behind a re-tag
        with ws.store.transaction():
            for image_id, text, status in rows[start:start + 500]:
                for t in tag_image(ws, image_id, None if status == "rejected" else text, compiled):
                    counts[t] = counts.get(t, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))
