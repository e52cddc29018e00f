"""Who may fetch what: an ASGI middleware in front of every route Gradio mounts.

Gradio serves every file a handler returned (copied into its cache) to anyone who is signed in,
and on a Space to anyone at all, through more than one route (``file=``, ``file/``, uploads, run
history, streams, and whatever a Gradio upgrade adds). The studio's photos are faces and its
database holds embeddings, so the guard finds the route a request would reach (the app's own
route table, not one spelling of a URL) and decides by its kind:

* routes that answer no file (config, queue, API calls, sign-in): passed on; their handlers check
  sign-in and each studio handler checks the role;
* Gradio's own frontend files: served when the resolved file lies inside Gradio's package folder;
* the file routes: by the resolved file that would be served: admins get what their pages
  showed, everyone else only the studio's UI assets and the files the app granted to them
  (annotation items);
* uploads: admins only (no other role's page has an upload component);
* any other route, known or added by an upgrade: admins only.

Sign-in with a users file goes through it too: after repeated wrong passwords for a name or from
an address, further tries wait (:class:`studio.auth.SignInThrottle`) and are answered 429.

The workspace itself (database, WAL, logs, users file) is never in Gradio's allowed paths.
"""
from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections import defaultdict
from pathlib import Path

from starlette.routing import Match

from ..auth import AccessPolicy, SignInThrottle
from ..config import ASSETS_DIR

log = logging.getLogger(__name__)

PUBLIC_DIRS = (ASSETS_DIR / "ui",)


def _slashed(*paths: str) -> frozenset[str]:
    return frozenset(p for path in paths for p in (path, path + "/"))


#: route templates whose handlers return no file: the page, its config, the queue, API calls, sign-in
OPEN_ROUTES = _slashed(
    "/", "/login", "/logout", "/config", "/theme.css", "/robots.txt", "/manifest.json", "/favicon.ico",
    "/pwa_icon", "/pwa_icon/{size}", "/login/huggingface", "/login/callback",
    "/gradio_api/user", "/gradio_api/login_check", "/gradio_api/token", "/gradio_api/app_id", "/gradio_api/info",
    "/gradio_api/reset", "/gradio_api/heartbeat/{session_hash}", "/gradio_api/startup-events",
    "/gradio_api/theme.css", "/gradio_api/queue/join", "/gradio_api/queue/data", "/gradio_api/queue/status",
    "/gradio_api/cancel", "/gradio_api/api/{api_name}", "/gradio_api/run/{api_name}",
    "/gradio_api/call/{api_name}", "/gradio_api/call/v2/{api_name}", "/gradio_api/call/{api_name}/{event_id}",
    "/gradio_api/call/v2/{api_name}/{event_id}",
)
#: route template -> its path parameter naming a file anywhere on disk (Gradio's own allow-list applies after ours)
FILE_ROUTES = {"/gradio_api/file={path_or_url:path}": "path_or_url", "/gradio_api/file/{path:path}": "path"}
#: routes that hand out Gradio's own frontend files, and the folder each serves from
PACKAGE_ROUTES = {"/assets/{path:path}": ("templates", "frontend", "assets"),
                  "/static/{path:path}": ("templates", "frontend", "static"),
                  "/svelte/{path:path}": ("templates", "frontend", "assets", "svelte")}
#: routes that write files into Gradio's cache
UPLOAD_ROUTES = _slashed("/gradio_api/upload", "/gradio_api/upload_progress")
#: the password sign-in route (users file)
LOGIN_ROUTES = _slashed("/login")
MAX_LOGIN_BODY = 64 * 1024


class Grants:
    """Files handed to a non-admin user for their work (e.g. the samples of their study)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._files: dict[str, set[str]] = defaultdict(set)

    def grant(self, user: str, path: str | Path) -> None:
        """Let ``user`` fetch this file, also as Gradio's cached copy (same name: an unguessable hash)."""
        with self._lock:
            self._files[user].add(str(Path(path).resolve()))
            self._files[user].add(Path(path).name)

    def allows(self, user: str | None, path: Path) -> bool:
        with self._lock:
            mine = self._files.get(user, ()) if user else ()
            return str(path) in mine or path.name in mine


def user_from_scope(policy: AccessPolicy, scope: dict) -> str | None:
    """The signed-in user of an HTTP request, the way Gradio itself decides it."""
    if policy.mode == "hf":
        session = scope.get("session") or {}
        return ((session.get("oauth_info") or {}).get("userinfo") or {}).get("preferred_username")
    if policy.mode == "local":
        app = scope.get("app")
        cookies = _cookies(scope)
        cookie_id = getattr(app, "cookie_id", None)
        token = cookies.get(f"access-token-{cookie_id}") or cookies.get(f"access-token-unsecure-{cookie_id}")
        return getattr(app, "tokens", {}).get(token)
    return None


