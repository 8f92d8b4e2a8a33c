"""Preference pairs from several sources for the reward model and DPO: rlaif's AI labels, plus
human (or other) labels mixed in.

The Constitutional AI paper trained its RL-CAI preference model on a mix: human labels for
helpfulness and AI labels for harmlessness. Trained on harmlessness labels alone, a reward model
learns that a refusal always wins and the policy learns to be evasive. ``mix:`` in the ``rm``
and ``dpo`` trainer configs (and so in ``rlaif run``'s ``rm:`` section) adds such data; the
trainers only ever see rows, built here.

**Entries.** Each ``mix`` entry (``MixEntry``) is a Hub dataset id (read through the user's Hub
cache, ``HF_HUB_OFFLINE`` honoured, as ``--prompts`` reads one) or a local JSONL (``.gz`` too),
parquet or dataset folder, in one of two layouts:

- ``hh-rlhf``: ``{"chosen", "rejected"}`` transcripts of ``Human:``/``Assistant:`` turns. The
  turns before the final Assistant turn become the conversational prompt (every turn, as chat
  messages), the final Assistant turns the chosen and rejected responses.
- ``pairs``: ``prompt``/``chosen``/``rejected``, each a string or a list of chat messages
  (TRL's formats); without ``prompt``, chosen and rejected conversations that share all but
  their last message (TRL's implicit prompt).

A row that is not a pair of that layout is an error naming the entry, the file and the line or
record: the data is not what the entry says. Two kinds of row are skipped and counted (in the
trainer's ``eval_by_source.json`` / ``train_by_source.json``), as public preference sets hold a
few: identical chosen and rejected responses (no preference to learn), and hh-rlhf transcripts
whose conversations differ before the final turn (no one prompt to put them under).

**Sources.** Every row carries ``source``: ``ai:<labeler>`` for the rows of the trainer's own
``dataset`` (the row's ``source`` when it has one, else the labeler in its provenance, else the
one its dataset card names), ``human:<dataset>`` for a mix entry (the Hub id with its
``data_dir``, or the file's name), unless the entry names its own ``source``.

**Labels.** A human label is a hard label: ``preference_prob`` 1.0 for the soft-label reward
model, unless the entry sets ``preference_prob`` (0.9 is label smoothing of 0.1) or its rows
carry their own (an entry without the setting keeps a row's own ``preference_prob``).

**Weights.** ``weight`` is the number of training pairs drawn from an entry per AI training
pair: with N AI training pairs an entry gives exactly ``weight * N`` pairs (rounded to the
nearest count, halves up), drawn without replacement while it has that many and repeated evenly
when it has fewer (each of its pairs ``k`` or ``k + 1`` times). A share of the training pairs is
then a ratio of weights: ``weight: 1`` is as many human pairs as AI pairs. ``weight: 0`` uses an
entry for held-out accuracy only. ``limit`` reads the entry's first N records (streamed from a
Hub dataset).

**Held out.** The reward model's held-out split is by prompt *within each source*: a share
``eval_split`` of every source's prompts (rounded up, never all) goes to the held-out side with
all of its pairs, so each source is measured on prompts it did not train on and has a count of
its own. The AI rows' split is the one rlaif made before mixing existed (same seed, same
prompts). The weights apply to the training side only.

Without entries the rows stay as they were read; with entries every row is conversational
(a plain-text prompt becomes one user message, a response one assistant message), as TRL needs
one format per dataset.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import random
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rlaif.errors import ConfigError, PreferenceDataError, PromptDataError

LABEL = "preference_prob"
PAIR_COLUMNS = ("prompt", "chosen", "rejected")
DATA_SUFFIXES = (".jsonl", ".json", ".ndjson", ".gz", ".parquet")
MixFormat = Literal["auto", "hh-rlhf", "pairs"]
SKIP_IDENTICAL = "identical chosen and rejected responses"
SKIP_CONTEXT = "chosen and rejected conversations differ before the final turn"


class MixEntry(BaseModel):
    """One dataset mixed into the preference data (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(min_length=1, description="a Hub dataset id or a local file or folder")
    format: MixFormat = "auto"
    split: str | None = None
    data_dir: str | None = None
    subset: str | None = None
    weight: float = Field(default=1.0, ge=0, description="training pairs per AI training pair")
    limit: int | None = Field(default=None, ge=1, description="read the first N records")
    preference_prob: float | None = Field(default=None, gt=0.5, le=1.0)
    source: str | None = Field(default=None, min_length=1, description="default human:<dataset>")

    @model_validator(mode="before")
    @classmethod
    def _bare_path(cls, value: Any) -> Any:
        if isinstance(value, str | Path):
            return {"path": str(value)}
        if isinstance(value, dict) and isinstance(value.get("path"), Path):
            return {**value, "path": str(value["path"])}
        return value

    def hub(self) -> tuple[str, str | None] | None:
        """``(repo_id, revision)`` when the path names a Hub dataset rather than a file."""
        from rlaif.data.datasets_io import hub_id

        if _looks_like_file(self.path):
            return None
        return hub_id(self.path)

    @property
    def label(self) -> str:
        if self.source:
            return self.source
        hub = self.hub()
        if hub is not None:
            name = hub[0] + (f"/{self.data_dir.strip('/')}" if self.data_dir else "")
            name += f":{self.subset}" if self.subset else ""
        else:
            name = Path(self.path).name
            while Path(name).suffix.lower() in DATA_SUFFIXES:
                name = Path(name).stem
        return f"human:{name}"


def _looks_like_file(path: str) -> bool:
    """A missing ``data/prefs.jsonl`` is a missing file, not the Hub id ``data/prefs.jsonl``."""
    return Path(path).expanduser().exists() or path.lower().endswith(DATA_SUFFIXES)


def _one_line(e: ValidationError) -> str:
    said = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"])
        if err["type"] == "extra_forbidden":
            near = difflib.get_close_matches(str(err["loc"][-1]), list(MixEntry.model_fields), n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            said.append(f"unknown key '{loc}'{hint}")
        else:
            said.append(f"{loc}: {err['msg']}" if loc else err["msg"])
    return "; ".join(said)


def parse_mix(value: Any) -> list[MixEntry]:
    """The entries of a ``mix`` setting; ``ConfigError`` naming the entry that is wrong."""
    if value is None or value == []:
        return []
    if not isinstance(value, list | tuple):
        raise ConfigError(
            f"mix: expected a list of entries (each a path, or a mapping with path, weight, "
            f"limit, ...), got {type(value).__name__}"
        )
    entries = []
    for i, item in enumerate(value, start=1):
        try:
            entries.append(MixEntry.model_validate(item))
        except ValidationError as e:
            path = item.get("path") if isinstance(item, dict) else None
            named = f" ({path})" if isinstance(path, str | Path) else ""
            raise ConfigError(f"mix entry {i}{named}: {_one_line(e)}") from None
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries, start=1):
        if entry.label in seen:
            raise ConfigError(
                f"mix entries {seen[entry.label]} and {i} are both source '{entry.label}': give "
                "one a `source` of its own (per-source accuracy needs them apart)"
            )
        seen[entry.label] = i
    return entries


def check_mix(value: Any) -> list[dict[str, Any]]:
    """A ``mix`` setting validated, as plain mappings (bare paths become ``{"path": ...}``)."""
    entries = parse_mix(value)
    return [{**item, "path": e.path} if isinstance(item, dict) else {"path": e.path}
            for item, e in zip(value or [], entries, strict=True)]  # fmt: skip


def input_paths(value: Any) -> list[Path]:
    """The entries' sources, for a stage fingerprint (a Hub id hashes as its commit); a local
    file that is not there is a ``ConfigError`` now, not when the trainer starts."""
    paths = []
    for i, entry in enumerate(parse_mix(value), start=1):
        if entry.hub() is None and not Path(entry.path).expanduser().exists():
            raise ConfigError(f"mix entry {i} ({entry.path}): no such file or folder")
        paths.append(Path(entry.path))
    return paths


# --------------------------------------------------------------------------- the AI rows


def load_dataset_file(path: str | Path) -> Any:
    """A JSONL file or a ``save_to_disk`` folder as a ``datasets.Dataset``."""
    from rlaif.data.datasets_io import load_local_dataset

    try:
        return load_local_dataset(path)
    except FileNotFoundError:
        raise PreferenceDataError(path, "dataset not found") from None


def prompt_groups(ds: Any) -> list[str]:
    """The prompt of each pair, as a key: ``prompt_id``, else the ``<prompt id>`` part of an
    ``id`` such as ``<prompt id>/<i>-<j>`` (``rlaif generate prefs``), else the prompt itself."""
    columns = set(ds.column_names)
    if "prompt_id" in columns:
        return [str(x) for x in ds["prompt_id"]]
    if "id" in columns:
        return [str(x).rsplit("/", 1)[0] for x in ds["id"]]
    return [json.dumps(p, sort_keys=True) for p in ds["prompt"]]


_CARD_LABELER = re.compile(r"^- labeler \(feedback\): `([^`]*)` / `([^`]*)`", re.MULTILINE)


def labeler_source(labeler: Any) -> str | None:
    """``ai:<backend>:<model>`` from a labeler's provenance record."""
    if not isinstance(labeler, dict) or not labeler.get("model"):
        return None
    backend = labeler.get("backend")
    return f"ai:{backend}:{labeler['model']}" if backend else f"ai:{labeler['model']}"


def _card_source(path: Path) -> str:
    card = (path if path.is_dir() else path.parent) / "README.md"
    try:
        m = _CARD_LABELER.search(card.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        m = None
    return f"ai:{m[1]}:{m[2]}" if m else "ai:unknown"


def ai_sources(ds: Any, path: str | Path) -> list[str]:
    """Each row's ``source``: its own, else its provenance's labeler, else the card's."""
    n, columns = len(ds), set(ds.column_names)
    own = ds["source"] if "source" in columns else [None] * n
    provenance = ds["provenance"] if "provenance" in columns else [None] * n
    card: str | None = None
    out = []
    for source, prov in zip(own, provenance, strict=True):
        found = source if isinstance(source, str) and source else None
        if found is None and isinstance(prov, dict):
            found = labeler_source(prov.get("labeler"))
        if found is None:
            card = card or _card_source(Path(path))
            found = card
        out.append(found)
    return out


def read_ai(path: str | Path, soft_labels: bool = True) -> list[dict[str, Any]]:
    """The rows of an AI preference file (``rlaif generate prefs``), each with its ``source``
    and the prompt group the held-out split keys on."""
    ds = load_dataset_file(path)
    needed = {*PAIR_COLUMNS} | ({LABEL} if soft_labels else set())
    if not needed <= set(ds.column_names):
        raise PreferenceDataError(path, f"needs columns {sorted(needed)}; has {ds.column_names}")
    groups, sources = prompt_groups(ds), ai_sources(ds, path)
    rows = ds.select_columns(sorted(needed)).to_list()
    for row, group, source in zip(rows, groups, sources, strict=True):
        row["source"], row["_group"] = source, group
    return rows


# --------------------------------------------------------------------------- mixed-in rows


class _Unusable(ValueError):
    """A row that is not a preference pair of its layout: an error."""


class _Skip(ValueError):
    """A row that holds no preference to learn: skipped and counted."""


_ROLES = {"Human": "user", "Assistant": "assistant"}


def _messages(value: Any, what: str) -> list[dict[str, str]]:
    from rlaif.data.sources import Unusable, message_text

    if not isinstance(value, list) or not value:
        raise _Unusable(f"'{what}' is not a string or a non-empty list of chat messages")
    out = []
    for i, m in enumerate(value, start=1):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise _Unusable(f"'{what}' message {i} has no role user, assistant or system")
        try:
            out.append({"role": m["role"], "content": message_text(m.get("content"))})
        except Unusable as e:
            raise _Unusable(f"'{what}' message {i}: {e}") from None
    return out


def _prompt(value: Any) -> list[dict[str, str]]:
    if isinstance(value, str):
        if not value.strip():
            raise _Unusable("'prompt' is empty")
        return [{"role": "user", "content": value}]
    messages = _messages(value, "prompt")
    if messages[-1]["role"] != "user":
        raise _Unusable("'prompt' must end with the user's turn")
    return messages


def _response(value: Any, what: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}]
    messages = _messages(value, what)
    if any(m["role"] != "assistant" for m in messages):
        raise _Unusable(f"'{what}' must hold assistant messages only")
    return messages


def _hh_pair(rec: dict[str, Any]) -> tuple[list[Any], list[Any], list[Any]]:
    from rlaif.data.sources import hh_turns

    chosen, rejected = rec.get("chosen"), rec.get("rejected")
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        raise _Unusable("hh-rlhf rows need 'chosen' and 'rejected' transcripts (strings)")
    turns = {}
    for name, text in (("chosen", chosen), ("rejected", rejected)):
        t = hh_turns(text)
        if not t or t[-1][0] != "Assistant":
            raise _Unusable(f"'{name}' does not end with an Assistant turn")
        if len(t) < 2 or t[-2][0] != "Human":
            raise _Unusable(f"'{name}' has no Human turn just before its final Assistant turn")
        turns[name] = t
    if turns["chosen"][:-1] != turns["rejected"][:-1]:
        raise _Skip(SKIP_CONTEXT)
    prompt = [{"role": _ROLES[s], "content": text} for s, text in turns["chosen"][:-1]]
    final = [[{"role": "assistant", "content": turns[k][-1][1]}] for k in ("chosen", "rejected")]
    return prompt, final[0], final[1]


def _pairs_pair(rec: dict[str, Any]) -> tuple[list[Any], list[Any], list[Any]]:
    missing = [k for k in ("chosen", "rejected") if k not in rec]
    if missing:
        raise _Unusable(f"no {' or '.join(repr(k) for k in missing)} (keys: {', '.join(rec)})")
    if "prompt" in rec:
        return (_prompt(rec["prompt"]), _response(rec["chosen"], "chosen"),
                _response(rec["rejected"], "rejected"))  # fmt: skip
    # TRL's implicit prompt: two conversations that differ only in their last message
    if not isinstance(rec["chosen"], list) or not isinstance(rec["rejected"], list):
        raise _Unusable(
            "no 'prompt', and 'chosen'/'rejected' are not chat-message lists (transcripts of "
            "Human:/Assistant: turns are format hh-rlhf)"
        )
    chosen, rejected = _messages(rec["chosen"], "chosen"), _messages(rec["rejected"], "rejected")
    if chosen[:-1] != rejected[:-1]:
        raise _Skip(SKIP_CONTEXT)
    return (_prompt(chosen[:-1]), _response(chosen[-1:], "chosen"),
            _response(rejected[-1:], "rejected"))  # fmt: skip


def _layout(rec: dict[str, Any], fmt: MixFormat) -> MixFormat:
    if fmt != "auto":
        return fmt
    if "prompt" in rec:
        return "pairs"
    chosen, rejected = rec.get("chosen"), rec.get("rejected")
    if isinstance(chosen, str) and isinstance(rejected, str):
        return "hh-rlhf"
    if isinstance(chosen, list) and isinstance(rejected, list):
        return "pairs"
    raise _Unusable(
        f"neither hh-rlhf transcripts ('chosen'/'rejected' strings) nor 'prompt'/'chosen'/"
        f"'rejected' pairs (keys: {', '.join(rec) or 'none'})"
    )


def _records(entry: MixEntry, n: int) -> Iterator[tuple[str, int | None, Any]]:
    """``(where, line, record)`` for each record of an entry, ``limit`` applied; ``where`` is
    ``record N`` for ``datasets`` sources, empty for JSONL lines (the line is given)."""
    from rlaif.data.datasets_io import (
        LoadOptions,
        is_saved_dataset,
        load_records,
        load_saved,
        resolve_dataset,
        take,
    )
    from rlaif.data.sources import jsonl_records, read_text_file

    opts = LoadOptions(entry.split, entry.data_dir, entry.subset, streaming=bool(entry.limit))
    hub = entry.hub()
    path = Path(entry.path).expanduser()
    if hub is not None:
        source = resolve_dataset(*hub, entry.data_dir)
        records, _ = load_records(entry.path, source.path, opts, entry.limit)
    elif not path.exists():
        raise PreferenceDataError(entry.path, f"mix entry {n}: no such file or folder")
    elif path.is_dir():
        saved = is_saved_dataset(path)
        records, _ = load_saved(path, path) if saved else load_records(path, path, opts, None)
    elif path.name.lower().endswith(".parquet"):
        records, _ = load_records(path, path, opts, entry.limit)
    else:
        for i, (line, rec) in enumerate(jsonl_records(path, read_text_file(path)), start=1):
            if entry.limit is not None and i > entry.limit:
                return
            yield "", line, rec
        return
    for i, rec in take(records, entry.limit):
        yield f"record {i}: ", None, rec


@dataclass
class EntryRows:
    entry: MixEntry
    rows: list[dict[str, Any]]
    skipped: Counter[str]


def read_entry(entry: MixEntry, n: int) -> EntryRows:
    """The pairs of mix entry ``n`` (1-based), each with its ``source`` and prompt group."""
    label, rows, skipped = entry.label, [], Counter()
    fmt: MixFormat | None = None
    try:
        for where, line, rec in _records(entry, n):
            try:
                if not isinstance(rec, dict):
                    raise _Unusable("each record must be an object")
                fmt = fmt or _layout(rec, entry.format)
                prompt, chosen, rejected = (_hh_pair if fmt == "hh-rlhf" else _pairs_pair)(rec)
                if chosen == rejected:
                    raise _Skip(SKIP_IDENTICAL)
                prob = entry.preference_prob
                if prob is None:
                    prob = rec.get(LABEL, 1.0)
                    if (
                        isinstance(prob, bool)
                        or not isinstance(prob, int | float)
                        or not (0.0 <= prob <= 1.0)
                    ):
                        raise _Unusable(f"'{LABEL}' is not a probability: {prob!r}")
            except _Skip as e:
                skipped[str(e)] += 1
                continue
            except _Unusable as e:
                msg = f"mix entry {n} ({fmt or entry.format}): {where}{e}"
                raise PreferenceDataError(entry.path, msg, line) from None
            key = hashlib.sha256(json.dumps(prompt, sort_keys=True).encode()).hexdigest()[:24]
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected,
                         LABEL: float(prob), "source": label, "_group": key})  # fmt: skip
    except PromptDataError as e:  # unreadable: JSON, gzip, the Hub cache, datasets
        said = e.message.replace("--split", "`split`")
        raise PreferenceDataError(entry.path, f"mix entry {n}: {said}", e.line) from None
    if not rows:
        why = f" ({', '.join(f'{k}: {v}' for k, v in skipped.items())})" if skipped else ""
        raise PreferenceDataError(entry.path, f"mix entry {n}: no usable preference pairs{why}")
    return EntryRows(entry, rows, skipped)


