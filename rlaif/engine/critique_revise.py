"""The SL-CAI step: response -> (critique -> revision) x N rounds, under sampled principles.

Input columns: ``id``, ``prompt`` (text, or a conversation: messages ending with the person's
turn). Output columns, in TRL's conversational formats so a trainer reads the file as written:
``prompt`` (the conversation: ``[user]``, or every earlier turn as its own message followed by the
person's last one) and ``completion`` (``[assistant]``, the final revision: TRL's SFTTrainer then
trains on the revision alone, as the paper did), and ``messages`` (``prompt + completion``, for
full-conversation SFT); beside them ``response`` (the policy's first answer), ``rounds`` (per
round: ``principle_id``, ``critique``, ``revision``, ``flags``), ``revision`` (the last one, as
text), ``flags`` (every clean-up flag of the row) and ``tokens``.

A multi-turn prompt stays messages throughout: the policy answers inside the conversation (its
earlier turns are real messages), and the critique and revision templates get the earlier turns
as ``context`` beside the person's last turn as ``prompt`` (``templates.prompt_variables``).

``run_row`` handles one row from start to finish; the runner keeps many rows in flight, and their
requests meet in the scheduler, which batches them whatever stage each row is at. Principles are
sampled from ``(seed, row id)`` alone, so a row gets the same principles however the data is
split, ordered or resumed. The policy (first answer) and the critic (critique and revision) are
separate generators and may be different labelers; the step sees them only through
``generate(messages, params)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from rlaif.constitution import Constitution, CritiqueRevisionPrinciple, sample_principles
from rlaif.engine.cleanup import CleanupMode, clean_revision, stop_flags
from rlaif.labelers.base import Completion, Conversation, GenerateParams
from rlaif.templates import Templates, prompt_variables

INPUT_COLUMNS = ("id", "prompt")
OUTPUT_COLUMNS = (
    "prompt", "completion", "response", "rounds", "revision", "messages", "flags", "tokens"
)  # fmt: skip
TEMPLATES_USED = ("initial_response", "critique", "revision")
# a conversation every template is rendered with once before a run (a system turn included)
CHECK_CONVERSATION = (
    {"role": "system", "content": "s"},
    {"role": "user", "content": "u"},
    {"role": "assistant", "content": "a"},
    {"role": "user", "content": "p"},
)


def prompt_text(row: dict[str, Any]) -> str:
    """The person's last turn of an SL-CAI row, as text (``prompt`` is a message list in the
    output and in multi-turn input, text in single-turn input and its failed rows)."""
    prompt = row["prompt"]
    return prompt[-1]["content"] if isinstance(prompt, list) else prompt


class Generator(Protocol):
    async def generate(
        self, messages: Conversation, params: GenerateParams
    ) -> list[Completion]: ...


@dataclass
class CritiqueRevise:
    constitution: Constitution
    templates: Templates
    policy: Generator
    critic: Generator
    rounds: int = 1
    seed: int = 0
    params: GenerateParams = field(default_factory=GenerateParams)
    few_shot: bool = True
    cleanup: CleanupMode = "fix"
    _few_shot: dict[str, list[dict[str, Any]]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.constitution.critique_revision:
            raise ValueError("the constitution has no critique_revision principles")

    def principles_for(self, row_id: str) -> list[CritiqueRevisionPrinciple]:
        return sample_principles(
            self.constitution.critique_revision, self.rounds, self.seed, row_id
        )

    def _examples(self, principle: CritiqueRevisionPrinciple) -> list[dict[str, Any]]:
        """Few-shot exchanges, each carrying its own principle's requests (or the current one's);
        built once per principle, since every row under that principle renders the same ones."""
        if not self.few_shot:
            return []
        built = self._few_shot.get(principle.id)
        if built is not None:
            return built
        out = []
        for ex in self.constitution.few_shot:
            p = principle
            if ex.principle is not None:
                p = self.constitution.critique_principle(ex.principle)
            out.append(
                {
                    **ex.model_dump(),
                    "critique_request": p.critique_request,
                    "revision_request": p.revision_request,
                }
            )
        self._few_shot[principle.id] = out
        return out

    def examples_for(self, principle: CritiqueRevisionPrinciple) -> list[dict[str, Any]]:
        """The few-shot examples a request under ``principle`` shows (``--estimate`` renders
        them too)."""
        return self._examples(principle)

    def check_templates(self) -> None:
        """Render every template this step uses once, so a broken or unsafe template fails
        before any model is loaded."""
        principle = self.constitution.critique_revision[0]
        ex = self._examples(principle)
        for v in (prompt_variables("p"), prompt_variables(CHECK_CONVERSATION)):
            self.templates.render("initial_response", **v)
            self.templates.render("critique", **v, response="r", principle=principle, examples=ex)
            self.templates.render(
                "revision", **v, response="r", critique="c", principle=principle, examples=ex
            )

    async def _one(self, gen: Generator, template: str, **variables: Any) -> Completion:
        messages = self.templates.render(template, **variables)
        return (await gen.generate(messages, self.params))[0]

    async def run_row(self, row: dict[str, Any]) -> dict[str, Any]:
        v = prompt_variables(row["prompt"])
        first = await self._one(self.policy, "initial_response", **v)
        current = first.text
        tokens = first.prompt_tokens + first.completion_tokens
        rounds: list[dict[str, Any]] = []
        all_flags: list[str] = []
        for principle in self.principles_for(str(row["id"])):
            examples = self._examples(principle)
            critique = await self._one(
                self.critic,
                "critique",
                **v,
                response=current,
                principle=principle,
                examples=examples,
            )
            revision = await self._one(
                self.critic,
                "revision",
                **v,
                response=current,
                critique=critique.text,
                principle=principle,
                examples=examples,
            )
            text, flags = clean_revision(
                revision.text, revision.finish_reason, current, self.cleanup, critique.text
            )
            flags += stop_flags(critique.finish_reason, "critique_")  # the critique was stopped
            rounds.append(
                {
                    "principle_id": principle.id,
                    "critique": critique.text,
                    "revision": text,
                    "flags": flags,
                }
            )
            all_flags.extend(f for f in flags if f not in all_flags)
            tokens += sum(c.prompt_tokens + c.completion_tokens for c in (critique, revision))
            current = text
        all_flags += stop_flags(first.finish_reason, "answer_")
        conversation = v["conversation"]
        assistant = {"role": "assistant", "content": current}
        return {
            "id": row["id"],
            "prompt": conversation,
            "completion": [assistant],
            "response": first.text,
            "rounds": rounds,
            "revision": current,
            "messages": [*conversation, assistant],
            "flags": all_flags,
            "tokens": tokens,
        }
