"""Hub model ids, offline, against a real Hub cache layout in a temporary ``HF_HOME``.

``huggingface_hub`` reads ``HF_HOME`` and ``HF_HUB_OFFLINE`` once, at import: in-process tests
patch ``huggingface_hub.constants``; the end-to-end test runs the CLI in a subprocess with the
environment a user would set.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rlaif import models
from rlaif.cli import main
from rlaif.data.provenance import read_rows
from rlaif.errors import ModelNotFoundError

from .conftest import FIXTURES, REPO

SHA1 = "1" * 40
SHA2 = "2" * 40
REPO_ID = "test-org/tiny-chat"
CACHE_FOLDER = "models--test-org--tiny-chat"


def add_snapshot(hf_home: Path, source: Path, sha: str, ref: str | None = "main",
                 folder: str = CACHE_FOLDER) -> Path:  # fmt: skip
    """Copy a model folder into ``HF_HOME/hub/<folder>/snapshots/<sha>`` and point ``ref`` at
    it, the way ``huggingface_hub`` lays out a download."""
    repo = hf_home / "hub" / folder
    snapshot = repo / "snapshots" / sha
    shutil.copytree(source, snapshot)
    if ref:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(sha)
    return snapshot


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    """An empty offline Hub cache, for this process and for subprocesses."""
    from huggingface_hub import constants

    home = tmp_path / "hf-home"
    (home / "hub").mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(models, "_RESOLVED", {})
    return home


def test_hub_ids_are_told_apart_from_paths():
    assert models.parse_hub_id("Qwen/Qwen2.5-7B-Instruct") == ("Qwen/Qwen2.5-7B-Instruct", None)
    assert models.parse_hub_id("test-org/tiny-chat@v1.0") == ("test-org/tiny-chat", "v1.0")
    assert models.parse_hub_id(f"a/b@{SHA1}") == ("a/b", SHA1)
    for not_an_id in ("smollm2", "/abs/model", "./out/sft", "out/sft/final", "../x/y", "a/b@"):
        assert models.parse_hub_id(not_an_id) is None, not_an_id


def test_resolves_a_cached_snapshot_to_its_commit(hf_home, tiny_llama_dir):
    snapshot = add_snapshot(hf_home, tiny_llama_dir, SHA1)
    hub = models.resolve_hub(REPO_ID)
    assert (hub.repo_id, hub.revision, hub.commit, hub.path) == (REPO_ID, None, SHA1, snapshot)
    assert models.resolve_model(REPO_ID) == snapshot
    assert models.cache_name(REPO_ID) == f"{REPO_ID}@{SHA1}"
    assert models.model_provenance(REPO_ID) == {"revision": "main", "commit": SHA1}
    # the embedded name and local folders are untouched by any of this
    assert models.cache_name(str(tiny_llama_dir)).startswith(f"{tiny_llama_dir}@")
    assert models.model_provenance(str(tiny_llama_dir)) == {}


def test_revision_pins_a_commit_or_a_tag(hf_home, tiny_llama_dir):
    first = add_snapshot(hf_home, tiny_llama_dir, SHA1, ref="v1")
    second = add_snapshot(hf_home, tiny_llama_dir, SHA2)
    assert models.resolve_model(REPO_ID) == second
    assert models.resolve_model(f"{REPO_ID}@{SHA1}") == first
    assert models.resolve_model(f"{REPO_ID}@v1") == first
    assert models.cache_name(f"{REPO_ID}@v1") == f"{REPO_ID}@{SHA1}"
    assert models.model_provenance(f"{REPO_ID}@v1")["revision"] == "v1"


def test_resolution_is_done_once_per_process(hf_home, tiny_llama_dir, monkeypatch):
    import huggingface_hub

    add_snapshot(hf_home, tiny_llama_dir, SHA1)
    calls = []
    real = huggingface_hub.snapshot_download
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda *a, **k: calls.append(a) or real(*a, **k))  # fmt: skip
    for _ in range(3):
        models.resolve_model(REPO_ID)
        models.cache_name(REPO_ID)
    assert calls == [(REPO_ID,)]


def test_bin_weights_are_fetched_only_without_safetensors(hf_home, tiny_llama_dir, monkeypatch):
    import huggingface_hub

    source = hf_home.parent / "bin-model"
    source.mkdir()
    shutil.copy(tiny_llama_dir / "config.json", source)
    (source / "pytorch_model.bin").write_bytes(b"weights")
    add_snapshot(hf_home, source, SHA1)
    patterns = []
    real = huggingface_hub.snapshot_download
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda *a, **k: patterns.append((k["revision"], k["allow_patterns"]))
                        or real(*a, **k))  # fmt: skip
    models.resolve_hub(REPO_ID)
    assert patterns == [(None, models.HUB_ALLOW), (SHA1, models.HUB_ALLOW_BIN)]
    assert "*.safetensors" in models.HUB_ALLOW and "*.bin" not in str(models.HUB_ALLOW)


def test_missing_model_offline_names_the_id_and_the_fetch_command(hf_home):
    with pytest.raises(ModelNotFoundError) as e:
        models.resolve_model(f"{REPO_ID}@v2")
    msg = str(e.value)
    assert f"'{REPO_ID}' at revision 'v2' is not in the Hugging Face cache" in msg
    assert f"`hf download {REPO_ID} --revision v2`" in msg and "HF_HUB_OFFLINE" in msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ("RepositoryNotFoundError", "'test-org/tiny-chat' was not found on the Hugging Face Hub"),
        ("RevisionNotFoundError", "'test-org/tiny-chat' has no revision 'v9'"),
        ("GatedRepoError", "'test-org/tiny-chat' is gated: accept its terms"),
    ],
)
def test_hub_answers_become_one_line_errors(hf_home, monkeypatch, error, expected):
    import types

    import huggingface_hub
    from huggingface_hub import errors

    response = types.SimpleNamespace(headers={}, request=None, status_code=404)

    def refuse(*args, **kwargs):
        raise getattr(errors, error)("404 Client Error\nmore lines", response=response)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)
    with pytest.raises(ModelNotFoundError) as e:
        models.resolve_model(f"{REPO_ID}@v9")
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_a_path_shaped_name_that_does_not_exist_is_not_a_silent_download(hf_home):
    with pytest.raises(ModelNotFoundError, match="out/sft' is not in the Hugging Face cache"):
        models.resolve_model("out/sft")  # a relative path that is not there: looked up, offline
    with pytest.raises(ModelNotFoundError, match="neither an embedded model"):
        models.resolve_model("out/sft/final")


def test_vllm_gets_the_snapshot_folder_and_the_sha(hf_home, tiny_llama_dir, monkeypatch):
    import types

    from rlaif.labelers.base import create_labeler

    snapshot = add_snapshot(hf_home, tiny_llama_dir, SHA1)
    seen = {}
    fake = types.ModuleType("vllm")
    fake.LLM = lambda **kwargs: seen.update(kwargs) or "engine"
    platforms = types.ModuleType("vllm.platforms")
    platforms.current_platform = types.SimpleNamespace(is_cpu=lambda: False)
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setitem(sys.modules, "vllm.platforms", platforms)
    # the synchronous engine: vllm.LLM, which the fake module stands in for
    lab = create_labeler(f"vllm:{REPO_ID}@main", engine="sync")
    assert lab.model_name == f"{REPO_ID}@{SHA1}"
    assert (lab.describe()["model"], lab.describe()["commit"]) == (f"{REPO_ID}@main", SHA1)
    lab.load()
    assert seen["model"] == str(snapshot)
    with pytest.raises(ModelNotFoundError, match="test-org/absent"):
        create_labeler("vllm:test-org/absent")


def _generate(labeler: str, prompts: Path, out: Path, *extra: str, tokens: int = 4) -> list[str]:
    return ["generate", "sl-cai", "--prompts", str(prompts), "--labeler", labeler,
            "--rounds", "1", "--max-tokens", str(tokens), "--temperature", "0", "--out", str(out),
            *extra]  # fmt: skip


def test_generate_by_hub_id_records_the_sha_and_a_new_snapshot_misses_the_cache(
    hf_home, tiny_llama_dir, tmp_path
):
    add_snapshot(hf_home, tiny_llama_dir, SHA1)
    prompts = FIXTURES / "prompts.txt"
    cache = tmp_path / "cache.sqlite"
    first = tmp_path / "first"
    assert main(_generate(f"transformers:{REPO_ID}", prompts, first, "--limit", "2",
                          "--cache", str(cache))) == 0  # fmt: skip
    row = read_rows(first / "sl_cai.jsonl")[0]
    critic = row["provenance"]["critic"]
    assert (critic["model"], critic["commit"], critic["revision"]) == (REPO_ID, SHA1, "main")
    assert f"commit={SHA1}" in (first / "README.md").read_text()  # the dataset card

    def calls(out: Path) -> int:
        return int(re.search(r"(\d+) labeler calls", (out / "README.md").read_text())[1])

    again = tmp_path / "again"
    assert main(_generate(f"transformers:{REPO_ID}", prompts, again, "--limit", "2",
                          "--cache", str(cache))) == 0  # fmt: skip
    assert calls(again) == 0  # the same snapshot: every answer from the cache

    add_snapshot(hf_home, tiny_llama_dir, SHA2)  # refs/main moves to a new snapshot
    models._RESOLVED.clear()  # a new process
    moved = tmp_path / "moved"
    assert main(_generate(f"transformers:{REPO_ID}", prompts, moved, "--limit", "2",
                          "--cache", str(cache))) == 0  # fmt: skip
    assert calls(moved) == calls(first) > 0  # fresh model calls, not old answers
    row = read_rows(moved / "sl_cai.jsonl")[0]
    assert row["provenance"]["critic"]["commit"] == SHA2


def test_missing_hub_model_exits_2_with_one_line_and_writes_nothing(hf_home, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(_generate(f"transformers:{REPO_ID}", FIXTURES / "prompts.txt", out))
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and REPO_ID in err and "hf download" in err
    assert not out.exists()


def test_eval_labeler_by_hub_id(hf_home, tiny_llama_dir, tmp_path):
    add_snapshot(hf_home, tiny_llama_dir, SHA1)
    out = tmp_path / "eval"
    args = ["eval", "labeler", "--gold", str(FIXTURES / "gold_pairs.jsonl"),
            "--labeler", f"transformers:{REPO_ID}", "--limit", "2", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    report = json.loads((out / "labeler_eval.json").read_text())
    assert report["provenance"]["labeler"]["commit"] == SHA1
    assert report["metrics"]["scored"] == 2


def test_train_sft_by_hub_id(hf_home, tiny_llama_dir, tmp_path):
    add_snapshot(hf_home, tiny_llama_dir, SHA1)
    sl_cai_file = tmp_path / "sl_cai.jsonl"
    chat = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]
    sl_cai_file.write_text("".join(json.dumps({"messages": chat}) + "\n" for _ in range(4)))
    recipe = tmp_path / "sft.yaml"
    recipe.write_text(f"model: {REPO_ID}\ndataset: {sl_cai_file}\nuse_cpu: true\n")
    out = tmp_path / "sft"
    sets = ["max_steps=1", f"output_dir={out}", "per_device_train_batch_size=2"]
    assert main(["train", "sft", "--config", str(recipe), *(f"--set={s}" for s in sets)]) == 0
    assert (out / "model.safetensors").is_file()
    record = json.loads((out / "rlaif_train.json").read_text())
    assert record["config"]["model"] == REPO_ID
    assert record["hub_commits"] == {REPO_ID: SHA1}


def test_a_run_fingerprints_the_commit_its_hub_models_resolve_to(hf_home, tiny_llama_dir):
    """``rlaif run`` skips a finished stage only while the Hub ids still name the same commit."""
    from rlaif.pipeline import RunConfig, hub_commits_of

    add_snapshot(hf_home, tiny_llama_dir, SHA1)
    cfg = RunConfig(name="hub", base_model=REPO_ID, labeler=f"transformers:{REPO_ID}",
                    prompts=FIXTURES / "red_team.txt")  # fmt: skip
    assert hub_commits_of(cfg) == {REPO_ID: SHA1}
    add_snapshot(hf_home, tiny_llama_dir, SHA2)  # refs/main moves
    models._RESOLVED.clear()  # a new process
    assert hub_commits_of(cfg) == {REPO_ID: SHA2}
    # API labelers' model names are never taken for Hub ids, nor are built-in models
    local = RunConfig(name="x", labeler="openai:meta-llama/Llama-3-8B", prompts=cfg.prompts)
    assert hub_commits_of(local) == {}


def _cli(args: list[str], hf_home: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "rlaif", *args], capture_output=True, text=True,
                          check=False, cwd=REPO, env=env, timeout=600)  # fmt: skip


def test_cli_honours_hf_home_from_the_environment(hf_home, tiny_llama_dir, tmp_path):
    add_snapshot(hf_home, tiny_llama_dir, SHA1)
    prompts = tmp_path / "p.txt"
    prompts.write_text("Say hi.\n")
    out = tmp_path / "o"
    proc = _cli(_generate(f"transformers:{REPO_ID}", prompts, out), hf_home)
    assert proc.returncode == 0, proc.stderr
    row = read_rows(out / "sl_cai.jsonl")[0]
    assert row["provenance"]["policy"]["commit"] == SHA1

    missing = tmp_path / "missing"
    proc = _cli(_generate("transformers:test-org/absent", prompts, missing), hf_home)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "test-org/absent" in proc.stderr
    assert not missing.exists()


@pytest.mark.slow
def test_generate_by_hub_id_with_smollm2(hf_home, tmp_path):
    smollm2 = models.ensure_converted(models.EMBEDDED["smollm2"])
    folder = "models--HuggingFaceTB--SmolLM2-135M-Instruct"
    add_snapshot(hf_home, smollm2, SHA1, folder=folder)
    prompts = tmp_path / "p.txt"
    prompts.write_text("What is the capital of France?\n")
    out = tmp_path / "o"
    labeler = "transformers:HuggingFaceTB/SmolLM2-135M-Instruct"
    proc = _cli(_generate(labeler, prompts, out, tokens=16), hf_home)
    assert proc.returncode == 0, proc.stderr
    row = read_rows(out / "sl_cai.jsonl")[0]
    assert row["provenance"]["critic"]["commit"] == SHA1
    assert "Paris" in row["response"]


_RECORD_LOOKUPS = """
import atexit, socket
_seen = []
_real = socket.getaddrinfo
def _lookup(*args, **kwargs):
    _seen.append(str(args[0]))
    return _real(*args, **kwargs)
