"""How the UI answers mistakes: a warning that keeps what is on screen, not an error that blanks it.

Stage functions raise ``ValueError`` (and subclasses) for anything the person can fix. In a UI
event that becomes a ``gr.Warning`` toast and every output is left as it was (``gr.skip``); in
an API endpoint it becomes a ``gr.Error`` for the client. Neither logs a traceback. Every event
and endpoint gets this from :class:`~studio.ui.wiring.Wiring`.
"""
from __future__ import annotations

from ..images import ImageError
from ..store import StoreBusyError

#: what the person can act on: their input, a bad file, a workspace busy for longer than the timeout
MISTAKES = (ValueError, ImageError, StoreBusyError)
