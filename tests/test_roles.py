"""Accounts and roles over the real HTTP API: admins get data, annotators are refused."""
from __future__ import annotations

import pytest
from conftest import USERS

from studio.auth import AccessPolicy, UsersFile, check_password, hash_password, policy_from


def client(url, user=None):
    from gradio_client import Client

    auth = (user, USERS[user][1]) if user else None
    return Client(url, auth=auth, verbose=False)


def test_admin_filters_return_the_right_images(served):
    c = client(served, "ada")
    page = c.predict(persons=["obama"], status="pass", api_name="/browse")
    assert page["total"] == 2
    assert sorted(it["person"] for it in page["items"]) == ["obama", "obama"]
    assert all(it["status"] == "pass" for it in page["items"])
    outliers = c.predict(outlier="yes", api_name="/browse")
    assert outliers["total"] == 1 and outliers["items"][0]["reasons"] == ["identity_outlier"]
    crowd = c.predict(reason="too_many_faces", api_name="/browse")
    assert [it["face_count"] > 3 for it in crowd["items"]] == [True]
    paged = c.predict(page=2, page_size=4, api_name="/browse")
    assert paged["pages"] == 3 and len(paged["items"]) == 4
    detail = c.predict(image_id=crowd["items"][0]["image_id"], api_name="/detail")
    assert detail["metadata"]["person"] == "crowd" and len(detail["metadata"]["faces"]) > 3
    stats = c.predict(api_name="/statistics")
    assert stats["table1"]["after_curation"]["images"] == 4


def test_bad_filter_is_a_message_not_a_trace(served):
    from gradio_client.exceptions import AppError

    c = client(served, "ada")
    with pytest.raises(AppError, match="face ratio minimum must be between 0.0 and 1.0"):
        c.predict(min_face_ratio=3.0, api_name="/browse")
    with pytest.raises(AppError, match="unknown person: nobody"):
        c.predict(persons=["nobody"], api_name="/browse")
    with pytest.raises(AppError, match="no image with id 424242"):
        c.predict(image_id=424242, api_name="/detail")
    with pytest.raises(AppError, match="image id must be between 1 and 9223372036854775807"):
        c.predict(image_id=2**70, api_name="/detail")


def test_paging_past_the_end_shows_the_last_page(served):
    c = client(served, "ada")
    last = c.predict(page=999, page_size=4, api_name="/browse")
    assert (last["page"], last["pages"], len(last["items"])) == (3, 3, 1)
    assert c.predict(page=-2, page_size=4, api_name="/browse")["page"] == 1


@pytest.mark.parametrize("endpoint, kwargs", [
    ("/browse", {}), ("/detail", {"image_id": 1}), ("/statistics", {}),
    ("/runs", {}), ("/run", {"run_id": 1}), ("/run_start", {"kind": "analyze"}), ("/run_cancel", {"run_id": 1}),
    ("/run_rerun", {"run_id": 1}),
])
def test_annotator_cannot_reach_admin_data(served, curated_ws, endpoint, kwargs):
    from gradio_client.exceptions import AppError

    runs_before = len(curated_ws.store.runs())
    with pytest.raises(AppError, match="Access denied"):
        client(served, "ann").predict(**kwargs, api_name=endpoint)
    assert len(curated_ws.store.runs()) == runs_before  # nothing was started on the annotator's behalf


def example_value(param: dict):
    """A well-formed value for an API parameter, from its JSON schema type, so only the role check can refuse it."""
    kind = param["type"].get("type") or next((t["type"] for t in param["type"].get("oneOf", []) if t["type"] != "null"),
                                             "string")
    return {"integer": 1, "number": 1, "string": "x", "object": {}, "array": [], "boolean": False}.get(kind, "x")


def test_every_registered_api_name_refuses_an_annotator_but_annotate(served, curated_ws):
    """Read from the running app, so an endpoint added later cannot be left off a hand-written list."""
    from gradio_client.exceptions import AppError

    ann = client(served, "ann")
    endpoints = ann.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert {"/models", "/caption_bulk_approve", "/train_start", "/run_start", "/annotate_save"} <= set(endpoints)
    runs_before = len(curated_ws.store.runs())
    refused = []
    for name, info in sorted(endpoints.items()):
        kwargs = {p["parameter_name"]: example_value(p) for p in info["parameters"] if not p["parameter_has_default"]}
        if name.startswith("/annotate_"):
            continue
        with pytest.raises(AppError, match="Access denied: this needs the admin role"):
            ann.predict(**kwargs, api_name=name)
        refused.append(name)
    assert len(refused) == len(endpoints) - 3
    assert ann.predict(api_name="/annotate_studies") == []  # the annotator's own endpoints answer
    assert len(curated_ws.store.runs()) == runs_before


@pytest.mark.parametrize("args", ["--workspace=/tmp/other-ws --author=someone", "--workspace /tmp/other-ws",
                                  "--works /tmp/other-ws", "--author someone", "--run-id=3", "-- --workspace=/x"])
def test_run_start_refuses_the_studios_own_options_in_every_spelling(served, curated_ws, tmp_path, args):
    from gradio_client.exceptions import AppError

    args = args.replace("/tmp/other-ws", str(tmp_path / "other-ws"))
    runs_before = len(curated_ws.store.runs())
    with pytest.raises(AppError, match="set by the studio; leave it out|unrecognized arguments"):
        client(served, "ada").predict(kind="curate", args=args, api_name="/run_start")
    assert len(curated_ws.store.runs()) == runs_before and not (tmp_path / "other-ws").exists()
    with pytest.raises(AppError, match="arguments must be one line of text"):
        client(served, "ada").predict(kind="curate", args=["--workspace", "/x"], api_name="/run_start")


