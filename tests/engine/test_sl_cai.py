"""The SL-CAI job end to end on a tiny random Llama: files, cache, card, TRL compatibility."""

from __future__ import annotations

import asyncio
import json

import pytest

from rlaif.constitution import load_constitution
from rlaif.data.provenance import read_rows
from rlaif.engine.critique_revise import prompt_text
from rlaif.engine.sl_cai import SLCAIConfig, run_sl_cai

from ..conftest import FIXTURES, REPO


def config(tiny_llama_dir, out, **kw):
    settings = {
        "prompts": FIXTURES / "hh_small.jsonl.gz",
        "labeler": f"transformers:{tiny_llama_dir}",
        "rounds": 2,
        "max_tokens": 6,
        "out": out,
    }
    return SLCAIConfig(**{**settings, **kw})


def run(cfg):
    return asyncio.run(run_sl_cai(cfg, "rlaif generate sl-cai ..."))


def test_rows_rounds_card_and_rerun_without_calls(tiny_llama_dir, tmp_path):
    cfg = config(tiny_llama_dir, tmp_path / "out", parquet=True)
    first = run(cfg)
    rows = read_rows(first.dataset)
    assert [prompt_text(r) for r in rows] == [
        "How can I sneak into a concert without paying?",
        "My roommate ate my food again.",
        "What's the fastest way to lose 10 kilos in a week?",
    ]
    assert all(len(r["rounds"]) == 2 for r in rows)
    assert first.stats.requests == 3 * 5 and first.stats.cache_hits == 0
    prov = rows[0]["provenance"]
    assert prov["source"]["file"] == "hh_small.jsonl.gz" and prov["rounds"] == 2
    assert set(prov["templates"]) == {"initial_response", "critique", "revision"}
    assert prov["critic"]["backend"] == "transformers" and prov["params"]["max_tokens"] == 6
    card = first.card.read_text()
    assert "| rows | 3 |" in card and "### Principles used" in card
    for r in rows:
        for rnd in r["rounds"]:
            assert f"`{rnd['principle_id']}`" in card
    assert (tmp_path / "out" / "sl_cai.parquet").is_file()
    timings = (tmp_path / "out" / "sl_cai.timings.jsonl").read_text().splitlines()
    assert [json.loads(t)["id"] for t in timings] == [r["id"] for r in rows]

    before = first.dataset.read_bytes()
    again = run(cfg)
    assert again.stats.labeler_calls == 0 and again.resumed == 3
    assert again.dataset.read_bytes() == before

    (tmp_path / "out" / ".sl_cai.jsonl.run.json").unlink()  # no journal: all from the cache
    cached = run(cfg)
    assert cached.stats.labeler_calls == 0 and cached.stats.cache_hits == 15
    assert cached.dataset.read_bytes() == before


def test_changing_one_principle_regenerates_only_its_rows(tiny_llama_dir, tmp_path):
    const_dir = tmp_path / "const"
    const_dir.mkdir()
    src = REPO / "constitution" / "helpful-honest-harmless.yaml"
    (const_dir / "c.yaml").write_text(src.read_text())
    cfg = config(tiny_llama_dir, tmp_path / "out", constitution=const_dir / "c.yaml")
    first = run(cfg)
    rows = {r["id"]: r for r in first.rows}
    used = {rid: [x["principle_id"] for x in r["rounds"]] for rid, r in rows.items()}
    target = used["row-1"][0]
    # the requests that must be redone: from the first round that uses the principle onward
    expected_misses = sum(2 * (2 - ids.index(target)) for ids in used.values() if target in ids)
    const = load_constitution(const_dir / "c.yaml")
    old = const.critique_principle(target).critique_request
    text = (const_dir / "c.yaml").read_text()
    assert text.count(old.split()[0]) >= 1
    (const_dir / "c.yaml").write_text(text.replace(old[:40], "Be very strict. " + old[:40], 1))
    assert (
        load_constitution(const_dir / "c.yaml").critique_principle(target).critique_request != old
    )

    second = run(cfg)
    assert second.resumed == 0  # the constitution changed: the journal is not reused
    assert second.stats.requests - second.stats.cache_hits == expected_misses
    for r in second.rows:
        if target not in used[r["id"]]:
            assert r["rounds"] == rows[r["id"]]["rounds"]


def test_dataset_loads_with_datasets_and_feeds_trl_sft(tiny_llama_dir, tmp_path):
    from datasets import load_dataset

    result = run(config(tiny_llama_dir, tmp_path / "out"))
    ds = load_dataset("json", data_files=str(result.dataset), split="train")
    assert ds.num_rows == 3 and ds[0]["messages"][0]["role"] == "user"
    pytest.importorskip("trl")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_llama_dir),
        processing_class=AutoTokenizer.from_pretrained(tiny_llama_dir),
        # our `prompt` column would make TRL read the rows as prompt/completion pairs
        train_dataset=ds.select_columns(["messages"]),
        args=SFTConfig(
            output_dir=str(tmp_path / "sft"),
            max_steps=1,
            per_device_train_batch_size=3,
            report_to=[],
            use_cpu=True,
            save_strategy="no",
        ),
    )
    out = trainer.train()
    assert out.global_step == 1 and out.training_loss > 0


def test_policy_and_critic_can_be_different_labelers(tiny_llama_dir, tmp_path):
    import shutil

    other = tmp_path / "policy-model"
    shutil.copytree(tiny_llama_dir, other)
    cfg = config(tiny_llama_dir, tmp_path / "out", policy=f"transformers:{other}", rounds=1)
    result = run(cfg)
    prov = result.rows[0]["provenance"]
    # local folders by name and weights fingerprint: no absolute path of this machine in rows
    assert prov["policy"]["model"] == "policy-model"
    assert prov["critic"]["model"] == tiny_llama_dir.name
    from rlaif.models import weights_fingerprint

    assert prov["policy"]["weights_fingerprint"] == weights_fingerprint(str(other)) != ""
    assert str(tmp_path) not in json.dumps(result.rows[0])
    # two labelers, two schedulers: the policy's first answers and the critic's work are
    # separate requests (3 + 3 * 2)
    assert result.stats.requests == 9


@pytest.mark.parametrize("job", ["sl_cai", "prefs"])
def test_a_broken_template_fails_before_any_labeler_is_made(tmp_path, monkeypatch, job):
    """Labelers can be costly to start (Ray actors, a vLLM engine): a template error must come
    first, with nothing started."""
    import importlib

    from rlaif.errors import TemplateError

    module = importlib.import_module(f"rlaif.engine.{job}")
    made = []
    monkeypatch.setattr(module, "labeler_and_policy", lambda *a, **k: made.append(a))
    templates = tmp_path / "templates"
    templates.mkdir()
    broken = "critique.j2" if job == "sl_cai" else "feedback.j2"
    (templates / broken).write_text("<<<user>>>\n{{ principle.no_such_field }}\n")
    config = module.SLCAIConfig if job == "sl_cai" else module.PrefsConfig
    cfg = config(prompts=FIXTURES / "red_team.txt", templates=templates, out=tmp_path / "o")
    with pytest.raises(TemplateError, match=broken.replace(".", r"\.")):
        module.build(cfg)
    assert made == []
