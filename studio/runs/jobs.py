"""Runs: every long stage executes as a recorded run, in-process (CLI) or in a worker subprocess (app).

A run row holds the kind, its settings (the stage's settings object, see :mod:`studio.runs.stages`),
inputs, author, status, progress, log and outcome. The CLI runs a stage in-process and records it;
the app records the run first and starts ``python -m studio worker RUN_ID`` in its own session,
which reads the settings from the row, so closing the browser, or even the app, does not stop it
and nothing a form or the API typed reaches the worker's command line. Cancelling sets a flag that
the stage sees at its next item; each item is committed on its own, so a cancelled or killed run
is resumed by running it again. A run whose worker died without saying so is marked failed the
next time runs are listed or started.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..codes import RUN_FINISHED, RunStatus
from ..store import RunRow
from .settings import RunSettings
from ..workspace import Workspace

#: the stages that run as runs, and the CLI command each one is (studio.runs.stages.STAGES has their settings)
KINDS = ("ingest", "analyze", "curate", "caption", "tag", "export", "split", "pairs", "manifest", "train",
         "testset", "evaluate", "study")
HEARTBEAT_S = 5.0
STALE_AFTER_S = 60.0
LOG_TAIL_BYTES = 8000


class RunCancelled(Exception):
    """Raised inside a stage at the next item after someone asked the run to stop."""


@dataclass
class RunHandle:
    """What a stage sees of its run: progress reporting that also carries the stop request."""

    ws: Workspace
    run_id: int
    every_s: float = 0.5
    _last: float = field(default=0.0, init=False)
    _latest: tuple[int, int | None] | None = field(default=None, init=False)  # the last count, written or not
    _written: tuple[int, int | None] | None = field(default=None, init=False)

    def report(self, done: int, total: int | None, force: bool = False) -> None:
        self._latest = (done, total)
        now = time.monotonic()
        if force or now - self._last >= self.every_s:
            self._last = now
            self._written = (done, total)
            cancelled = self.ws.store.run_progress(self.run_id, done, total)
        else:  # the count waits for the throttle (or the heartbeat); a stop request is honoured at once
            cancelled = self.ws.store.cancel_requested(self.run_id)
        if cancelled:
            raise RunCancelled(f"run {self.run_id} was cancelled")

    def flush(self, store) -> None:
        """Write a count that the throttle held back (from the heartbeat's thread and connection): while
        the next item is slow, the run shows the items already done, not the count of half a second
        before the last one finished."""
        latest = self._latest
        if latest is not None and latest != self._written:
            self._written = latest
            store.run_progress(self.run_id, *latest)

    def track(self, items: Iterable, total: int | None = None, **_: object) -> Iterator:
        """Wrap a stage's item loop (the same signature as tqdm's) to report progress and honour cancel."""
        if total is None and hasattr(items, "__len__"):
            total = len(items)  # type: ignore[arg-type]
        self.report(0, total, force=True)
        n = 0
        for item in items:
            yield item
            n += 1
            self.report(n, total)
        self.report(n, total, force=True)


def combine(*trackers: Callable | None) -> Callable:
    """Chain progress wrappers (e.g. the run's and a tqdm bar for the log)."""
    active = [t for t in trackers if t is not None]

    def wrap(items: Iterable, **kw) -> Iterable:
        for t in active:
            items = t(items, **kw)
        return items
    return wrap


@contextmanager
def _heartbeat(ws: Workspace, handle: RunHandle):
    """A beat every few seconds while the run is alive, even inside one long item, with its latest count."""
    stop = threading.Event()

    def beat():
        store = Workspace.open(ws.root).store  # its own connection
        while not stop.wait(HEARTBEAT_S):
            store.beat(handle.run_id)
            handle.flush(store)
        store.close()

    t = threading.Thread(target=beat, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()


def execute(ws: Workspace, kind: str, settings: dict, author: str, body: Callable[[RunHandle], dict], *,
            run_id: int | None = None, inputs: dict | None = None,
            on_start: Callable[[int], None] | None = None) -> tuple[int, dict | None]:
    """Run ``body`` as run ``run_id`` (made here when None); returns (run id, result), the result None if
    cancelled. ``on_start`` learns the run's id before the work begins (an experiment records it).

    Exceptions other than a cancel are recorded on the run and raised again.
    """
    reap(ws)
    if run_id is None:
        refuse_if_busy(ws, kind)
        run_id = ws.store.create_run(kind=kind, settings=settings, inputs=inputs or {}, author=author,
                                     argv=sys.argv[1:])
    ws.store.start_run(run_id, os.getpid())
    if on_start is not None:
        on_start(run_id)
    handle = RunHandle(ws, run_id)
    try:
        with _heartbeat(ws, handle):
            result = body(handle)
    except RunCancelled:
        ws.store.finish_run(run_id, RunStatus.CANCELLED, exit_code=130)
        return run_id, None
    except KeyboardInterrupt:
        ws.store.finish_run(run_id, RunStatus.CANCELLED, exit_code=130, error="interrupted")
        raise
    except BaseException as exc:
        ws.store.finish_run(run_id, RunStatus.FAILED, exit_code=1, error=f"{type(exc).__name__}: {exc}"[:2000])
        raise
    ws.store.finish_run(run_id, RunStatus.DONE, exit_code=0, result=result)
    return run_id, result


# -- the app's side: submit, watch, cancel ----------------------------------------------------------

#: (workspace, run id) -> worker started by this process (reaped on poll); run ids are per workspace
_children: dict[tuple[str, int], subprocess.Popen] = {}


def log_path(ws: Workspace, run_id: int) -> Path:
    return ws.root / "runs" / f"{run_id}.log"


#: the options only the studio sets: a run's workspace and its author (the signed-in user)
STUDIO_OPTIONS = {"workspace": "--workspace", "author": "--author"}


def settings_from_args(kind: str, args: list[str]) -> RunSettings:
    """A run's settings from a line of `python -m studio <kind>` arguments (the Runs tab, old runs): parsed
    by the stage's own parser, the studio's own options refused in any spelling (``--workspace=X``,
    ``--works X``), then built and validated as the CLI builds them."""
    from .argcheck import parse, refuse_reserved
    from ..cli import stage_parser
    from .stages import stage

    st = stage(kind)
    what = f"{kind} arguments"
    refuse_reserved(stage_parser(kind), args, STUDIO_OPTIONS, what)
    return st.settings.from_args(parse(stage_parser(kind), args, what))


def start(ws: Workspace, settings: RunSettings, author: str, *, run_id: int | None = None,
          track: Callable | None = None, on_start: Callable[[int], None] | None = None) -> tuple[int, dict | None]:
    """Run a stage in this process as a recorded run (the CLI; the worker with ``run_id``): returns
    (run id, result), the result None when cancelled."""
    from .stages import StageRun, stage

    st = stage(settings.KIND)
    if run_id is None:
        settings = st.resolve(ws, settings)
        st.check_start(ws, settings)
    else:  # the worker: the world may have changed since the app checked; a refusal fails this run
        try:
            st.check_start(ws, settings, run_id)
        except BaseException as exc:
            ws.store.finish_run(run_id, RunStatus.FAILED, exit_code=2, error=f"{type(exc).__name__}: {exc}"[:2000])
            raise
    return execute(ws, settings.KIND, settings.to_dict(), author,
                   lambda handle: st.run(ws, settings, StageRun(handle, combine(handle.track, track), author)),
                   run_id=run_id, inputs=_inputs(ws, settings), on_start=on_start)


def _inputs(ws: Workspace, settings: RunSettings) -> dict:
    return {"workspace": str(ws.root), **settings.run_inputs()}


def submit(ws: Workspace, settings: RunSettings, author: str, *, secrets_env: dict[str, str] | None = None,
           resumes: int | None = None) -> int:
    """Record a run of ``settings`` and start ``python -m studio worker RUN_ID`` for it; returns the run id.

    The settings are checked first (the stage's ``check_start``, as the CLI and the worker check
    them). The worker's command line holds only the workspace and the run id: it reads the settings
    and the author from the run. ``secrets_env`` (an API key) reaches the worker through its
    environment only: it is not in the command line, the run row or the log.
    """
    from .stages import stage

    if not isinstance(settings, RunSettings):
        raise ValueError(f"a run needs a settings object, got {type(settings).__name__}")
    st = stage(settings.KIND)
    settings = st.resolve(ws, settings)
    st.check_start(ws, settings)
    reap(ws)
    refuse_if_busy(ws, settings.KIND)
    run_id = ws.store.create_run(kind=settings.KIND, settings=settings.to_dict(), inputs=_inputs(ws, settings),
                                 author=author, argv=None, resumes=resumes)
    cmd = ["worker", "--workspace", str(ws.root), str(run_id)]
    path = log_path(ws, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    ws.store.set_run_worker(run_id, cmd, str(path))
    env = {**os.environ, **(secrets_env or {}), "PYTHONUNBUFFERED": "1"}
    with open(path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "studio", *cmd], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, cwd=Path(__file__).resolve().parents[2],
                                start_new_session=True)
    _children[(str(ws.root), run_id)] = proc
    return run_id


def submit_args(ws: Workspace, kind: str, args: list[str], author: str, **kw) -> int:
    """:func:`submit` a run whose settings come as a line of CLI arguments (the Runs tab's form and API)."""
    return submit(ws, settings_from_args(kind, args), author, **kw)


def work(ws: Workspace, run_id: int, track: Callable | None = None) -> tuple[int, dict | None]:
    """The worker: run the queued run ``run_id`` with the settings and author of its row."""
    from .stages import stage

    r = ws.store.run(run_id)
    if r is None:
        raise ValueError(f"no run {run_id}")
    if r["status"] != RunStatus.QUEUED or r["pid"] is not None:
        raise ValueError(f"run {run_id} is {r['status']}: a worker starts a queued run once (rerun it instead)")
    try:
        settings = stage(r["kind"]).settings.from_dict(r["settings"])
    except ValueError as exc:
        ws.store.finish_run(run_id, RunStatus.FAILED, exit_code=2, error=str(exc)[:2000])
        raise
    print(f"run {run_id}: {r['kind']} by {r['author']}", flush=True)
    return start(ws, settings, r["author"], run_id=run_id, track=track)


def recorded_settings(r: RunRow) -> RunSettings:
    """A finished run's settings object: from its row, or, for a run recorded before settings objects,
    from the command line it was started with."""
    from .stages import stage

    try:
        return stage(r["kind"]).settings.from_dict(r["settings"])
    except ValueError:
        argv = r["argv"] or []
        if not argv or argv[0] != r["kind"]:
            raise ValueError(f"run {r['id']}'s settings cannot be read back, so it cannot be rerun here") from None
        return settings_from_args(r["kind"], _strip_studio_options(argv[1:]))


def rerun(ws: Workspace, run_id: int, author: str, secrets_env: dict[str, str] | None = None) -> int:
    """Start the same settings again; finished items are skipped, so this resumes the run."""
    old = ws.store.run(run_id)
    if old is None:
        raise ValueError(f"no run {run_id}")
    if old["status"] in (RunStatus.QUEUED, RunStatus.RUNNING):
        raise ValueError(f"run {run_id} is still {old['status']}")
    if old["kind"] not in KINDS:
        raise ValueError(f"run {run_id} ({old['kind']}) is not a stage run and cannot be rerun here")
    return submit(ws, recorded_settings(old), author, secrets_env=secrets_env, resumes=run_id)


def _strip_studio_options(args: list[str]) -> list[str]:
    """An old run's command line without what the studio added (workspace, run id, author)."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a in ("--workspace", "--run-id", "--author"):
            skip = True
            continue
        out.append(a)
    return out


def refuse_if_busy(ws: Workspace, kind: str) -> None:
    """A second run of an exclusive kind (caption, analyze, evaluate) on one workspace is refused, naming
    the one that is going."""
    from .stages import STAGES

    if kind not in STAGES or not STAGES[kind].exclusive:
        return
    busy = [r for r in ws.store.active_runs() if r["kind"] == kind]
    if busy:
        r = busy[0]
        raise ValueError(f"a {kind} run is already going (run {r['id']}, {r['status']}, started by {r['author']}); "
                         "wait for it or cancel it first")


def cancel(ws: Workspace, run_id: int) -> bool:
    """Ask a run to stop at its next item; False when it had already finished."""
    return ws.store.request_cancel(run_id)


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return True


def reap(ws: Workspace) -> list[int]:
    """Mark runs whose worker died without finishing as failed; returns their ids."""
    for (root, run_id), proc in list(_children.items()):
        if root == str(ws.root) and proc.poll() is not None:
            del _children[(root, run_id)]
            ws.store.finish_run(run_id, RunStatus.FAILED, exit_code=proc.returncode,
                                error=f"the worker exited with code {proc.returncode} without finishing the run")
    dead = []
    for r in ws.store.active_runs():
        if r["status"] == RunStatus.QUEUED and r["pid"] is None and time.time() - _created_ts(r) < STALE_AFTER_S:
            continue  # still starting
        stale = r["heartbeat"] is not None and time.time() - r["heartbeat"] > STALE_AFTER_S
        if not _alive(r["pid"]) or stale:
            ws.store.finish_run(r["id"], RunStatus.FAILED, error="the worker stopped without finishing (killed or crashed); "
                                                          "rerun it to resume")
            dead.append(r["id"])
    return dead


def _created_ts(r: RunRow) -> float:
    from datetime import datetime

    try:
        return datetime.fromisoformat(r["created_at"]).timestamp()
    except (TypeError, ValueError):
        return 0.0


def log_tail(ws: Workspace, run_id: int, max_bytes: int = LOG_TAIL_BYTES) -> str:
    """The end of a run's log, progress bars collapsed to their latest state."""
    r = ws.store.run(run_id)
    if r is None or not r["log_path"] or not Path(r["log_path"]).is_file():
        return ""
    with open(r["log_path"], "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - max_bytes))
        text = fh.read().decode("utf-8", "replace")
    lines = [line.rsplit("\r", 1)[-1] for line in text.splitlines()]
    return "\n".join(lines)


def equivalent_command(r: RunRow) -> str | None:
    """The `python -m studio <kind> ...` command that asks for a run's settings (None for a run that is not a
    stage run or whose settings cannot be read back)."""
    import shlex

    if r["kind"] not in KINDS:
        return None
    try:
        return shlex.join(["python", "-m", "studio", r["kind"], *recorded_settings(r).to_cli()])
    except ValueError:
        return None


def describe(r: RunRow) -> dict:
    """A run as the Runs view and `runs show` present it."""
    total = r["total"]
    pct = f"{100 * r['done'] / total:.0f}%" if total else ""
    if total:
        progress = f"{r['done']}/{total} {pct}"
    else:  # a count whose total was never known: "29/?" read as unfinished after the run was done
        progress = f"{r['done']} done" if r["status"] in RUN_FINISHED else f"{r['done']}/?"
    return {"id": r["id"], "kind": r["kind"], "status": r["status"], "progress": progress,
            "author": r["author"], "started": r["started_at"] or r["created_at"], "ended": r["ended_at"],
            "exit_code": r["exit_code"], "error": r["error"], "result": r["result"], "resumes": r["resumes"],
            "command": " ".join(["python -m studio", *(r["argv"] or [])])}