#: the fewest arguments each kind's command needs, so a refusal is about the studio's option alone
NEEDS = {"ingest": "/data/photos", "export": "--out exports/a", "manifest": "--out exports/m", "train": "--name m",
         "testset": "build --name t --kind fidelity", "evaluate": "--testset t --model InstantID"}
#: the studio's own options in every spelling argparse takes, before and after `--`
SMUGGLED = ["--workspace OTHER", "--workspace=OTHER", "--works OTHER", "--author someone", "--author=someone",
            "--run-id 3", "-- --workspace=OTHER", "-- --output_dir OTHER", "-- --output_dir=OTHER",
            "-- --train_data=OTHER/x.jsonl"]


@pytest.mark.parametrize("kind", ["ingest", "analyze", "curate", "caption", "tag", "export", "split", "pairs",
                                  "manifest", "train", "testset", "evaluate"])
def test_no_studio_option_reaches_the_worker_of_any_kind(served, curated_ws, tmp_path, kind):
    """Every run kind from the API, the studio's options in every spelling: refused, nothing recorded or written."""
    from gradio_client.exceptions import AppError

    from studio.runs import jobs as runs

    assert kind in runs.KINDS
    other = tmp_path / "other-ws"
    c, runs_before = client(served, "ada"), len(curated_ws.store.runs())
    for smuggled in SMUGGLED:
        line = f"{NEEDS.get(kind, '')} {smuggled.replace('OTHER', str(other))}".strip()
        with pytest.raises(AppError, match="set by the studio; leave it out|unrecognized arguments"):
            c.predict(kind=kind, args=line, api_name="/run_start")
    with pytest.raises(AppError, match="arguments must be one line of text"):  # a list is not taken apart
        c.predict(kind=kind, args=[*NEEDS.get(kind, "").split(), "--workspace", str(other)], api_name="/run_start")
    assert len(curated_ws.store.runs()) == runs_before and not other.exists()


def test_a_run_from_the_api_reaches_its_worker_as_a_run_id(served, curated_ws):
    """The worker's command line holds the workspace and the run id; the settings and the author come from the row."""
    from conftest import wait_for

    from studio.runs import jobs as runs

    run_id = client(served, "ada").predict(kind="curate", args="--min-faces 1", api_name="/run_start")
    r = curated_ws.store.run(run_id)
    assert r["argv"] == ["worker", "--workspace", str(curated_ws.root), str(run_id)] and r["author"] == "ada"
    assert r["settings"]["min_faces"] == 1
    done = wait_for(lambda: (x := curated_ws.store.run(run_id))["status"] in ("done", "failed") and x,
                    lambda: runs.log_tail(curated_ws, run_id))
    assert done["status"] == "done", runs.log_tail(curated_ws, run_id)
    assert runs.log_tail(curated_ws, run_id).startswith(f"run {run_id}: curate by ada")
    shown = client(served, "ada").predict(run_id=run_id, api_name="/run")
    assert shown["command"] == f"python -m studio worker --workspace {curated_ws.root} {run_id}"


@pytest.mark.parametrize("endpoint", ["runs", "run", "run_start", "run_cancel", "run_rerun", "experiments"])
def test_visitor_without_login_cannot_call_run_endpoints(served, endpoint):
    import httpx

    r = httpx.post(f"{served}gradio_api/call/{endpoint}", json={"data": [1]}, timeout=30)
    assert r.status_code in (401, 403), r.text


def test_wrong_password_and_anonymous_are_refused(served):
    from gradio_client import Client

    from gradio_client.exceptions import AuthenticationError

    with pytest.raises(ValueError, match="Could not login"):
        Client(served, auth=("ada", "wrong-password"), verbose=False)
    with pytest.raises(AuthenticationError, match="credentials were not provided"):
        Client(served, verbose=False).predict(api_name="/statistics")


def test_password_hashing():
    h = hash_password("correct horse")
    assert h.startswith("scrypt$") and "correct horse" not in h
    assert check_password("correct horse", h) and not check_password("wrong", h)
    assert hash_password("correct horse") != h  # salted


def test_users_file_validation(tmp_path):
    f = UsersFile(tmp_path / "users.json")
    with pytest.raises(ValueError, match="at least 8"):
        f.add("bob", "short", "admin")
    with pytest.raises(ValueError, match="role must be one of"):
        f.add("bob", "long-enough-1", "superuser")
    f.add("bob", "long-enough-1", "annotator")
    assert f.verify("bob", "long-enough-1") and not f.verify("bob", "nope") and not f.verify("eve", "x")
    assert f.role("bob") == "annotator"
    (tmp_path / "bad.json").write_text('{"users": {"x": {"role": "admin"}}}')
    with pytest.raises(ValueError, match="user 'x' needs a role"):
        UsersFile(tmp_path / "bad.json").load()


def test_access_policies(tmp_path):
    assert policy_from(None, "127.0.0.1", on_space=False).role_of(None) == "admin"
    with pytest.raises(ValueError, match="--auth"):
        policy_from(None, "0.0.0.0", on_space=False)
    with pytest.raises(ValueError, match="no users"):
        policy_from(tmp_path / "empty.json", "0.0.0.0", on_space=False)
    hf = policy_from(None, "0.0.0.0", on_space=True, hf_admins="alice, bob")
    assert hf == AccessPolicy("hf", hf_admins=frozenset({"alice", "bob"}))
    assert hf.role_of("alice") == "admin" and hf.role_of("carol") == "annotator" and hf.role_of(None) is None
