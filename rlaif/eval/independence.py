"""Who judged, and is that judge independent of what it judges?

A judge that also labelled the training data rewards what it taught the policy to like, not
only what the constitution asks; a judge that is one of the evaluated policies grades its own
answers. Both make a before/after table look better than it is, so the evaluation records the
judge's identity and warns when it meets either case.

Labelers are named by spec strings (``smollm2``, ``transformers:ORG/NAME@REV``,
``openai:MODEL``) plus settings, and the same model can be spelt many ways: ``smollm2`` and
``transformers:smollm2``, ``./models/x`` and ``/abs/models/x``, ``ORG/NAME`` and
``ORG/NAME@main``, or ``transformers:PATH`` and ``vllm:PATH`` (the same weights under another
engine). ``labeler_identity`` reduces a spec and its settings to what decides the answers: for
local weights the resolved model (embedded name, absolute folder, or Hub id with its revision),
whatever backend runs them; for an API the backend and model name. Two labelers with equal
identities are the same judge. Nothing is loaded or downloaded to decide it.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from rlaif.labelers.base import parse_spec

LOCAL_BACKENDS = ("transformers", "vllm")

Identity = tuple[str, str, str]


class LabelerRef(BaseModel):
    """A labeler that produced training data: its spec, settings and what it did."""

    model_config = ConfigDict(extra="forbid")

    role: str = "training data"
    spec: str
    settings: dict[str, Any] = {}


def model_identity(model: str) -> tuple[str, str]:
    """``(model, revision)`` of a local model as the backends resolve it, without loading it."""
    from rlaif.models import EMBEDDED, TINY_RANDOM, parse_hub_id

    if model in EMBEDDED or model == TINY_RANDOM:
        return model, ""
    path = Path(model).expanduser()
    if path.exists():
        return str(path.resolve()), ""
    hub = parse_hub_id(model)
    if hub is not None:
        return hub[0], hub[1] or "main"
    return model, ""


def labeler_identity(spec: str, settings: dict[str, Any] | None = None) -> Identity:
    """What makes two labelers the same judge (see the module docstring)."""
    backend, base = parse_spec(spec)
    merged = {**base, **(settings or {})}
    model = str(merged.get("model") or "")
    if backend in LOCAL_BACKENDS:
        name, revision = model_identity(model)
        return ("local", name, revision)
    return (backend, model, str(merged.get("revision") or ""))


def policy_spec(model: str) -> str:
    """The labeler spec a policy's answers are generated with (a local or embedded model)."""
    return "smollm2" if model == "smollm2" else f"transformers:{model}"


def _embedded_version(model: str) -> str | None:
    from rlaif.models import EMBEDDED

    if model not in EMBEDDED:
        return None
    package = EMBEDDED[model].distribution
    try:
        return f"{package} {importlib.metadata.version(package)}"
    except importlib.metadata.PackageNotFoundError:
        return None


def judge_record(
    spec: str,
    described: dict[str, Any],
    templates: Path | None,
    constitution: Path,
    evaluation: Path,
    principles: int,
) -> dict[str, Any]:
    """The judge as ``policy_eval.json`` and the report show it: backend, model, revision where
    known (a Hub commit, or the embedded model's package version), templates and constitution."""
    model = described.get("model")
    revision = described.get("revision") or (_embedded_version(str(model)) if model else None)
    record: dict[str, Any] = {
        "spec": spec,
        "backend": described.get("backend"),
        "model": model,
        "revision": revision,
        "commit": described.get("commit"),
        "templates": str(templates) if templates else "built-in",
        "constitution": str(constitution),
        "evaluation_constitution": str(evaluation),
        "principles": principles,
    }
    if described.get("base_url"):
        record["base_url"] = described["base_url"]
    return record


def describe_judge(judge: dict[str, Any]) -> str:
    """One line: ``openai:judge (openai, model judge, revision r) · templates built-in · ...``."""
    what = [str(judge.get("backend") or "?"), f"model {judge.get('model')}"]
    if judge.get("revision"):
        what.append(f"revision {judge['revision']}")
    if judge.get("commit") and judge.get("commit") != judge.get("revision"):
        what.append(f"commit {str(judge['commit'])[:12]}")
    constitution = Path(str(judge.get("constitution", "?"))).name
    return (
        f"{judge.get('spec')} ({', '.join(what)}) · templates {judge.get('templates')} · "
        f"constitution {constitution}"
    )


def judge_warnings(
    judge: Identity,
    policies: dict[str, str],
    training: list[LabelerRef],
    judge_name: str,
) -> list[str]:
    """Warnings for a judge that labelled the training data or is an evaluated policy."""
    warnings = []
    roles = [ref.role for ref in training if labeler_identity(ref.spec, ref.settings) == judge]
    if roles:
        warnings.append(
            f"the judge {judge_name} also labelled the training data ({', '.join(roles)}): it "
            "rewards what it taught the policy to like, not only what the constitution asks; "
            "name an independent judge (eval.judge in a recipe, --judge on the command line)"
        )
    same = [n for n, model in policies.items() if labeler_identity(policy_spec(model)) == judge]
    if same:
        which = ("policy " if len(same) == 1 else "policies ") + ", ".join(f"'{n}'" for n in same)
        warnings.append(
            f"the judge {judge_name} is the model of the evaluated {which}: it grades its own "
            "answers"
        )
    return warnings
