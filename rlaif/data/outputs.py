"""The datasets an output folder holds, found by file name and read as rows.

``rlaif generate KIND --out DIR`` writes its dataset directly into DIR; ``rlaif run`` writes one
stage folder per stage (``red_team/``, ``sl_cai/``, ``prefs/``, ``prefs_2/`` ..., ``eval/``).
A reader of outputs (``rlaif review``) is given either and must find every dataset in it without
being told which it is, so the search looks at the folder itself and at its immediate
subfolders, and a file counts by its name *and* its first row's columns: ``prompts.jsonl`` is a
common name, and only a file whose rows look like the red-team job's is that job's output.

Beside each dataset the engine keeps the rows it could not finish in side files
(``NAME.failed.jsonl``: a labeler call failed for good; ``preferences.unlabeled.jsonl``: no usable
judgement or identical responses). They are found with their dataset, so a reader can show them
instead of pretending the dataset is complete.

Everything here only reads; nothing writes to a dataset file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rlaif.data.sources import jsonl_records, read_text_file
from rlaif.errors import NoDatasetError, PromptDataError, ReviewError

Kind = Literal["sl_cai", "prefs", "red_team", "policy_eval"]

# file name, the columns its first row must have, the side files beside it
KINDS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "sl_cai": ("sl_cai.jsonl", ("id", "prompt", "response", "rounds", "revision"), ("failed",)),
    "prefs": (
        "preferences.jsonl",
        ("id", "prompt", "response_a", "response_b", "prob_a", "judgements"),
        ("failed", "unlabeled"),
    ),
    "red_team": ("prompts.jsonl", ("id", "prompt", "nearest_seed"), ()),
    "policy_eval": ("samples.jsonl", ("prompt", "set", "answers"), ()),
}
KIND_NAMES = {
    "sl_cai": "SL-CAI",
    "prefs": "preferences",
    "red_team": "red-team prompts",
    "policy_eval": "policy eval samples",
}


@dataclass(frozen=True)
class DatasetFile:
    """One dataset found in an output folder. ``name`` tells it apart from the others of the
    folder: the stage folder's name (``prefs_2``), or the kind when it lies in the folder itself."""

    name: str
    kind: Kind
    path: Path
    side_files: tuple[tuple[str, Path], ...] = ()  # ("failed", path), ...


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSONL file; a line that is not a JSON object names the file and line."""
    try:
        return [rec for _, rec in jsonl_records(path, read_text_file(path))]
    except PromptDataError as e:
        raise ReviewError(f"{e.path}{f':{e.line}' if e.line else ''}: {e.message}") from None


def _first_row(path: Path) -> dict[str, Any] | bool | None:
    """The first row; None for an empty file; False for one whose first line is not an
    object."""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    return row if isinstance(row, dict) else False
    except (OSError, ValueError):
        return False
    return None


# names only rlaif's jobs write: a damaged file under one is a damaged dataset, said as such
# when it is read, not a folder without datasets
OWN_NAMES = {"sl_cai", "prefs"}


def _is_kind(path: Path, kind: str) -> bool:
    if not path.is_file():
        return False
    row = _first_row(path)
    if row is None:  # an empty dataset is still that dataset (every row failed)
        return True
    if row is False:
        return kind in OWN_NAMES
    return all(c in row for c in KINDS[kind][1])


def _in_folder(folder: Path, name: str | None) -> list[DatasetFile]:
    found = []
    for kind, (file, _, sides) in KINDS.items():
        path = folder / file
        if not _is_kind(path, kind):
            continue
        side_files = tuple(
            (side, p)
            for side in sides
            if (p := path.with_name(f"{path.stem}.{side}.jsonl")).is_file()
        )
        found.append(DatasetFile(name or kind, kind, path, side_files))  # type: ignore[arg-type]
    return found


def find_datasets(folder: str | Path) -> list[DatasetFile]:
    """Every rlaif dataset in ``folder`` or in its immediate subfolders (stage folders), the
    folder's own first, then the stage folders' by kind (SL-CAI, preferences, red-team, policy
    eval) and name. Raises ``NoDatasetError`` when none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NoDatasetError(f"{folder}: no such folder")
    found = _in_folder(folder, None)
    staged = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for ds in _in_folder(sub, sub.name):
            if ds.name in {d.name for d in found}:  # e.g. ./prefs and ./prefs/preferences.jsonl
                ds = DatasetFile(f"{sub.name}/{ds.kind}", ds.kind, ds.path, ds.side_files)
            staged.append(ds)
    order = list(KINDS)  # what can be labelled first, then the stages by name (prefs, prefs_2)
    found += sorted(staged, key=lambda d: (order.index(d.kind), d.name))
    if not found:
        expected = ", ".join(KINDS[k][0] for k in KINDS)
        raise NoDatasetError(
            f"{folder}: no rlaif dataset here: expected one of {expected}, in the folder or in "
            "its stage folders (as `rlaif generate --out DIR` and `rlaif run` write them)"
        )
    return found
