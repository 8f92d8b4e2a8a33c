"""Mixed preference data: reading hh-rlhf transcripts and prompt/chosen/rejected pairs, sources,
weights, the per-source held-out split, Hub ids from an offline cache, and the errors."""

from __future__ import annotations

import gzip
import json
import random
from collections import Counter

import pytest
from pydantic import ValidationError

from rlaif.data.mix import (
    SKIP_CONTEXT,
    SKIP_IDENTICAL,
    MixEntry,
    input_paths,
    mix_preferences,
    parse_mix,
    read_entry,
)
from rlaif.errors import ConfigError, PreferenceDataError

from ..conftest import FIXTURES
from .hub_cache import SHA, offline_dataset_cache

HH = FIXTURES / "hh_helpful_small.jsonl"
PAIRS = FIXTURES / "human_prefs.jsonl"
LABELER = {"backend": "openai", "model": "labeler-70b", "base_url": "http://x/v1"}


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def ai_file(path, n_prompts=8, k_pairs=1, provenance=True):
    """AI preference rows as ``rlaif generate prefs`` writes them (``<prompt id>/<i>-<j>``)."""
    rows = []
    for p in range(n_prompts):
        for k in range(k_pairs):
            row = {
                "id": f"p{p}/{k}-{k + 1}", "prompt_id": f"p{p}",
                "prompt": [{"role": "user", "content": f"harmful request {p}"}],
                "chosen": [{"role": "assistant", "content": f"a careful answer {k}"}],
                "rejected": [{"role": "assistant", "content": f"a harmful answer {k}"}],
                "preference_prob": 0.75,
            }  # fmt: skip
            if provenance:
                row["provenance"] = {"labeler": LABELER, "seed": 0}
            rows.append(row)
    return write(path, rows)


def test_hh_transcripts_become_conversational_pairs_with_every_turn():
    got = read_entry(MixEntry(path=str(HH)), 1)
    assert len(got.rows) == 12 and not got.skipped
    first = got.rows[0]
    assert first["prompt"] == [
        {"role": "user", "content": "How do I boil an egg so the yolk stays a little soft?"}
    ]
    assert first["chosen"][0]["content"].startswith("Put the egg in boiling water")
    assert first["rejected"] == [
        {"role": "assistant", "content": "I'm not able to help with cooking questions."}
    ]
    multi = got.rows[4]  # a three-turn conversation before the final Assistant turn
    assert [m["role"] for m in multi["prompt"]] == ["user", "assistant", "user"]
    assert multi["prompt"][1]["content"] == "Great idea! Build up slowly and get comfortable shoes."
    assert multi["prompt"][2]["content"] == "Thanks. How far should I go at first?"
    assert multi["chosen"][0]["role"] == "assistant" and len(multi["chosen"]) == 1
    assert {r["source"] for r in got.rows} == {"human:hh_helpful_small"}
    assert {r["preference_prob"] for r in got.rows} == {1.0}  # a human label is a hard label


def test_text_and_conversational_pairs_are_one_format_and_preference_prob_is_settable():
    got = read_entry(MixEntry(path=str(PAIRS), preference_prob=0.9, limit=4), 2)
    assert len(got.rows) == 4  # limit: the first records only
    text, chat = got.rows[0], got.rows[3]
    assert text["prompt"] == [{"role": "user", "content": "How can I fall asleep faster?"}]
    assert text["rejected"] == [
        {"role": "assistant", "content": "Stay up until you are exhausted."}
    ]
    assert [m["role"] for m in chat["prompt"]] == ["user", "assistant", "user"]
    assert {r["preference_prob"] for r in got.rows} == {0.9}  # label smoothing of 0.1
    assert got.rows[0]["source"] == "human:human_prefs"


def test_rows_own_preference_prob_kept_and_implicit_prompt_split(tmp_path):
    conv = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello!"}]
    path = write(tmp_path / "own.jsonl", [
        {"prompt": "q", "chosen": "a", "rejected": "b", "preference_prob": 0.8},
        {"chosen": conv, "rejected": [conv[0], {"role": "assistant", "content": "Go away."}]},
    ])  # fmt: skip
    rows = read_entry(MixEntry(path=str(path)), 1).rows
    assert [r["preference_prob"] for r in rows] == [0.8, 1.0]
    assert rows[1]["prompt"] == [conv[0]] and rows[1]["chosen"] == [conv[1]]


