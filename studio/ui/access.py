"""Who is calling: the signed-in user and role for a request, checked on every data handler.

Hiding a tab is not protection: every event and endpoint is bound through
:class:`~studio.ui.wiring.Wiring`, which calls :func:`require_admin` before an admin handler runs,
so that an annotator calling the endpoint through the API is refused too.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import gradio as gr

from ..auth import AccessPolicy
from ..models import ModelCache
from ..workspace import Workspace
from .guard import Grants
from .media import MediaServer


@dataclass(frozen=True)
class StudioContext:
    ws: Workspace
    policy: AccessPolicy
    note: str = ""
    face_pack: str = "auto"
    models: ModelCache = field(default_factory=ModelCache)  # generation models, loaded on first use
    grants: Grants = field(default_factory=Grants)  # files a non-admin may fetch
    media: MediaServer | None = None  # thumbnails and single files for the pages

    def __post_init__(self) -> None:
        if self.media is None:
            object.__setattr__(self, "media", MediaServer(self.ws))


def username(ctx: StudioContext, request: gr.Request | None) -> str | None:
    if request is None:
        return None
    if ctx.policy.mode == "hf":
        try:
            info = request.session.get("oauth_info") or {}
        except (AssertionError, AttributeError):  # no session middleware: nobody signed in
            return None
        return (info.get("userinfo") or {}).get("preferred_username")
    return getattr(request, "username", None)


def role(ctx: StudioContext, request: gr.Request | None) -> str | None:
    return ctx.policy.role_of(username(ctx, request))


def require_admin(ctx: StudioContext, request: gr.Request | None) -> None:
    """Raise a user-facing error unless the caller is an admin."""
    r = role(ctx, request)
    if r != "admin":
        who = username(ctx, request) or "not signed in"
        raise gr.Error(f"Access denied: this needs the admin role ({who} is {r or 'without a role'}).",
                       print_exception=False)
