"""``rlaif eval labeler``: how far a labeler agrees with human labels, and how well calibrated.

Pairs (hh-rlhf, generic prompt/chosen/rejected) are judged by the same ``Feedback`` step as
``rlaif generate prefs``, so the numbers describe the labels a user would get. Each pair yields
P(human-chosen better):

- **agreement**: P > 0.5 counts 1, P < 0.5 counts 0, an exact tie 0.5;
- **calibration**: the labeler's confidence max(P, 1 - P) against whether it agreed, in equal-width
  bins from the lowest possible confidence (0.5 for pairs) to 1, each closed below and open above
  (a confidence on an edge, such as a CoT label clamped to 0.6, opens the bin above it): ECE is
  the count-weighted mean gap; a reliability diagram (PNG) shows it; the Brier score of P is
  reported too;
- **position bias**: with both orders asked, the share of (pair, principle) questions whose
  preferred response flips with the order (the labeler preferred a position, not a response).
  With ``--no-both-orders`` the chosen response is put first or second by a seeded coin per
  row, so a position bias shows up as noise instead of as fake agreement;
- **parse failures**: judgements that yielded no probability (votes naming no option, zero
  mass on both options), and sampled answers that named no option.

Multiple-choice rows score every option string after the prompt: the labeler's answer is the
most probable option, its confidence that option's normalised probability. Such rows have no
order to swap, so they do not enter the position-bias rate.

With ``feedback.calibrate`` (``--calibrate``) the pairs are judged with contextual calibration
(see ``rlaif.engine.feedback``). Each judgement keeps its raw probability beside the calibrated
one, so one run measures both: the metrics are those of the calibrated labels, and ``raw``
holds agreement (with its interval), ECE, Brier score and position-bias rate of the same
questions before calibration; ``content_free_priors`` holds the prior measured per principle.
Multiple-choice rows carry their own options in the prompt text, so they have no content-free
form and are read raw either way.

Rows go through the engine's journal and cache: an interrupted evaluation resumes, and a rerun
(or another metric) costs no labeler calls. Per-row results are in ``judgements.jsonl``.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from rlaif.constitution import load_constitution
from rlaif.data.sources import source_sha256
from rlaif.engine.cache import Cache
from rlaif.engine.feedback import (
    TEMPLATES_USED,
    Feedback,
    FeedbackSettings,
    normalised,
    position_flipped,
)
from rlaif.engine.jobs import (
    base_provenance,
    endpoint_unusable,
    fingerprint,
    make_labeler,
    public_description,
)
from rlaif.engine.journal import Journal
from rlaif.engine.lock import folder_lock
from rlaif.engine.runner import run_rows
from rlaif.engine.scheduler import EngineStats, Scheduler
from rlaif.errors import LabelerCallError
from rlaif.eval.gold import GoldChoice, GoldFormat, GoldPair, GoldRow, read_gold
from rlaif.eval.stats import change, paired_bootstrap_diff, wilson
from rlaif.labelers.base import GenerateParams, Labeler, first_option
from rlaif.resources import default_constitution
from rlaif.templates import Templates

log = logging.getLogger(__name__)

ROWS_FILE = "judgements.jsonl"
REPORT_FILE = "labeler_eval.json"
PLOT_FILE = "reliability.png"


class LabelerEvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    gold: Path
    gold_format: GoldFormat = "auto"
    limit: int | None = Field(default=None, ge=1)
    constitution: Path = Field(default_factory=default_constitution)
    templates: Path | None = None
    labeler: str = "smollm2"
    labeler_settings: dict[str, Any] = {}
    feedback: FeedbackSettings = Field(default_factory=FeedbackSettings)
    seed: int = 0
    bins: int = Field(default=10, ge=2)
    batch_size: int | None = Field(default=None, ge=1)
    concurrency: int | None = Field(default=None, ge=1)
    out: Path = Path("outputs/eval-labeler")
    cache: Path | None = None


@dataclass
class LabelerEvalResult:
    metrics: dict[str, Any]
    rows: list[dict[str, Any]]
    report: Path
    plot: Path | None
    rows_file: Path


# --------------------------------------------------------------------------- metrics


def bin_index(conf: float, low: float, width: float, bins: int) -> int:
    """The bin ``[low + i*width, low + (i+1)*width)`` holding ``conf`` (the last bin also holds
    1.0). The position is rounded before it is floored: in floating point ``(0.6 - 0.5) / 0.05``
    is 1.9999999999999996, and a plain ``int`` would put every confidence that sits on an edge,
    such as a chain-of-thought label clamped to 0.6, in the bin below."""
    position = round((conf - low) / width, 9)
    return min(max(math.floor(position), 0), bins - 1)


def calibration(
    items: list[tuple[float, float]], bins: int, low: float = 0.5
) -> tuple[float | None, list[dict[str, float]]]:
    """ECE and reliability bins of ``(confidence, correct)`` items (``correct`` in [0, 1])."""
    width = (1.0 - low) / bins
    table = [
        {
            "low": low + i * width,
            "high": low + (i + 1) * width,
            "count": 0,
            "sum_conf": 0.0,
            "sum_acc": 0.0,
        }
        for i in range(bins)
    ]
    for conf, correct in items:
        i = bin_index(conf, low, width, bins)
        b = table[i]
        b["count"] += 1
        b["sum_conf"] += conf
        b["sum_acc"] += correct
    out = []
    ece = 0.0
    for b in table:
        n = b["count"]
        conf = b["sum_conf"] / n if n else 0.0
        acc = b["sum_acc"] / n if n else 0.0
        ece += n * abs(acc - conf)
        out.append({"low": b["low"], "high": b["high"], "count": n, "confidence": conf,
                    "accuracy": acc})  # fmt: skip
    return (ece / len(items) if items else None), out


def agreement_of(prob: float) -> float:
    return 1.0 if prob > 0.5 else 0.0 if prob < 0.5 else 0.5


# the metrics shown for the raw labels beside the calibrated ones
RAW_METRICS = ("scored", "agreement", "agreement_ci95", "pair_agreement", "mean_prob_chosen",
               "brier", "ece", "reliability_bins", "position_questions", "position_bias_rate",
               "parse_failures")  # fmt: skip


def raw_view(row: dict[str, Any]) -> dict[str, Any]:
    """A row as it would have been without calibration (rows without raw values unchanged)."""
    if "prob_correct_raw" not in row:
        return row
    return {
        **row,
        "prob_correct": row["prob_correct_raw"],
        "agree": row["agree_raw"],
        "position": row["position_raw"],
        "judgements": [{**j, "prob_a": j.get("prob_a_raw")} for j in row.get("judgements", [])],
    }


def _flip_share(questions: list[dict[str, Any]]) -> float:
    return sum(q["flipped"] for q in questions) / len(questions)


def calibration_effect(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Calibrated minus raw on the same pairs: the agreement and the position-bias rate (per
    pair, the share of its questions that flipped), each with a paired bootstrap interval over
    the pairs; ``*_change`` says "no measurable change" when the interval holds 0."""
    out: dict[str, Any] = {}
    for key, get in (
        ("agreement", lambda r, sfx: r[f"agree{sfx}"]),
        ("position_bias_rate", lambda r, sfx: _flip_share(r[f"position{sfx}"])),
    ):
        usable = [
            r
            for r in rows
            if r.get("agree") is not None
            and r.get("agree_raw") is not None
            and (key == "agreement" or (r.get("position") and r.get("position_raw")))
        ]
        cal = [get(r, "") for r in usable]
        raw = [get(r, "_raw") for r in usable]
        ci = paired_bootstrap_diff(cal, raw)
        out[key] = (sum(cal) - sum(raw)) / len(usable) if usable else None
        out[f"{key}_ci95"] = ci
        out[f"{key}_n"] = len(usable)
        out[f"{key}_change"] = change(ci)
    return out


