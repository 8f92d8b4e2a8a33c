"""``rlaif push``: what goes up is the data and the card, read back by ``load_dataset``.

The Hub itself is out of reach in tests, so the fake stands at the ``HfApi`` boundary only: it
records ``create_repo`` and writes the ``create_commit`` operations into a folder, which is then
loaded with ``datasets`` exactly as a user would load the repo.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from rlaif.cli import main
from rlaif.data.hub import prepare, push
from rlaif.data.provenance import read_rows
from rlaif.errors import PushError

from ..labelers.fake_openai_server import FakeOpenAIServer

pytest.importorskip("openai")


class RecordingHub:
    """Stands in for ``huggingface_hub.HfApi``: keeps what would be uploaded, in a folder."""

    def __init__(self, root: Path):
        self.root = root
        self.repos: list[tuple[str, str, bool]] = []

    def create_repo(self, repo_id, repo_type=None, private=False, exist_ok=False):
        self.repos.append((repo_id, repo_type, private))
        return f"https://huggingface.co/datasets/{repo_id}"

    def create_commit(self, repo_id, operations, commit_message, repo_type=None):
        for op in operations:
            target = self.root / op.path_in_repo
            src = op.path_or_fileobj
            target.write_bytes(Path(src).read_bytes() if isinstance(src, str) else src)


@pytest.fixture(scope="module")
def sl_cai_out(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("push")
    prompts = tmp / "prompts.txt"
    prompts.write_text("\n".join(f"prompt number {i}" for i in range(5)))
    out = tmp / "out"
    with FakeOpenAIServer() as server:
        args = ["--prompts", str(prompts), "--labeler", "openai:fake", "--max-tokens", "16"]
        args += ["--labeler-set", f"base_url={server.url}", "--parquet", "--out", str(out)]
        code = main(["generate", "sl-cai", *args])
    assert code == 0
    return out


def test_push_sends_the_data_and_card_only_and_loads_back(sl_cai_out, tmp_path):
    from datasets import load_dataset

    leftovers = {p.name for p in sl_cai_out.iterdir()}
    assert {"cache.sqlite", "sl_cai.timings.jsonl"} <= leftovers  # the folder holds more
    hub = tmp_path / "hub"
    hub.mkdir()
    api = RecordingHub(hub)
    url = push(sl_cai_out, "me/cai-data", private=True, license="apache-2.0", api=api)
    assert url == "https://huggingface.co/datasets/me/cai-data"
    assert api.repos == [("me/cai-data", "dataset", True)]
    assert sorted(p.name for p in hub.iterdir()) == ["README.md", "sl_cai.jsonl", "sl_cai.parquet"]
    card = (hub / "README.md").read_text()
    assert "license: apache-2.0" in card and "license: unknown" not in card
    assert (sl_cai_out / "README.md").read_text().count("license: unknown") == 1  # local card kept
    assert (
        card.split("\n---\n", 1)[1] == (sl_cai_out / "README.md").read_text().split("\n---\n", 1)[1]
    )
    # what a user gets from load_dataset(REPO_ID): the rows as written
    loaded = load_dataset(str(hub), split="train")
    written = read_rows(sl_cai_out / "sl_cai.jsonl")
    assert loaded["id"] == [r["id"] for r in written] == [f"line-{i}" for i in range(1, 6)]
    assert loaded["revision"] == [r["revision"] for r in written]
    # locally a row refers to the folder's provenance record; what goes up has it in full
    local = json.loads((sl_cai_out / "sl_cai.jsonl").read_text().splitlines()[0])
    assert set(local["provenance"]) == {"sha256"}
    full = written[0]["provenance"]
    assert full["critic"]["model"] == "fake" and full["source"]["file"] == "prompts.txt"
    assert [
        json.loads(x)["provenance"] for x in (hub / "sl_cai.jsonl").read_text().splitlines()
    ] == [full] * 5
    parquet = pq.read_table(hub / "sl_cai.parquet").column("provenance").to_pylist()
    assert parquet == [full] * 5


def test_card_front_matter_describes_the_dataset(sl_cai_out):
    head = (sl_cai_out / "README.md").read_text().split("\n---\n", 1)[0]
    for line in (
        "license: unknown",
        "language: [en]",
        "task_categories: [text-generation]",
        "size_categories: [n<1K]",
        'source_datasets: ["prompts.txt"]',
        "    data_files: sl_cai.jsonl",
    ):
        assert line in head.splitlines(), line
    assert "tags: [rlaif, constitutional-ai, sl-cai, synthetic]" in head


def test_push_dry_run_lists_files_and_bad_folders_are_clear_errors(sl_cai_out, tmp_path, capsys):
    assert main(["push", str(sl_cai_out), "me/x", "--dry-run"]) == 0
    said = capsys.readouterr().out
    assert said.strip() == "would upload to me/x: sl_cai.jsonl, sl_cai.parquet, README.md"
    with pytest.raises(PushError, match=r"no README\.md"):
        prepare(tmp_path)
    assert main(["push", str(tmp_path / "nowhere"), "me/x"]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_prefs_push_takes_the_plot_the_card_shows(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a question\nanother question\n")
    out = tmp_path / "prefs"
    with FakeOpenAIServer() as server:
        args = ["--prompts", str(prompts), "--labeler", "openai:fake", "--max-tokens", "8"]
        args += ["--labeler-set", f"base_url={server.url}", "--out", str(out)]
        code = main(["generate", "prefs", *args])
    assert code == 0
    assert "![" in (out / "README.md").read_text()
    upload = prepare(out)
    assert [f.name for f in upload.files] == ["preferences.jsonl", "preference_prob.png"]


def test_generate_push_to_hub_uploads_when_every_row_succeeded(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    hub = tmp_path / "hub"
    hub.mkdir()
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda: RecordingHub(hub))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("one question\nprompt number 2\n")
    with FakeOpenAIServer() as server:
        args = ["--prompts", str(prompts), "--labeler", "openai:fake", "--max-tokens", "8"]
        args += ["--labeler-set", f"base_url={server.url}", "--out", str(tmp_path / "o")]
        args += ["--push-to-hub", "me/sl", "--private"]
        assert main(["generate", "sl-cai", *args]) == 0
        assert "pushed sl_cai.jsonl, README.md to https://huggingface.co/datasets/me/sl" in (
            " ".join(capsys.readouterr().out.split())
        )
        assert sorted(p.name for p in hub.iterdir()) == ["README.md", "sl_cai.jsonl"]
        # a run with a failed row pushes nothing
        for p in hub.iterdir():
            p.unlink()
        server.fail_if = lambda request: "prompt number 2" in json.dumps(request["messages"])
        args[args.index(str(tmp_path / "o"))] = str(tmp_path / "o2")
        assert main(["generate", "sl-cai", *args, "--labeler-set", "retry={max_retries: 0}"]) == 3
    assert "not pushed" in capsys.readouterr().out and not list(hub.iterdir())


@pytest.mark.parametrize("name", ["../secret.txt", "/etc/passwd", "link.jsonl"])
def test_a_card_naming_a_file_outside_the_folder_is_refused(sl_cai_out, tmp_path, name):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(sl_cai_out, folder)
    (tmp_path / "secret.txt").write_text("not for the Hub")
    (folder / "link.jsonl").symlink_to(tmp_path / "secret.txt")
    card = folder / "README.md"
    text = card.read_text().replace("data_files: sl_cai.jsonl", f"data_files: {name}", 1)
    card.write_text(text)
    assert f"data_files: {name}" in text
    with pytest.raises(PushError, match="is outside the dataset folder"):
        prepare(folder)