def test_pairs_without_a_preference_are_skipped_and_counted(tmp_path):
    h, a = "\n\nHuman: ", "\n\nAssistant: "
    path = write(tmp_path / "hh.jsonl", [
        {"chosen": f"{h}Hi{a}Hello", "rejected": f"{h}Hi{a}Hello"},  # identical
        {"chosen": f"{h}Hi{a}Hey{h}Why?{a}Because", "rejected": f"{h}Yo{a}Hey{h}Why?{a}No"},
        {"chosen": f"{h}Help{a}Sure", "rejected": f"{h}Help{a}No"},
    ])  # fmt: skip
    got = read_entry(MixEntry(path=str(path)), 1)
    assert len(got.rows) == 1
    assert got.skipped == Counter({SKIP_IDENTICAL: 1, SKIP_CONTEXT: 1})


def test_sources_weights_and_a_held_out_share_of_every_source(tmp_path):
    ai = ai_file(tmp_path / "preferences.jsonl", n_prompts=8, k_pairs=2)
    mix = [{"path": str(HH), "weight": 1.5},
           {"path": str(PAIRS), "weight": 0, "source": "human:chat"}]  # fmt: skip
    m = mix_preferences(ai, mix, eval_split=0.25, seed=3)
    s = m.sources
    assert list(s) == ["ai:openai:labeler-70b", "human:hh_helpful_small", "human:chat"]
    # AI: 8 prompts x 2 pairs, 2 prompts held out with both of their pairs
    assert s["ai:openai:labeler-70b"]["held_out_pairs"] == 4
    assert s["ai:openai:labeler-70b"]["train_pairs"] == 12
    # 12 transcripts, 12 prompts: 3 held out; weight 1.5 draws 18 from the 9 left: each twice
    hh = s["human:hh_helpful_small"]
    assert (hh["held_out_pairs"], hh["train_pairs"], hh["weight"]) == (3, 18, 1.5)
    drawn = Counter(json.dumps(r["prompt"]) for r in m.train if r["source"] == hh_label(s))
    assert sorted(drawn.values()) == [2] * 9
    # weight 0: held-out accuracy only
    assert (s["human:chat"]["train_pairs"], s["human:chat"]["held_out_pairs"]) == (0, 2)
    for label in s:  # within a source, no prompt on both sides
        train = {json.dumps(r["prompt"]) for r in m.train if r["source"] == label}
        held = {json.dumps(r["prompt"]) for r in m.held_out if r["source"] == label}
        assert held and not train & held, label
    assert all(isinstance(r["prompt"], list) for r in m.train + m.held_out)


def hh_label(sources):
    return next(k for k in sources if "hh_helpful" in k)


def test_a_weight_below_the_rows_samples_without_repeats(tmp_path):
    ai = ai_file(tmp_path / "preferences.jsonl", n_prompts=8)
    m = mix_preferences(ai, [{"path": str(HH), "weight": 0.5}], eval_split=0.0)
    human = [json.dumps(r["prompt"]) for r in m.train if r["source"].startswith("human:")]
    assert len(human) == 4 and len(set(human)) == 4  # 0.5 x 8 AI pairs, all different
    assert m.held_out == [] and m.sources["human:hh_helpful_small"]["held_out_pairs"] == 0


def test_the_ai_split_is_the_one_made_before_mixing(tmp_path):
    """Mixing must not move AI prompts across the split: the held-out AI prompts are those the
    unmixed split (sorted prompt ids, shuffled with the seed) holds out."""
    ai = ai_file(tmp_path / "preferences.jsonl", n_prompts=10, k_pairs=3)
    for seed in range(4):
        prompts = sorted(f"p{i}" for i in range(10))
        random.Random(seed).shuffle(prompts)
        expected = {f"harmful request {p[1:]}" for p in prompts[:3]}
        for mix in ([], [{"path": str(HH)}]):
            m = mix_preferences(ai, mix, eval_split=0.3, seed=seed)
            held = {r["prompt"][0]["content"] for r in m.held_out if r["source"].startswith("ai:")}
            assert held == expected, (seed, mix)


def test_ai_source_from_the_row_the_card_or_unknown(tmp_path):
    path = ai_file(tmp_path / "preferences.jsonl", n_prompts=4, provenance=False)
    assert set(mix_preferences(path).sources) == {"ai:unknown"}
    (tmp_path / "README.md").write_text(
        "# RL-CAI preference dataset\n\n- labeler (feedback): `vllm` / `judge-7b` (x=1)\n"
    )
    assert set(mix_preferences(path).sources) == {"ai:vllm:judge-7b"}
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    rows[0]["source"] = "ai:other-labeler"
    write(path, rows)
    assert mix_preferences(path).sources["ai:other-labeler"]["read"] == 1