def summarise(rows: list[dict[str, Any]], bins: int) -> dict[str, Any]:
    """The metrics of ``rows``; where rows were calibrated, ``raw`` has those before it and
    ``calibrated_minus_raw`` the paired differences."""
    metrics = _summarise(rows, bins)
    if any("prob_correct_raw" in r for r in rows):
        raw = _summarise([raw_view(r) for r in rows], bins)
        metrics["raw"] = {k: raw[k] for k in RAW_METRICS}
        metrics["calibrated_minus_raw"] = calibration_effect(rows)
    return metrics


def _summarise(rows: list[dict[str, Any]], bins: int) -> dict[str, Any]:
    scored = [r for r in rows if r.get("prob_correct") is not None]
    pairs = [r for r in scored if r["kind"] == "pair"]
    choices = [r for r in scored if r["kind"] == "choice"]
    judgements = [j for r in rows for j in r.get("judgements", [])]
    questions = [q for r in pairs for q in r.get("position", [])]
    ece_pairs, bins_pairs = calibration(
        [(max(r["prob_correct"], 1 - r["prob_correct"]), r["agree"]) for r in pairs], bins
    )
    ece_choices, bins_choices = calibration(
        [(r["confidence"], r["agree"]) for r in choices], bins, low=0.0
    )
    n = len(scored)
    return {
        "rows": len(rows),
        "scored": n,
        "unscored": len(rows) - n,
        "failed": sum("failed" in r for r in rows),
        "agreement": sum(r["agree"] for r in scored) / n if n else None,
        "agreement_ci95": wilson(sum(r["agree"] for r in scored), n),  # Wilson, per gold row
        # every gold row, an unscored one counting as a disagreement: a labeler that fails half
        # its rows cannot look accurate on the other half
        "agreement_all": sum(r["agree"] for r in scored) / len(rows) if rows else None,
        "agreement_all_ci95": wilson(sum(r["agree"] for r in scored), len(rows)),
        "pairs": len(pairs),
        "pair_agreement": sum(r["agree"] for r in pairs) / len(pairs) if pairs else None,
        "mean_prob_chosen": (sum(r["prob_correct"] for r in pairs) / len(pairs) if pairs else None),
        "brier": (sum((1 - r["prob_correct"]) ** 2 for r in pairs) / len(pairs) if pairs else None),
        "ece": ece_pairs,
        "reliability_bins": bins_pairs,
        "choices": len(choices),
        "choice_accuracy": sum(r["agree"] for r in choices) / len(choices) if choices else None,
        "choice_ece": ece_choices,
        "choice_reliability_bins": bins_choices if choices else [],
        "position_questions": len(questions),
        "position_bias_rate": (
            sum(1 for q in questions if q["flipped"]) / len(questions) if questions else None
        ),
        "judgements": len(judgements),
        "parse_failures": sum(1 for j in judgements if j.get("prob_a") is None),
        "parse_failure_rate": (
            sum(1 for j in judgements if j.get("prob_a") is None) / len(judgements)
            if judgements
            else None
        ),
        "unparsed_answers": sum(j.get("unparsed", 0) for j in judgements),
    }


