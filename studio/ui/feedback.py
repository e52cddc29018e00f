"""How the UI answers mistakes: a warning that keeps what is on screen, not an error that blanks it.

Stage functions raise ``ValueError`` (and subclasses) for anything the person can fix. In a UI
event that becomes a ``gr.Warning`` toast and every output is left as it was (``gr.skip``); in
an API endpoint it becomes a ``gr.Error`` for the client. Neither logs a traceback.
"""
from __future__ import annotations

import functools

import gradio as gr

from ..images import ImageError
from ..store import StoreBusyError

#: what the person can act on: their input, a bad file, a workspace busy for longer than the timeout
MISTAKES = (ValueError, ImageError, StoreBusyError)


def keep_on_mistake(n_outputs: int):
    """Decorate a UI event handler with ``n_outputs`` outputs."""
    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except MISTAKES as exc:
                gr.Warning(str(exc))
                skips = tuple(gr.skip() for _ in range(n_outputs))
                return skips[0] if n_outputs == 1 else skips
        return wrapper
    return deco


def api_errors(fn):
    """Decorate an API endpoint: a mistake is a clear error message for the client, no traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MISTAKES as exc:
            raise gr.Error(str(exc), print_exception=False) from None
    return wrapper
