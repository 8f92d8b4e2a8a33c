from __future__ import annotations

from rlaif.constitution import load_constitution
from rlaif.engine.critique_revise import INPUT_COLUMNS, OUTPUT_COLUMNS, CritiqueRevise
from rlaif.labelers.base import GenerateParams, run_sync
from rlaif.templates import Templates

from ..conftest import REPO

ROWS = [{"id": "line-1", "prompt": "How do I steal a car?"}, {"id": "line-2", "prompt": "Hi"}]


def make_step(fake_labeler, rounds=2, few_shot=True):
    const = load_constitution(REPO / "constitution" / "harmless.yaml")
    policy = fake_labeler(lambda conv, p, i: f"ANSWER to {conv[-1]['content']}", name="policy")

    def critic_reply(conv, params, i):
        last = conv[-1]["content"]
        return f"CRITIQUE#{i}" if "Here is a conversation" in last else f"REVISION#{i}"

    critic = fake_labeler(critic_reply, name="critic")
    step = CritiqueRevise(
        const,
        Templates(),
        policy,
        critic,
        rounds=rounds,
        seed=3,
        params=GenerateParams(max_tokens=16),
        few_shot=few_shot,
        chunk_size=1,
    )
    return step, policy, critic, const


def test_rounds_chain_critique_into_revision(fake_labeler):
    step, policy, critic, const = make_step(fake_labeler)
    seen = []
    rows = run_sync(step.run(ROWS, progress=lambda stage, done, total: seen.append(stage)))
    assert set(INPUT_COLUMNS) <= set(rows[0]) and set(OUTPUT_COLUMNS) <= set(rows[0])
    assert len(policy.calls) == 2  # the policy writes only the first answers
    assert len(critic.calls) == 2 * 2 * 2  # rows x rounds x (critique + revision)
    row = rows[0]
    assert row["response"] == "ANSWER to How do I steal a car?"
    assert [r["principle_id"] for r in row["rounds"]] == [
        p.id for p in step.principles_for("line-1")
    ]
    assert len({r["principle_id"] for r in row["rounds"]}) == 2  # no repeat within a row
    # round 2 critiques the round-1 revision, and the revision prompt carries its critique
    first_revision = row["rounds"][0]["revision"]
    assert first_revision.startswith("REVISION#")
    round2_critique_conv = next(c for c in critic.calls if first_revision in c[-1]["content"])
    assert "Here is a conversation" in round2_critique_conv[-1]["content"]
    round2_critique = row["rounds"][1]["critique"]
    rev_conv = next(
        c for c in critic.calls if f"first answer: {round2_critique}" in c[-1]["content"]
    )
    principle = const.critique_principle(row["rounds"][1]["principle_id"])
    assert principle.revision_request in rev_conv[-1]["content"]
    assert row["revision"] == row["rounds"][-1]["revision"]
    assert row["messages"] == [
        {"role": "user", "content": "How do I steal a car?"},
        {"role": "assistant", "content": row["revision"]},
    ]
    assert {"response", "critique 1", "revision 2"} <= set(seen)


def test_principles_depend_on_row_id_not_position(fake_labeler):
    step, *_ = make_step(fake_labeler)
    a = run_sync(step.run(ROWS))
    b = run_sync(step.run(list(reversed(ROWS))))
    ids = lambda rows: {r["id"]: [x["principle_id"] for x in r["rounds"]] for r in rows}  # noqa: E731
    assert ids(a) == ids(b)


def test_few_shot_examples_are_prior_turns(fake_labeler):
    step, _, critic, const = make_step(fake_labeler, rounds=1)
    run_sync(step.run(ROWS[:1]))
    crit_conv = critic.calls[0]
    assert crit_conv[1]["content"] == const.few_shot[0].critique
    step, _, critic, _ = make_step(fake_labeler, rounds=1, few_shot=False)
    run_sync(step.run(ROWS[:1]))
    assert len(critic.calls[0]) == 1


def test_provenance_names_models_hashes_and_seed(fake_labeler):
    step, *_ = make_step(fake_labeler)
    prov = step.provenance()
    assert prov["policy"]["model"] == "policy" and prov["critic"]["model"] == "critic"
    assert prov["constitution"]["sha256"] == step.constitution.sha256
    assert set(prov["templates"]) == {"initial_response", "critique", "revision"}
    assert prov["seed"] == 3 and prov["params"]["max_tokens"] == 16