# --------------------------------------------------------------------------- the job


def _chosen(prob_a: float | None, swapped: bool) -> float | None:
    """P(human-chosen better) from P(response A better)."""
    return None if prob_a is None else (1 - prob_a if swapped else prob_a)


def _flips(probs: dict[tuple[str, str], float | None]) -> list[dict[str, Any]]:
    """Per principle asked in both orders: whether the preferred response flipped with them."""
    out = []
    for pid in dict.fromkeys(p for p, _ in probs):
        ab, ba = probs.get((pid, "ab")), probs.get((pid, "ba"))
        if ab is not None and ba is not None:
            out.append({"principle_id": pid, "flipped": position_flipped(ab, ba)})
    return out


@dataclass
class _Job:
    feedback: Feedback
    sched: Scheduler
    templates: Templates
    settings: FeedbackSettings
    seed: int

    async def run_row(self, gold: GoldRow) -> dict[str, Any]:
        if isinstance(gold, GoldChoice):
            return await self._choice(gold)
        return await self._pair(gold)

    async def _pair(self, gold: GoldPair) -> dict[str, Any]:
        swap = False
        if not self.settings.both_orders:  # a seeded coin decides where the chosen one goes
            swap = random.Random(f"{self.seed}:{gold.id}").random() < 0.5
        a, b = (gold.rejected, gold.chosen) if swap else (gold.chosen, gold.rejected)
        cmp = await self.feedback.compare(gold.id, gold.conversation, a, b)
        prob = _chosen(cmp.prob_a, swap)
        row = {
            "id": gold.id,
            "kind": "pair",
            "swapped": swap,
            "prob_correct": prob,
            "agree": None if prob is None else agreement_of(prob),
            "position": _flips({(j.principle_id, j.order): j.prob_a for j in cmp.judgements}),
        }
        if self.settings.calibrate:
            raw = _chosen(cmp.prob_a_raw, swap)
            row["prob_correct_raw"] = raw
            row["agree_raw"] = None if raw is None else agreement_of(raw)
            row["position_raw"] = _flips(
                {(j.principle_id, j.order): j.prob_a_raw for j in cmp.judgements}
            )
        details = cmp.as_dict()
        return {**row, **{k: v for k, v in details.items() if k not in ("prob_a", "prob_a_raw")}}

    async def _choice(self, gold: GoldChoice) -> dict[str, Any]:
        messages = self.templates.render("multiple_choice", prompt=gold.prompt)
        options = sorted(gold.options)  # the list order must not tell which are correct
        judgement: dict[str, Any] = {"prob_a": None, "unparsed": 0}
        if self.feedback.mode == "logprobs":
            logprobs = await self.sched.option_logprobs(messages, options)
            judgement["logprobs"] = logprobs
            probs = normalised(logprobs)
        else:
            s = self.settings
            params = GenerateParams(
                n=s.votes, temperature=s.vote_temperature, max_tokens=s.vote_max_tokens,
                seed=self.seed,
            )  # fmt: skip
            answers = await self.sched.generate(messages, params)
            counts = [0] * len(options)
            for ans in answers:
                i = first_option(ans.text, options)
                if i is None:
                    judgement["unparsed"] += 1
                else:
                    counts[i] += 1
            judgement["votes"] = counts
            probs = [c / sum(counts) for c in counts] if sum(counts) else None
            if probs is None:
                judgement["answers"] = [a.text for a in answers]
        if probs is None:
            judgement["error"] = "no probability on any option"
            return {"id": gold.id, "kind": "choice", "prob_correct": None, "agree": None,
                    "judgements": [judgement]}  # fmt: skip
        top = max(probs)
        best = [i for i, p in enumerate(probs) if p == top]  # a tie shares the credit
        correct = set(gold.corrects)
        p_correct = sum(p for o, p in zip(options, probs, strict=True) if o in correct)
        judgement["prob_a"] = p_correct
        return {
            "id": gold.id,
            "kind": "choice",
            "prob_correct": p_correct,
            "answer": options[best[0]],
            "confidence": top,
            "agree": sum(options[i] in correct for i in best) / len(best),
            "judgements": [judgement],
        }


