"""Per open page: one refresh clock event for every tab, and what the page was last sent.

Every admin page has a refresh clock (``gr.Timer``, 2 s) that follows runs whichever tab is shown, and
each event costs the browser a pass over the whole page. Measured with Chromium on this project's 2-core
machine, an idle admin page used about 40% of a core with four queued events per tick, about 11% with
one event per tick outside the queue (``follow``), about 7% with no clock. ``PageMemory`` keeps what a
page was sent, so a refresh re-sends only what changed and a page that already shows an item keeps it.
A page is a Gradio session (``request.session_hash``, new on reload).
"""
from __future__ import annotations

import functools
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import gradio as gr
import pandas as pd

log = logging.getLogger(__name__)


def shown_time(iso: str | None) -> str:
    """A stored UTC time as a person reads it in a table: ``2026-12-05 19:55:12`` (the columns say UTC)."""
    return "" if not iso else str(iso)[:19].replace("T", " ")


def fingerprint(value) -> Hashable:
    """A comparable stand-in for one output value (tables by content, components by their settings)."""
    if isinstance(value, pd.DataFrame):
        return ("frame", tuple(map(str, value.columns)), value.to_csv(index=False))
    if isinstance(value, gr.components.Component):
        return ("component", type(value).__name__, repr(sorted(value.get_config().items(), key=lambda kv: kv[0])))
    return ("value", repr(value))


def session_of(request: gr.Request | None) -> str | None:
    """The page a request comes from (None for a client without a session)."""
    return getattr(request, "session_hash", None)


def _is_skip(value) -> bool:
    return isinstance(value, dict) and value == gr.skip()


class PageMemory:
    """Per page and per key, the last thing sent; bounded (the pages closed longest ago go first)."""

    def __init__(self, capacity: int = 20_000) -> None:
        self._sent: OrderedDict[tuple, Hashable] = OrderedDict()
        self._lock = threading.Lock()
        self._capacity = capacity

    def changed(self, session: str | None, key: Hashable, value: Hashable) -> bool:
        """Whether ``value`` differs from what ``session`` was last sent under ``key``; records it if so.

        Without a session (a client that does not send one) everything counts as changed.
        """
        if not session:
            return True
        slot = (session, key)
        with self._lock:
            if slot in self._sent and self._sent[slot] == value:
                self._sent.move_to_end(slot)
                return False
            self._sent[slot] = value
            self._sent.move_to_end(slot)
            while len(self._sent) > self._capacity:
                self._sent.popitem(last=False)
            return True

    def only_changes(self, name: str) -> Callable:
        """Decorate a refresh handler: each output equal to what this page was last sent becomes ``gr.skip()``."""
        def deco(fn):
            @functools.wraps(fn)
            def wrapper(*args, **kwargs):
                out = fn(*args, **kwargs)
                session = session_of(next((a for a in (*args, *kwargs.values()) if isinstance(a, gr.Request)), None))
                values = out if isinstance(out, tuple) else (out,)
                kept = tuple(v if _is_skip(v) or self.changed(session, (name, i), fingerprint(v)) else gr.skip()
                             for i, v in enumerate(values))
                return kept if isinstance(out, tuple) else kept[0]
            return wrapper
        return deco


@dataclass(frozen=True)
class Refresh:
    """One tab's part of the page's refresh clock: ``fn(request, *inputs)`` gives ``outputs``."""
    fn: Callable
    inputs: list
    outputs: list


def follow(clock: gr.Timer, parts: list[Refresh]) -> None:
    """Every tab's refresh in one event per tick, outside the queue (a refresh never waits behind a long
    job); a tab whose refresh fails leaves the others refreshing."""
    inputs: list = []
    for part in parts:
        inputs += [c for c in part.inputs if all(c is not x for x in inputs)]
    where = [[next(i for i, x in enumerate(inputs) if x is c) for c in part.inputs] for part in parts]

    def on_tick(request: gr.Request, *values):
        out: list = []
        for part, idx in zip(parts, where):
            try:
                got = part.fn(request, *(values[i] for i in idx))
            except Exception:  # noqa: BLE001 - one tab's failure leaves the others refreshing
                log.exception("refreshing %s failed", getattr(part.fn, "__qualname__", part.fn))
                got = tuple(gr.skip() for _ in part.outputs)
            out += list(got) if len(part.outputs) > 1 else [got[0] if isinstance(got, tuple) else got]
        return tuple(out)

    clock.tick(on_tick, inputs, [c for part in parts for c in part.outputs], show_progress="hidden", queue=False,
               api_visibility="private")
