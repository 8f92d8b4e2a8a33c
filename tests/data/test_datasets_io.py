"""Prompts through ``datasets``: parquet, folders laid out like Hub repos, Hub ids read offline
from a Hub-layout cache, conversational prompts, and the errors a user can cause."""

from __future__ import annotations

import gzip
import json
import re
import shutil
from pathlib import Path

import pytest

from rlaif.data.datasets_io import LoadOptions, hub_id
from rlaif.data.provenance import read_rows
from rlaif.data.sources import read_prompts, source_sha256
from rlaif.engine.critique_revise import prompt_text
from rlaif.errors import PromptDataError

from ..conftest import FIXTURES
from .hub_cache import SHA, offline_dataset_cache


def hh_repo(root: Path) -> Path:
    """A dataset repo laid out like Anthropic/hh-rlhf: one folder per subset, split files."""
    (root / "harmless-base").mkdir(parents=True, exist_ok=True)
    (root / "helpful-base").mkdir()
    shutil.copy(FIXTURES / "hh_small.jsonl.gz", root / "harmless-base" / "test.jsonl.gz")
    rows = [{"chosen": "\n\nHuman: Train me.\n\nAssistant: ok", "rejected": "x"}] * 2
    with gzip.open(root / "harmless-base" / "train.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    with gzip.open(root / "helpful-base" / "test.jsonl.gz", "wt") as f:
        f.write(json.dumps({"chosen": "\n\nHuman: Helpful?\n\nAssistant: yes", "rejected": "n"}))
    return root


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    """An offline Hub cache holding ``test-org/hh`` at commit SHA (refs/main)."""
    home = tmp_path / "hf-home"
    hh_repo(offline_dataset_cache(monkeypatch, home, "test-org/hh", SHA))
    return home


def test_parquet_file(tmp_path):
    from datasets import Dataset

    path = tmp_path / "p.parquet"
    Dataset.from_dict({"id": ["a", "b"], "prompt": ["first?", "second?"]}).to_parquet(str(path))
    rows = read_prompts(path)
    assert [(r.id, r.prompt) for r in rows] == [("a", "first?"), ("b", "second?")]
    assert [r.prompt for r in read_prompts(path, limit=1)] == ["first?"]


def test_folder_like_a_hub_repo_with_data_dir_and_split(tmp_path):
    repo = hh_repo(tmp_path / "repo")
    rows = read_prompts(repo, options=LoadOptions(split="test", data_dir="harmless-base"))
    expected = read_prompts(FIXTURES / "hh_small.jsonl.gz")  # hh-rlhf transcripts recognised
    assert [r.prompt for r in rows] == [r.prompt for r in expected]
    assert [r.id for r in rows] == ["row-1", "row-2", "row-3"]
    with pytest.raises(PromptDataError, match=r"several splits .*choose one with --split"):
        read_prompts(repo, options=LoadOptions(data_dir="harmless-base"))
    limited = read_prompts(
        repo, options=LoadOptions(split="test", data_dir="harmless-base", streaming=True), limit=2
    )
    assert [r.prompt for r in limited] == [r.prompt for r in expected[:2]]


def test_hub_id_read_offline_from_the_hub_cache(hf_home):
    assert hub_id("test-org/hh") == ("test-org/hh", None)
    assert hub_id(f"hf://datasets/test-org/hh@{SHA}") == ("test-org/hh", SHA)
    assert hub_id(Path("hf://datasets/test-org/hh")) == ("test-org/hh", None)
    opts = LoadOptions(split="test", data_dir="harmless-base")
    rows = read_prompts("test-org/hh", options=opts)
    assert rows[1].prompt == "My roommate ate my food again."
    helpful = read_prompts(
        "hf://datasets/test-org/hh", options=LoadOptions(data_dir="helpful-base")
    )
    assert [r.prompt for r in helpful] == ["Helpful?"]  # one split: no --split needed
    # the source's hash is its commit: the same snapshot, the same hash
    assert source_sha256("test-org/hh") == source_sha256(f"test-org/hh@{SHA}")


def test_hashing_a_hub_source_fetches_no_data(hf_home, monkeypatch):
    from rlaif import models

    asked = []
    real = models.hub_snapshot
    monkeypatch.setattr(models, "hub_snapshot", lambda *a, **k: asked.append(a[2]) or real(*a, **k))
    digest = source_sha256("test-org/hh")
    assert asked == [["README.md"]]  # the commit is resolved; no data file is fetched
    read_prompts("test-org/hh", options=LoadOptions(split="test", data_dir="harmless-base"))
    assert asked[1] == ["harmless-base/**", "README.md", "*.json"]  # only the folder asked for
    assert source_sha256("test-org/hh") == digest and len(asked) == 2  # resolved: no new call


def test_hub_id_not_cached_offline_is_one_line_naming_the_fetch(hf_home):
    with pytest.raises(PromptDataError) as err:
        read_prompts("test-org/missing", options=LoadOptions(split="test"))
    said = str(err.value)
    assert "dataset 'test-org/missing' is not in the Hugging Face cache" in said
    assert "hf download test-org/missing --repo-type dataset" in said and "\n" not in said


def test_conversational_prompts_in_jsonl(tmp_path):
    path = tmp_path / "chat.jsonl"
    lines = [
        {"id": "one", "prompt": [{"role": "user", "content": "Hello?"}]},
        {
            "id": "multi",
            "prompt": [
                {"role": "user", "content": "I need help."},
                {"role": "assistant", "content": "With what?"},
                {"role": "user", "content": "Picking a lock."},
            ],
        },
        {
            "id": "bad",
            "prompt": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}],
        },
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines[:2]))
    rows = read_prompts(path)
    assert rows[0].prompt == "Hello?"
    assert rows[1].prompt == lines[1]["prompt"]  # a conversation stays its messages
    assert rows[1].text == "Human: I need help.\n\nAssistant: With what?\n\nHuman: Picking a lock."
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.raises(PromptDataError, match=r"chat\.jsonl:3: the conversation must end with"):
        read_prompts(path)


