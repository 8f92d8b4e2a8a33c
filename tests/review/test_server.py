"""The server: the token on another host, the Host check on 127.0.0.1, label validation, the AI
label withheld until the person answers, and the bad-folder error of the command."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from rlaif.cli import main
from rlaif.review.folder import open_folder
from rlaif.review.server import create_app

LOCAL = "http://127.0.0.1:8000"


def post(client, answer="a", **kw):
    body = {"dataset": "prefs", "id": "q1/0-1", "question": "pair", "answer": answer,
            "labeler": "ann", **kw}  # fmt: skip
    return client.post("/api/labels", json=body)


def test_another_host_needs_the_token_on_every_request(folder):
    client = TestClient(create_app(folder, token="s3cret", local=False), base_url="http://h:1")
    for path in ("/", "/api/meta", "/static/app.js", "/api/agreement"):
        assert client.get(path).status_code == 403
    assert client.get("/api/meta", headers={"X-Review-Token": "wrong"}).status_code == 403
    assert post(client).status_code == 403
    assert client.get("/api/meta", headers={"X-Review-Token": "s3cret"}).status_code == 200
    assert client.get("/?token=s3cret").status_code == 200  # the printed address
    assert client.get("/static/app.js").status_code == 200  # then by the cookie it set
    assert post(client).status_code == 200


def test_local_serves_only_local_host_names(folder):
    assert TestClient(create_app(folder), base_url=LOCAL).get("/api/meta").status_code == 200
    evil = TestClient(create_app(folder), base_url="http://attacker.example:8000")
    assert evil.get("/api/meta").status_code == 400


def test_labels_are_validated(folder):
    client = TestClient(create_app(folder), base_url=LOCAL)
    assert post(client, answer="maybe").status_code == 400
    assert post(client, labeler="  ").status_code == 400
    assert post(client, id="nope").status_code == 404
    assert post(client, dataset="red_team", id="gen-0").status_code == 404  # not labelable
    assert post(client, question="critique_real", answer="yes").status_code == 400
    form = client.post("/api/labels", data={"dataset": "prefs"})
    assert form.status_code == 415  # a form from another site cannot post a label
    assert folder.store.history() == []


def test_the_ai_label_comes_only_after_an_answer(folder):
    client = TestClient(create_app(folder), base_url=LOCAL)
    q = {"dataset": "prefs", "id": "q1/0-1", "labeler": "ann"}
    assert client.get("/api/row", params=q).json()["ai"] is None
    assert post(client, answer="skip").json()["ai"] is None  # a skip is no answer
    answered = post(client, answer="b", note="B is safer")
    assert answered.json()["ai"]["label"] == "a"
    row = client.get("/api/row", params=q).json()
    assert row["ai"]["prob_a"] == 0.8 and row["mine"]["pair"] == {
        "answer": "b",
        "note": "B is safer",
    }
    assert client.get("/api/row", params={**q, "labeler": "ben"}).json()["ai"] is None
    agreement = client.get("/api/agreement").json()["human_ai"]["pairs"]
    assert (agreement["k"], agreement["n"], agreement["skips"]) == (0, 1, 0)
    listed = client.get("/api/rows", params={"principle": "crime-illegal", "labeler": "ann"})
    assert [r["mine"] for r in listed.json()["rows"]][:2] == [{}, {"pair": "b"}]


def test_a_sample_lists_only_its_rows(out_dir):
    client = TestClient(create_app(open_folder(out_dir, 4, seed=1)), base_url=LOCAL)
    meta = client.get("/api/meta").json()
    assert (meta["shown"], meta["total"], meta["sample"]) == (4, 19, 4)
    assert client.get("/api/rows").json()["count"] == 4


def test_a_folder_without_a_dataset_is_one_clear_error(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    assert main(["review", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlaif: error:") and "no rlaif dataset here" in err
    assert err.count("\n") == 1 and not (tmp_path / "review.sqlite").exists()


@pytest.mark.parametrize(
    "args, message",
    [(["--sample", "0"], "at least 1"), (["--gold", "g.jsonl"], "belong to `rlaif review export")],
)
def test_bad_options(out_dir, capsys, args, message):
    assert main(["review", str(out_dir), *args]) == 2
    assert message in capsys.readouterr().err