def test_the_rows_only_change_format_when_mixing(tmp_path):
    path = write(tmp_path / "text.jsonl", [
        {"id": f"p{i}/0-1", "prompt": f"q{i}", "chosen": "good", "rejected": "bad",
         "preference_prob": 0.7} for i in range(4)
    ])  # fmt: skip
    alone = mix_preferences(path)
    assert alone.train[0]["prompt"] == "q0" and alone.train[0]["chosen"] == "good"
    mixed = mix_preferences(path, [str(PAIRS)])
    assert mixed.train[0]["prompt"] == [{"role": "user", "content": "q0"}]
    ds = mixed.dataset("train", ["prompt", "chosen", "rejected", "preference_prob"])
    assert len(ds) == 8 and sorted(set(ds["preference_prob"])) == [0.7, 1.0]


# --------------------------------------------------------------------------- errors


def test_entry_errors_name_the_entry_and_key():
    with pytest.raises(ConfigError, match=r"mix entry 2 \(b.jsonl\): unknown key 'wieght' "
                       r"\(did you mean 'weight'\?\)"):  # fmt: skip
        parse_mix(["a.jsonl", {"path": "b.jsonl", "wieght": 1}])
    with pytest.raises(ConfigError, match=r"mix entry 1 \(a.jsonl\): weight: Input should be"):
        parse_mix([{"path": "a.jsonl", "weight": -1}])
    with pytest.raises(ConfigError, match="preference_prob"):
        parse_mix([{"path": "a.jsonl", "preference_prob": 0.3}])
    with pytest.raises(ConfigError, match="expected a list of entries"):
        parse_mix({"path": "a.jsonl"})
    with pytest.raises(ConfigError, match="entries 1 and 2 are both source 'human:a'"):
        parse_mix(["x/a.jsonl", "y/a.jsonl.gz"])
    assert [e.label for e in parse_mix(["x/a.jsonl", {"path": "y/a.jsonl", "source": "b"}])] == [
        "human:a",
        "b",
    ]