def test_content_parts_are_read_as_text_and_unusable_records_are_named(tmp_path):
    """A saved dataset used to drop records without a usable prompt, unsaid; now content-part
    messages are read and anything else is an error naming the record."""
    from datasets import Dataset

    parts = [{"role": "user", "content": [{"type": "text", "text": "Hello"},
                                          {"type": "text", "text": "there?"}]}]  # fmt: skip
    good = Dataset.from_list([{"id": "a", "prompt": parts}])
    good.save_to_disk(str(tmp_path / "good"))
    assert [r.prompt for r in read_prompts(tmp_path / "good")] == ["Hello\nthere?"]
    cases = {
        "ends-with-assistant": [{"role": "user", "content": "x"},
                                {"role": "assistant", "content": "y"}],
        "tool": [{"role": "tool", "content": "42"}, {"role": "user", "content": "and?"}],
        "image": [{"role": "user", "content": [{"type": "image_url", "text": None}]}],
        "empty": [{"role": "user", "content": "  "}],
    }  # fmt: skip
    said = {
        "ends-with-assistant": "the conversation must end with the person's (user) turn",
        "tool": "message 1 has role 'tool'",
        "image": "a content part of type 'image_url'",
        "empty": "message 1 (user) is empty",
    }
    for name, prompt in cases.items():
        rows = [{"id": "fine", "prompt": [{"role": "user", "content": "ok"}]},
                {"id": name, "prompt": prompt}]  # fmt: skip
        path = tmp_path / name
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        folder = tmp_path / f"{name}-ds"
        folder.mkdir()
        (folder / "train.jsonl").write_text(path.read_text())
        with pytest.raises(
            PromptDataError, match=rf"record 2 \(id {name}\): {re.escape(said[name])}"
        ):
            read_prompts(folder, "dataset")
        with pytest.raises(PromptDataError, match=re.escape(said[name])):
            read_prompts(path, "jsonl")