socket.getaddrinfo = _lookup
atexit.register(lambda: open({out!r}, "w").write("\\n".join(_seen)))
"""


@pytest.mark.parametrize(
    "entry", [["rlaif", "train", "sft"], ["rlaif.train.sft"]], ids=["cli", "torchrun-entry"]
)
def test_built_in_models_never_touch_the_network_without_hf_hub_offline(tmp_path, entry):
    """With HF_HUB_OFFLINE unset, training the built-in model looks up no host at all (no
    telemetry, no download counts, no Hub calls): every name lookup in the process is
    recorded. Both through the CLI and through ``python -m rlaif.train.sft``, the entry point
    that torchrun and accelerate launch use."""
    site = tmp_path / "site"
    site.mkdir()
    lookups = tmp_path / "lookups.txt"
    (site / "sitecustomize.py").write_text(_RECORD_LOOKUPS.format(out=str(lookups)))
    data = tmp_path / "sl_cai.jsonl"
    chat = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]
    data.write_text("".join(json.dumps({"messages": chat}) + "\n" for _ in range(4)))
    recipe = tmp_path / "sft.yaml"
    recipe.write_text(f"model: tiny-random\ndataset: {data}\nuse_cpu: true\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "hf"), PYTHONPATH=str(site))
    args = [
        "--config",
        str(recipe),
        "--set",
        "max_steps=1",
        "--set",
        f"output_dir={tmp_path / 'out'}",
        "--set",
        "per_device_train_batch_size=2",
    ]
    proc = subprocess.run([sys.executable, "-m", *entry, *args], capture_output=True, text=True,
                          check=False, cwd=REPO, env=env, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert lookups.read_text() == ""
