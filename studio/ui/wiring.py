"""Binding a tab's events and API endpoints, with the role check and the answer to a mistake in one place.

Every event is bound with :meth:`Wiring.on` and every endpoint with :meth:`Wiring.api`, so neither
the role check nor the number of outputs a mistake must keep is written by hand:

* ``on`` checks the caller's role before the handler runs (admin unless ``role=None``, for the
  handlers that decide themselves), answers a mistake (:data:`~studio.ui.feedback.MISTAKES`) with
  a warning that keeps every output it is bound to (counted from ``outputs``), and keeps the event
  out of the public API. ``quiet=True`` is for refreshes: a caller without the role gets every
  output kept, silently, instead of an error.
* ``api`` registers an endpoint with the same role check; a mistake is a clear error for the client.

A handler bound with a role check takes the request (``request: gr.Request``); binding one that
does not is refused when the app is built, so a check cannot be skipped by leaving it out.
"""
from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import gradio as gr

from .access import StudioContext, require_admin, role
from .feedback import MISTAKES

ADMIN = "admin"


def _request(args: tuple, kwargs: dict) -> gr.Request | None:
    return next((a for a in (*args, *kwargs.values()) if isinstance(a, gr.Request)), None)


def _count(outputs) -> int:
    if outputs is None:
        return 0
    return len(outputs) if isinstance(outputs, (list, tuple, set)) else 1


def _keep(n: int):
    """What keeps ``n`` outputs as they are on screen."""
    skips = tuple(gr.skip() for _ in range(n))
    return skips[0] if n == 1 else skips


def _takes_request(fn: Callable) -> bool:
    return any(p.annotation in (gr.Request, "gr.Request") for p in inspect.signature(fn).parameters.values())


@dataclass
class Wiring:
    """The events and endpoints of one app, bound against its context."""

    ctx: StudioContext
    #: one guarded handler per handler and check: an event bound to two triggers keeps one function
    _guarded: dict = field(default_factory=dict, init=False, repr=False)

    def on(self, trigger: Callable, fn: Callable, inputs=None, outputs=None, *, role: str | None = ADMIN,
           quiet: bool = False, **kwargs):
        """Bind ``fn`` to ``trigger`` (e.g. ``button.click``): role checked first, a mistake keeps the outputs."""
        kwargs.setdefault("api_visibility", "private")
        return trigger(self.guard(fn, outputs, role=role, quiet=quiet), inputs, outputs, **kwargs)

    def guard(self, fn: Callable, outputs, *, role: str | None = ADMIN, quiet: bool = False) -> Callable:
        """``fn`` with the role check and the mistake policy of :meth:`on`, not bound (a page clock's refresh)."""
        if role is not None and not _takes_request(fn):
            raise TypeError(f"{fn.__qualname__} is bound with a role check but takes no gr.Request")
        n = _count(outputs)
        if (fn, role, quiet, n) in self._guarded:
            return self._guarded[(fn, role, quiet, n)]

        @functools.wraps(fn)
        def handler(*args, **kw):
            if role is not None:
                request = _request(args, kw)
                if quiet and self._role(request) != role:
                    return _keep(n)
                self._require(role, request)
            try:
                return fn(*args, **kw)
            except MISTAKES as exc:
                gr.Warning(str(exc))
                return _keep(n)

        self._guarded[(fn, role, quiet, n)] = handler
        return handler

    def api(self, fn: Callable, name: str, *, role: str | None = ADMIN, **kwargs) -> None:
        """Register ``fn`` as the endpoint ``/name``: role checked first, a mistake is the client's error message."""
        if role is not None and not _takes_request(fn):
            raise TypeError(f"{fn.__qualname__} is bound with a role check but takes no gr.Request")

        @functools.wraps(fn)
        def endpoint(*args, **kw):
            if role is not None:
                self._require(role, _request(args, kw))
            try:
                return fn(*args, **kw)
            except MISTAKES as exc:
                raise gr.Error(str(exc), print_exception=False) from None

        gr.api(endpoint, api_name=name, **kwargs)

    def _role(self, request) -> str | None:
        return role(self.ctx, request)

    def _require(self, needed: str, request) -> None:
        if needed == ADMIN:
            require_admin(self.ctx, request)
        else:
            raise ValueError(f"unknown role {needed!r}")