def _cookies(scope: dict) -> dict[str, str]:
    from http.cookies import SimpleCookie

    jar = SimpleCookie()
    for name, value in scope.get("headers", ()):
        if name == b"cookie":
            try:
                jar.load(value.decode("latin-1"))
            except Exception:  # a malformed cookie header is nobody
                return {}
    return {k: m.value for k, m in jar.items()}


def flat_routes(routes) -> list:
    """Every route of an app, with included routers opened (FastAPI keeps them as one entry)."""
    out = []
    for route in routes:
        inner = getattr(route, "original_router", None)
        out.extend(flat_routes(inner.routes) if inner is not None else [route])
    return out


def matched_route(scope: dict) -> tuple[str | None, dict]:
    """The template of the route that would answer this request, and its path parameters.

    (None, {}) when no route matches fully: the router then answers 404 or 405 itself, or a
    redirect that comes back as a request of its own.
    """
    app = scope.get("app")
    for route in flat_routes(getattr(app, "routes", ())):
        match, child = route.matches(scope)
        if match == Match.FULL:
            return getattr(route, "path", repr(route)), dict(child.get("path_params") or {})
    return None, {}


def served_file(value: str) -> Path | None:
    """The file a file-route parameter names, resolved as Gradio resolves it; None for a URL."""
    if "://" in value or value.lower().startswith(("http:", "https:", "data:")):
        return None
    try:
        return Path(os.path.abspath(value)).resolve()
    except (OSError, ValueError):
        return None


def _package_dir(parts: tuple[str, ...]) -> Path:
    import gradio

    return Path(gradio.__file__).resolve().parent.joinpath(*parts)


async def _answer(send, status: int, detail: str, headers: list | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


def _replay(body: bytes, receive):
    """A ``receive`` that hands over an already read request body, then the connection's own events."""
    given = False

    async def again():
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()
    return again


class FileGuard:
    """Refuse requests that the caller's role does not allow (403, nothing else said); throttle sign-in."""

    def __init__(self, app, policy: AccessPolicy, grants: Grants, throttle: SignInThrottle | None = None):
        self.app = app
        self.policy = policy
        self.grants = grants
        self.throttle = throttle or SignInThrottle()

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            route = matched_route(scope)  # once per request: the route table is walked on the hot path
            if (scope["type"] == "http" and scope.get("method") == "POST" and self.policy.mode == "local"
                    and route[0] in LOGIN_ROUTES):
                await self.sign_in(scope, receive, send)
                return
            refusal = self.refusal(scope, *route)
            if refusal is not None:
                log.warning("refused %s %s (%s)", scope.get("method", "WS"), refusal, scope.get("path", "")[:200])
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                await _answer(send, 403, "Access denied: this file is not available to you.")
                return
        await self.app(scope, receive, send)

    async def sign_in(self, scope, receive, send) -> None:
        """Gradio's password check, behind the back-off: a name or address in back-off is not even checked."""
        from starlette.requests import Request

        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > MAX_LOGIN_BODY:
                await _answer(send, 413, "sign-in request too large")
                return
        try:
            form = await Request(scope, _replay(body, receive)).form()
            user = str(form.get("username") or "").strip()  # Gradio strips the name too
        except Exception:  # a malformed form: Gradio answers it (400)
            user = ""
        address = (scope.get("client") or ("unknown",))[0]
        wait = self.throttle.wait(user, address)
        if wait > 0:
            log.warning("sign-in refused for %d s after repeated wrong passwords (user %r, address %s)",
                        math.ceil(wait), user[:64], address)
            await _answer(send, 429, f"Too many wrong passwords: try again in {math.ceil(wait)} s.",
                          [(b"retry-after", str(math.ceil(wait)).encode())])
            return
        status = {}

        async def watch(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        await self.app(scope, _replay(body, receive), watch)
        if status.get("code") == 200:
            self.throttle.succeeded(user, address)
        elif status.get("code") == 400:
            self.throttle.failed(user, address)

    def refusal(self, scope: dict, template: str | None, params: dict) -> str | None:
        """Why this request, reaching ``template`` with ``params``, is refused; None when it may go on."""
        if template is None or template in OPEN_ROUTES:
            return None
        user = user_from_scope(self.policy, scope)
        if self.policy.role_of(user) == "admin":
            return None
        if template in PACKAGE_ROUTES:
            root = _package_dir(PACKAGE_ROUTES[template])
            target = served_file(str(root / params.get("path", "")))
            return None if target is not None and target.is_relative_to(root) else f"{template}: outside Gradio's files"
        if template in FILE_ROUTES:
            target = served_file(str(params.get(FILE_ROUTES[template], "")))
            return None if target is not None and self.file_allowed(user, target) else f"{template}: not your file"
        if template in UPLOAD_ROUTES:
            return f"{template}: uploads are for admins"
        return f"{template}: admins only"

    def file_allowed(self, user: str | None, target: Path) -> bool:
        if any(target.is_relative_to(d.resolve()) for d in PUBLIC_DIRS):
            return True
        return self.grants.allows(user, target)