async def run_labeler_eval(
    cfg: LabelerEvalConfig,
    on_row: Callable[[dict[str, Any], bool], None] | None = None,
    on_start: Callable[[int, EngineStats], None] | None = None,
    labeler: Labeler | None = None,
) -> LabelerEvalResult:
    """Evaluate ``cfg.labeler`` (or an already built ``labeler``) against ``cfg.gold``."""
    with folder_lock(cfg.out):
        started = time.perf_counter()
        gold = read_gold(cfg.gold, cfg.gold_format)[: cfg.limit]
        constitution = load_constitution(cfg.constitution)
        templates = Templates(cfg.templates)
        if labeler is None:
            labeler = make_labeler(cfg.labeler, cfg.labeler_settings, cfg.batch_size, Path(cfg.out))
        out = Path(cfg.out)
        cache = Cache(cfg.cache or out / "cache.sqlite")
        stats = EngineStats()
        sched = Scheduler(labeler, cache, stats, cfg.batch_size, cfg.concurrency)
        feedback = Feedback(
            constitution, templates, sched, cfg.feedback, labeler.supports_logprobs, cfg.seed
        )
        notice = feedback.notice(f"{labeler.backend}:{labeler.model_name}")
        if notice:
            log.warning("%s", notice)
        feedback.check_templates()
        templates.render("multiple_choice", prompt="p")
        provenance = {
            **base_provenance(),
            # the content, not the name: an edited label is another gold file (resume starts over)
            "gold": {
                "file": Path(cfg.gold).name,
                "sha256": source_sha256(cfg.gold),
                "format": cfg.gold_format,
                "rows": len(gold),
            },
            "constitution": {"name": constitution.name, "sha256": constitution.sha256},
            "templates": templates.hashes((*TEMPLATES_USED, "multiple_choice")),
            "labeler": public_description(labeler.describe()),
            "feedback": {**cfg.feedback.model_dump(mode="json"), "mode": feedback.mode},
            "seed": cfg.seed,
        }
        job = _Job(feedback, sched, templates, cfg.feedback, cfg.seed)
        by_id = {g.id: g for g in gold}
        journal = Journal(out / ROWS_FILE, fingerprint(provenance))

        async def process(row: dict[str, Any]) -> dict[str, Any]:
            try:
                return await job.run_row(by_id[row["id"]])
            except LabelerCallError as e:
                if e.permanent:  # a dead endpoint fails every row: stop, as the dataset jobs do
                    raise endpoint_unusable(e) from e
                stats.failed_rows += 1
                return {"id": row["id"], "failed": {"reason": e.reason, "attempts": e.attempts}}

        if on_start:
            on_start(len(gold), stats)
        try:
            rows = await run_rows(
                [{"id": g.id} for g in gold],
                process,
                journal,
                2 * sched.max_batch * sched.max_concurrency,
                on_row,
            )
            rows_file, _ = journal.finish(len(gold))
        finally:
            await sched.aclose()
            await labeler.aclose()
            cache.close()
        seconds = time.perf_counter() - started
        metrics = summarise(rows, cfg.bins)
        metrics["calibrated"] = cfg.feedback.calibrate
        if cfg.feedback.calibrate:
            metrics["content_free_priors"] = {
                pid: prior for (pid, _), prior in feedback.priors.values.items()
            }
        metrics.update(
            seconds=round(seconds, 2),
            labeler_calls=stats.labeler_calls,
            cache_hits=stats.cache_hits,
            requests=stats.requests,
            generated_tokens=stats.generated_tokens,
            retries=labeler.retries,
            cost=labeler.cost,
        )
        plot = None
        if metrics["pairs"] or metrics["choices"]:
            from rlaif.plots import reliability_diagram

            use_pairs = bool(metrics["pairs"])
            plot = reliability_diagram(
                metrics["reliability_bins"] if use_pairs else metrics["choice_reliability_bins"],
                metrics["ece"] if use_pairs else metrics["choice_ece"],
                out / PLOT_FILE,
                f"{labeler.model_name} vs {Path(cfg.gold).name}",
            )
        report = out / REPORT_FILE
        tmp = report.with_name(f".{REPORT_FILE}.tmp")
        tmp.write_text(
            json.dumps(
                {"metrics": metrics, "provenance": provenance}, indent=2, ensure_ascii=False
            ),
            encoding="utf-8",
        )
        tmp.replace(report)
        return LabelerEvalResult(metrics, rows, report, plot, rows_file)
