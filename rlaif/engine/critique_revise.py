"""The SL-CAI step: response -> (critique -> revision) x N rounds, under sampled principles.

Input columns: ``id``, ``prompt``. Output columns: ``response`` (the policy's first answer),
``rounds`` (per round: ``principle_id``, ``critique``, ``revision``), ``revision`` (the last one,
the SFT target) and ``messages`` (``[user, assistant]`` ready for TRL's SFTTrainer).

The step works stage by stage over the whole batch of rows (all first answers, then all
critiques, then all revisions), so a local backend sees full batches. Principles are sampled per
row from ``(seed, row id)`` alone, so the same row always gets the same principles however the
data is split or resumed. The policy (first answer) and the critic (critique and revision) may be
different labelers. Labelers are reached only through the ``Labeler`` protocol.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rlaif.constitution import Constitution, CritiqueRevisionPrinciple, sample_principles
from rlaif.labelers.base import Completion, GenerateParams, Labeler
from rlaif.templates import Message, Templates

INPUT_COLUMNS = ("id", "prompt")
OUTPUT_COLUMNS = ("response", "rounds", "revision", "messages")

Progress = Callable[[str, int, int], None]


@dataclass
class CritiqueRevise:
    constitution: Constitution
    templates: Templates
    policy: Labeler
    critic: Labeler
    rounds: int = 1
    seed: int = 0
    params: GenerateParams = field(default_factory=GenerateParams)
    few_shot: bool = True
    chunk_size: int = 8  # conversations per labeler call; progress is reported per chunk

    def principles_for(self, row_id: str) -> list[CritiqueRevisionPrinciple]:
        return sample_principles(
            self.constitution.critique_revision, self.rounds, self.seed, row_id
        )

    def _examples(self, principle: CritiqueRevisionPrinciple) -> list[dict[str, Any]]:
        """Few-shot exchanges, each carrying its own principle's requests (or the current one's)."""
        if not self.few_shot:
            return []
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
        return out

    def check_templates(self) -> None:
        """Render every template this step uses once, so a broken template fails before any
        model is loaded."""
        principle = self.constitution.critique_revision[0]
        ex = self._examples(principle)
        self.templates.render("initial_response", prompt="p")
        self.templates.render(
            "critique", prompt="p", response="r", principle=principle, examples=ex
        )
        self.templates.render(
            "revision", prompt="p", response="r", critique="c", principle=principle, examples=ex
        )

    async def _generate(
        self, labeler: Labeler, convs: list[list[Message]], stage: str, progress: Progress | None
    ) -> list[Completion]:
        results: list[Completion] = []
        for start in range(0, len(convs), self.chunk_size):
            batch = await labeler.generate(convs[start : start + self.chunk_size], self.params)
            results.extend(samples[0] for samples in batch)
            if progress:
                progress(stage, len(results), len(convs))
        return results

    async def run(
        self, rows: Sequence[dict[str, Any]], progress: Progress | None = None
    ) -> list[dict[str, Any]]:
        if not self.constitution.critique_revision:
            raise ValueError("the constitution has no critique_revision principles")
        principles = [self.principles_for(str(r["id"])) for r in rows]
        first = await self._generate(
            self.policy,
            [self.templates.render("initial_response", prompt=r["prompt"]) for r in rows],
            "response",
            progress,
        )
        current = [c.text for c in first]
        tokens = [c.prompt_tokens + c.completion_tokens for c in first]
        history: list[list[dict[str, Any]]] = [[] for _ in rows]
        for k in range(self.rounds):
            crit_convs = [
                self.templates.render(
                    "critique",
                    prompt=r["prompt"],
                    response=current[i],
                    principle=principles[i][k],
                    examples=self._examples(principles[i][k]),
                )
                for i, r in enumerate(rows)
            ]
            critiques = await self._generate(self.critic, crit_convs, f"critique {k + 1}", progress)
            rev_convs = [
                self.templates.render(
                    "revision",
                    prompt=r["prompt"],
                    response=current[i],
                    critique=critiques[i].text,
                    principle=principles[i][k],
                    examples=self._examples(principles[i][k]),
                )
                for i, r in enumerate(rows)
            ]
            revisions = await self._generate(self.critic, rev_convs, f"revision {k + 1}", progress)
            for i in range(len(rows)):
                history[i].append(
                    {
                        "principle_id": principles[i][k].id,
                        "critique": critiques[i].text,
                        "revision": revisions[i].text,
                        "finish_reasons": [critiques[i].finish_reason, revisions[i].finish_reason],
                    }
                )
                tokens[i] += sum(
                    c.prompt_tokens + c.completion_tokens for c in (critiques[i], revisions[i])
                )
                current[i] = revisions[i].text
        return [
            {
                "id": r["id"],
                "prompt": r["prompt"],
                "response": first[i].text,
                "rounds": history[i],
                "revision": current[i],
                "messages": [
                    {"role": "user", "content": r["prompt"]},
                    {"role": "assistant", "content": current[i]},
                ],
                "tokens": tokens[i],
            }
            for i, r in enumerate(rows)
        ]

    def provenance(self) -> dict[str, Any]:
        return {
            "constitution": {
                "name": self.constitution.name,
                "version": self.constitution.version,
                "sha256": self.constitution.sha256,
            },
            "templates": self.templates.hashes(("initial_response", "critique", "revision")),
            "policy": self.policy.describe(),
            "critic": self.critic.describe(),
            "params": self.params.model_dump(mode="json"),
            "seed": self.seed,
            "rounds": self.rounds,
            "few_shot": self.few_shot and bool(self.constitution.few_shot),
        }