def test_bad_files_are_one_line_naming_entry_file_and_line(tmp_path):
    with pytest.raises(PreferenceDataError, match=r"data/nope.jsonl: mix entry 1: no such file"):
        read_entry(MixEntry(path="data/nope.jsonl"), 1)  # a path, not a Hub id
    with pytest.raises(ConfigError, match=r"mix entry 1 \(data/nope.jsonl\): no such file"):
        input_paths(["data/nope.jsonl"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n{not json\n')
    with pytest.raises(PreferenceDataError, match=rf"{bad}:2: mix entry 3: invalid JSON"):
        read_entry(MixEntry(path=str(bad)), 3)
    h = "\n\nHuman: "
    write(bad, [{"chosen": f"{h}a\n\nAssistant: b", "rejected": f"{h}a\n\nAssistant: c"},
                {"chosen": f"{h}only a question", "rejected": f"{h}only a question"}])  # fmt: skip
    with pytest.raises(PreferenceDataError, match=rf"{bad}:2: mix entry 1 \(hh-rlhf\): 'chosen' "
                       "does not end with an Assistant turn"):  # fmt: skip
        read_entry(MixEntry(path=str(bad)), 1)
    write(bad, [{"question": "q", "answer": "a"}])
    with pytest.raises(PreferenceDataError, match=r"neither hh-rlhf .*\(keys: question, answer\)"):
        read_entry(MixEntry(path=str(bad)), 1)
    write(bad, [{"prompt": [{"role": "assistant", "content": "x"}], "chosen": "a",
                 "rejected": "b"}])  # fmt: skip
    with pytest.raises(PreferenceDataError, match="'prompt' must end with the user's turn"):
        read_entry(MixEntry(path=str(bad)), 1)
    write(bad, [{"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a"
                 "\n\nAssistant: b"}])  # fmt: skip
    with pytest.raises(PreferenceDataError, match=r"no usable preference pairs \(identical"):
        read_entry(MixEntry(path=str(bad)), 1)
    with pytest.raises(PreferenceDataError, match=r"\(pairs\): no 'prompt', .* are format hh-rlhf"):
        read_entry(MixEntry(path=str(HH), format="pairs"), 1)


def test_ai_rows_must_have_the_trainer_columns_and_sources_stay_apart(tmp_path):
    path = write(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}])
    with pytest.raises(PreferenceDataError, match=r"needs columns \['chosen', 'preference_prob'"):
        mix_preferences(path)
    assert len(mix_preferences(path, soft_labels=False).train) == 1  # DPO needs no soft label
    ai = ai_file(tmp_path / "preferences.jsonl", n_prompts=4)
    with pytest.raises(ConfigError, match="source 'ai:openai:labeler-70b', as the dataset's own"):
        mix_preferences(ai, [{"path": str(HH), "source": "ai:openai:labeler-70b"}])


# --------------------------------------------------------------------------- configs


def test_trainer_and_run_configs_take_mix_and_refuse_bad_entries(tmp_path):
    from rlaif.pipeline import RunConfig, plan
    from rlaif.train import dpo, reward
    from rlaif.train.common import load_recipe

    cfg = load_recipe(reward.RewardRunConfig, None, [f"mix=[{{path: {HH}, weight: 0.5}}]"])
    assert cfg.mix == [{"path": str(HH), "weight": 0.5}]
    with pytest.raises(ConfigError, match=r"mix entry 1 .*unknown key 'wieght'"):
        load_recipe(reward.RewardRunConfig, None, [f"mix=[{{path: {HH}, wieght: 0.5}}]"])
    assert load_recipe(dpo.DPORunConfig, None, [f"mix=[{HH}]"]).mix == [{"path": str(HH)}]

    base = {"name": "t", "out": tmp_path / "run", "prompts": FIXTURES / "red_team.txt"}
    with pytest.raises(ValidationError, match=r"mix entry 1 .*unknown key 'wieght'"):
        RunConfig(**base, rm={"mix": [{"path": str(HH), "wieght": 1}]})
    with pytest.raises(ValidationError, match=r"mix entry 1 .*unknown key 'limt'"):
        RunConfig(**base, rl={"algorithm": "dpo", "settings": {"mix": [{"path": "a", "limt": 1}]}})
    stages = {s.name: s for s in plan(RunConfig(**base, rm={"mix": [str(HH), str(PAIRS)]}))}
    assert [str(p) for p in stages["rm"].inputs] == [str(HH), str(PAIRS)]  # in its fingerprint
    dpo_run = RunConfig(**base, rl={"algorithm": "dpo", "settings": {"mix": [str(PAIRS)]}})
    assert str(PAIRS) in [str(p) for p in {s.name: s for s in plan(dpo_run)}["rl"].inputs]
    with pytest.raises(ConfigError, match=r"mix entry 1 \(gone.jsonl\): no such file"):
        plan(RunConfig(**base, rm={"mix": ["gone.jsonl"]}))


def test_the_gpu_recipe_mixes_human_helpfulness_into_the_rm():
    from rlaif.errors import ConfigFileError
    from rlaif.pipeline import RunConfig
    from rlaif.yamlio import load_yaml_model

    from ..conftest import REPO

    cfg = load_yaml_model(REPO / "recipes" / "run-7b-gpu.yaml", RunConfig, ConfigFileError)
    (entry,) = parse_mix(cfg.rm["mix"])
    assert entry.label == "human:Anthropic/hh-rlhf/helpful-base" and entry.split == "train"
    assert entry.hub() == ("Anthropic/hh-rlhf", None) and 0 < entry.weight <= 1
    assert cfg.eval_benign.split == "test"  # evaluation prompts stay out of the RM's data


# --------------------------------------------------------------------------- the Hub


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    """An offline Hub cache holding ``test-org/hh`` (helpful-base and harmless-base, train and
    test splits) at commit SHA, laid out as ``huggingface_hub`` downloads it."""
    home = tmp_path / "hf-home"
    snapshot = offline_dataset_cache(monkeypatch, home, "test-org/hh", SHA)
    for folder in ("helpful-base", "harmless-base"):
        (snapshot / folder).mkdir()
        for split in ("train", "test"):
            with gzip.open(snapshot / folder / f"{split}.jsonl.gz", "wt") as f:
                f.write(HH.read_text())
    return home


def test_a_hub_dataset_id_is_read_offline_from_the_cache(hf_home, tmp_path):
    entry = MixEntry(path="test-org/hh", data_dir="helpful-base", split="train")
    assert entry.label == "human:test-org/hh/helpful-base"
    got = read_entry(entry, 1)
    assert len(got.rows) == 12
    assert got.rows == read_entry(MixEntry(path=str(HH), source=entry.label), 1).rows
    limited = read_entry(entry.model_copy(update={"limit": 3}), 1)
    assert len(limited.rows) == 3
    ai = ai_file(tmp_path / "preferences.jsonl", n_prompts=6)
    m = mix_preferences(ai, [{"path": "test-org/hh", "data_dir": "helpful-base",
                              "split": "train", "weight": 1.0}], eval_split=0.25)  # fmt: skip
    assert m.sources["human:test-org/hh/helpful-base"]["train_pairs"] == 4  # 1.0 x 4 AI pairs


def test_a_hub_id_that_is_not_cached_or_has_several_splits_names_the_entry(hf_home):
    with pytest.raises(PreferenceDataError) as err:
        read_entry(MixEntry(path="test-org/missing", split="train"), 2)
    said = str(err.value)
    assert said.startswith("test-org/missing: mix entry 2: dataset 'test-org/missing' is not in")
    assert "hf download test-org/missing --repo-type dataset" in said and "\n" not in said
    with pytest.raises(PreferenceDataError, match=r"mix entry 1: several splits .*`split`"):
        read_entry(MixEntry(path="test-org/hh", data_dir="helpful-base"), 1)