# --------------------------------------------------------------------------- mixing


def split_by_prompt(
    rows: list[dict[str, Any]], share: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Train and held-out rows: per source, a share of its prompts (rounded up, at least one,
    never all) with all their pairs; a source with fewer than 4 pairs or 2 prompts holds none
    out. With K > 2 responses per prompt several pairs share a prompt, and a split per pair would
    score held-out pairs on prompts seen in training."""
    by_source: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_source.setdefault(row["source"], []).append(i)
    held: set[int] = set()
    for idx in by_source.values() if share > 0 else ():
        prompts = sorted({rows[i]["_group"] for i in idx})
        if len(idx) < 4 or len(prompts) < 2:
            continue
        random.Random(seed).shuffle(prompts)
        n_held = math.ceil(round(share * len(prompts), 9))  # 0.3 * 10 = 3.0000000000000004
        out = set(prompts[: min(n_held, len(prompts) - 1)])
        held.update(i for i in idx if rows[i]["_group"] in out)
    return ([r for i, r in enumerate(rows) if i not in held],
            [r for i, r in enumerate(rows) if i in held])  # fmt: skip


def draw(rows: list[Any], n: int, rng: random.Random) -> list[Any]:
    """Exactly ``n`` of ``rows``: a sample without replacement, or every row ``n // len`` times
    plus a sample of the rest when there are fewer than ``n``."""
    if n <= len(rows):
        return rng.sample(rows, n)
    copies, extra = divmod(n, len(rows))
    return rows * copies + rng.sample(rows, extra)


def conversational(row: dict[str, Any]) -> dict[str, Any]:
    """A row with a plain-text prompt or response as chat messages, and messages reduced to
    ``role``/``content`` (one format for every row of a dataset); raises ``_Unusable``."""
    prompt = _prompt(row["prompt"])
    chosen, rejected = _response(row["chosen"], "chosen"), _response(row["rejected"], "rejected")
    return {**row, "prompt": prompt, "chosen": chosen, "rejected": rejected}


@dataclass
class MixedPairs:
    """Train and held-out rows (each with ``source``), and what each source gave."""

    train: list[dict[str, Any]]
    held_out: list[dict[str, Any]]
    sources: dict[str, dict[str, Any]]

    def dataset(self, which: str, columns: list[str]) -> Any:
        from datasets import Dataset

        rows = self.train if which == "train" else self.held_out
        return Dataset.from_list([{c: r[c] for c in columns} for r in rows])


def mix_preferences(
    dataset: str | Path,
    mix: Any = None,
    eval_split: float = 0.0,
    seed: int = 0,
    soft_labels: bool = True,
) -> MixedPairs:
    """The AI pairs of ``dataset`` plus the ``mix`` entries, split by prompt within each source
    (``eval_split``), the entries drawn by weight on the training side."""
    entries = parse_mix(mix)
    ai = read_ai(dataset, soft_labels)
    if not ai:
        raise PreferenceDataError(dataset, "no preference pairs")
    ai_labels = sorted({r["source"] for r in ai})
    mixed = [read_entry(e, i) for i, e in enumerate(entries, start=1)]
    for m in mixed:
        if m.entry.label in ai_labels:
            raise ConfigError(
                f"mix entry '{m.entry.path}' has source '{m.entry.label}', as the dataset's own "
                "rows do: give the entry another `source`"
            )
    if mixed:
        try:
            ai = [conversational(r) for r in ai]
        except _Unusable as e:
            raise PreferenceDataError(dataset, f"a row is not conversational: {e}") from None
    rows = ai + [r for m in mixed for r in m.rows]
    train, held = split_by_prompt(rows, eval_split, seed)
    n_ai = sum(1 for r in train if r["source"] in ai_labels)
    sources: dict[str, dict[str, Any]] = {}
    for label in ai_labels:
        sources[label] = {"from": "dataset", "read": sum(r["source"] == label for r in ai),
                          "skipped": {}, "weight": None}  # fmt: skip
    drawn = [r for r in train if r["source"] in ai_labels]
    for n, m in enumerate(mixed, start=1):
        label = m.entry.label
        own = [r for r in train if r["source"] == label]
        want = math.floor(m.entry.weight * n_ai + 0.5)  # the nearest count, halves up
        if want and not own:
            raise PreferenceDataError(m.entry.path, f"mix entry {n}: no pairs left to train on")
        drawn += draw(own, want, random.Random(f"{seed}:{label}")) if want else []
        sources[label] = {"from": f"mix entry {n}", "read": len(m.rows) + sum(m.skipped.values()),
                          "skipped": dict(m.skipped), "weight": m.entry.weight}  # fmt: skip
    for label, s in sources.items():
        s["train_pairs"] = sum(r["source"] == label for r in drawn)
        s["held_out_pairs"] = sum(r["source"] == label for r in held)
    return MixedPairs(drawn, held, sources)