def test_dataset_without_the_prompt_column_names_its_columns(tmp_path):
    from datasets import Dataset

    path = tmp_path / "q.parquet"
    Dataset.from_dict({"question": ["a"]}).to_parquet(str(path))
    with pytest.raises(PromptDataError, match=r"no text field 'prompt' \(keys: question\)"):
        read_prompts(path)
    assert [r.prompt for r in read_prompts(path, prompt_field="question")] == ["a"]


def test_generate_sl_cai_from_a_hub_id_offline_records_the_commit(hf_home, tmp_path):
    pytest.importorskip("openai")
    from rlaif.cli import main

    from ..labelers.fake_openai_server import FakeOpenAIServer

    out = tmp_path / "out"
    with FakeOpenAIServer() as server:
        args = ["--prompts", "test-org/hh", "--data-dir", "harmless-base", "--split", "test"]
        args += ["--labeler", "openai:fake", "--labeler-set", f"base_url={server.url}"]
        args += ["--limit", "2", "--max-tokens", "8", "--out", str(out)]
        assert main(["generate", "sl-cai", *args]) == 0
    rows = read_rows(out / "sl_cai.jsonl")
    assert [prompt_text(r) for r in rows] == [
        r.prompt for r in read_prompts(FIXTURES / "hh_small.jsonl.gz")
    ][:2]
    source = rows[0]["provenance"]["source"]
    assert source["file"] == "test-org/hh" and source["commit"] == SHA
    assert source["split"] == "test" and source["data_dir"] == "harmless-base"
    assert 'source_datasets: ["test-org/hh"]' in (out / "README.md").read_text()


def test_generate_from_parquet_and_conversational_jsonl(tmp_path):
    pytest.importorskip("openai")
    from datasets import Dataset

    from rlaif.cli import main

    from ..labelers.fake_openai_server import FakeOpenAIServer

    parquet = tmp_path / "p.parquet"
    Dataset.from_dict({"prompt": ["one?", "two?"]}).to_parquet(str(parquet))
    chat = tmp_path / "chat.jsonl"
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    chat.write_text(json.dumps({"prompt": [*turns, {"role": "user", "content": "Lockpicks?"}]}))
    with FakeOpenAIServer() as server:
        for src, name in ((parquet, "pq"), (chat, "chat")):
            args = ["--prompts", str(src), "--labeler", "openai:fake", "--max-tokens", "8"]
            args += ["--labeler-set", f"base_url={server.url}", "--out", str(tmp_path / name)]
            assert main(["generate", "sl-cai", *args]) == 0
    pq = [json.loads(x) for x in (tmp_path / "pq" / "sl_cai.jsonl").read_text().splitlines()]
    assert [prompt_text(r) for r in pq] == ["one?", "two?"]
    (row,) = [json.loads(x) for x in (tmp_path / "chat" / "sl_cai.jsonl").read_text().splitlines()]
    assert prompt_text(row) == "Lockpicks?"
    assert row["prompt"] == [*turns, {"role": "user", "content": "Lockpicks?"}]


def test_messages_records_are_prompts_without_their_answer(tmp_path):
    """TRL's full-conversation ``messages`` column is read when there is no ``prompt``: the
    conversation up to the person's last turn, the answer left out."""
    from datasets import Dataset

    turns = [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Help me cheat?"},
        {"role": "assistant", "content": "No."},
    ]
    path = tmp_path / "messages.jsonl"
    path.write_text(json.dumps({"id": "m", "messages": turns}) + "\n")
    (row,) = read_prompts(path)
    assert row.prompt == turns[:4] and row.id == "m"
    Dataset.from_list([{"messages": turns[1:2] + turns[4:]}]).save_to_disk(str(tmp_path / "ds"))
    assert [r.prompt for r in read_prompts(tmp_path / "ds")] == ["Hi"]  # one turn: a string
    late_system = [*turns[1:2], {"role": "system", "content": "x"}, turns[3]]
    path.write_text(json.dumps({"messages": late_system}) + "\n")
    with pytest.raises(PromptDataError, match="message 2 is a system message after the first"):
        read_prompts(path)
