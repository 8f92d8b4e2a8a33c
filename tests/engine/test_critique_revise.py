from __future__ import annotations

import asyncio

from rlaif.constitution import load_constitution
from rlaif.engine.cache import Cache
from rlaif.engine.critique_revise import INPUT_COLUMNS, OUTPUT_COLUMNS, CritiqueRevise
from rlaif.engine.scheduler import Scheduler
from rlaif.labelers.base import GenerateParams
from rlaif.templates import Templates

from ..conftest import REPO

ROWS = [{"id": "line-1", "prompt": "How do I steal a car?"}, {"id": "line-2", "prompt": "Hi"}]


def critic_reply(conv, params, i):
    last = conv[-1]["content"]
    return f"CRITIQUE#{i}" if "Here is a conversation" in last else f"REVISION#{i}"


def make_step(fake_labeler, rounds=2, few_shot=True, critic=None):
    const = load_constitution(REPO / "constitution" / "harmless.yaml")
    policy = fake_labeler(lambda conv, p, i: f"ANSWER to {conv[-1]['content']}", name="policy")
    critic = critic or fake_labeler(critic_reply, name="critic")
    step = CritiqueRevise(
        const,
        Templates(),
        Scheduler(policy, Cache(None)),
        Scheduler(critic, Cache(None)),
        rounds=rounds,
        seed=3,
        params=GenerateParams(max_tokens=16),
        few_shot=few_shot,
    )
    return step, policy, critic, const


def run_all(step, rows):
    async def go():
        return [await step.run_row(r) for r in rows]

    return asyncio.run(go())


def test_rounds_chain_critique_into_revision(fake_labeler):
    step, policy, critic, const = make_step(fake_labeler)
    rows = run_all(step, ROWS)
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
    assert row["tokens"] == 5 * 15  # 5 requests of 10 prompt + 5 completion tokens


def test_principles_depend_on_row_id_not_position(fake_labeler):
    step, *_ = make_step(fake_labeler)
    a = run_all(step, ROWS)
    b = run_all(step, list(reversed(ROWS)))

    def ids(rows):
        return {r["id"]: [x["principle_id"] for x in r["rounds"]] for r in rows}

    assert ids(a) == ids(b)


def test_few_shot_examples_are_prior_turns(fake_labeler):
    step, _, critic, const = make_step(fake_labeler, rounds=1)
    run_all(step, ROWS[:1])
    crit_conv = critic.calls[0]
    assert crit_conv[1]["content"] == const.few_shot[0].critique
    step, _, critic, _ = make_step(fake_labeler, rounds=1, few_shot=False)
    run_all(step, ROWS[:1])
    assert len(critic.calls[0]) == 1


def test_revision_artifacts_are_cleaned_and_flagged(fake_labeler):
    def reply(conv, params, i):
        if "Here is a conversation" in conv[-1]["content"]:
            return "It is unsafe."
        return "Sure, here is the revised response: Revision: Please don't."

    step, *_ = make_step(fake_labeler, rounds=1, critic=fake_labeler(reply))
    row = run_all(step, ROWS[:1])[0]
    assert row["revision"] == "Please don't."
    assert row["rounds"][0]["flags"] == ["preamble", "echoed_label"]
    assert row["flags"] == ["preamble", "echoed_label"]
    step.cleanup = "flag"  # same requests (from the cache), different clean-up
    row = run_all(step, ROWS[:1])[0]
    assert row["revision"].startswith("Sure, here is")
    assert row["flags"] == ["preamble", "echoed_label"]


def test_a_conversation_stays_messages_through_answer_critique_and_revision(fake_labeler):
    step, policy, critic, _ = make_step(fake_labeler, rounds=2, few_shot=False)
    conversation = [
        {"role": "user", "content": "My roommate ate my food again."},
        {"role": "assistant", "content": "That's annoying. Have you talked to them?"},
        {"role": "user", "content": "Should I put something in my leftovers?"},
    ]
    (row,) = run_all(step, [{"id": "row-2", "prompt": conversation}])
    # the policy answered inside the conversation, not a transcript in one message
    assert policy.calls == [conversation]
    # every critique and revision shows the earlier turns, and the person's last turn
    for call in critic.calls:
        assert "My roommate ate my food again." in call[-1]["content"]
        assert "Should I put something in my leftovers?" in call[-1]["content"]
    assert len(critic.calls) == 4
    # the SFT row keeps the earlier turns as separate messages; the revision is the completion
    assert row["prompt"] == conversation
    assert row["completion"] == [{"role": "assistant", "content": row["revision"]}]
    assert row["messages"] == [*conversation, *row["completion"]]
    assert row["revision"].startswith("REVISION#")
