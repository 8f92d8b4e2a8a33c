"""Prompt sources read through Hugging Face ``datasets``: parquet, dataset folders, Hub ids.

Users keep prompts where their other data lives: a parquet file, a ``save_to_disk`` folder, a
folder laid out like a Hub dataset repo, or the Hub itself (``Anthropic/hh-rlhf``,
``hf://datasets/Anthropic/hh-rlhf@<revision>``). ``datasets`` reads them all; rlaif adds what its
own readers promise: stable row ids, hh-rlhf transcripts recognised, errors that name the source.

Hub ids resolve through ``huggingface_hub.snapshot_download`` into the user's Hub cache, as
models do (``HF_HOME``, ``HF_TOKEN``, ``HF_HUB_OFFLINE`` honoured; only ``--data-dir`` is fetched
when given), and the snapshot folder is then read with ``load_dataset``. So a cached dataset
loads offline, and the commit sha of what was read goes into provenance. The flags keep
``load_dataset``'s names: ``--split``, ``--data-dir``, ``--subset`` (its ``name``; the Hub calls
configurations subsets) and ``--streaming`` (read only the first ``--limit`` records instead of
preparing the whole source).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlaif.errors import PromptDataError

# hf://datasets/ORG/NAME[@REV]; a Path made of it has lost one slash (hf:/datasets/...)
_HF_URL = re.compile(r"^hf:/{1,2}datasets/(?P<id>[^\s]+)$")


@dataclass(frozen=True)
class LoadOptions:
    """``load_dataset`` arguments for dataset folders and Hub ids."""

    split: str | None = None
    data_dir: str | None = None
    subset: str | None = None
    streaming: bool = False


@dataclass(frozen=True)
class HubSource:
    repo_id: str
    revision: str | None
    commit: str
    path: Path


def hub_id(value: str | Path) -> tuple[str, str | None] | None:
    """``(repo_id, revision)`` when ``value`` names a Hub dataset and no local path; else None."""
    from rlaif.models import parse_hub_id

    text = str(value)
    m = _HF_URL.match(text)
    if m:
        return parse_hub_id(m["id"])
    if Path(text).expanduser().exists():
        return None
    return parse_hub_id(text)


_RESOLVED: dict[tuple[str, str | None, str | None], HubSource] = {}


def resolve_dataset(repo_id: str, revision: str | None, data_dir: str | None) -> HubSource:
    """The dataset's snapshot in the Hub cache (downloaded if missing and allowed); once per
    process, so the source cannot change under a running job."""
    from rlaif.models import hub_snapshot

    key = (repo_id, revision, data_dir)
    if key not in _RESOLVED:
        allow = None
        if data_dir:
            allow = [f"{data_dir.strip('/')}/**", "README.md", "*.json"]
        path = hub_snapshot(
            repo_id, revision, allow, repo_type="dataset", error=_hub_error, ignore=None
        )
        _RESOLVED[key] = HubSource(repo_id, revision, path.name, path)
    return _RESOLVED[key]


def dataset_commit(repo_id: str, revision: str | None) -> str:
    """The commit a Hub dataset id resolves to, fetching at most its README (a hash of the source
    must not download the data)."""
    from rlaif.models import hub_snapshot

    for (repo, rev, _), source in _RESOLVED.items():
        if (repo, rev) == (repo_id, revision):
            return source.commit
    return hub_snapshot(
        repo_id, revision, ["README.md"], repo_type="dataset", error=_hub_error, ignore=None
    ).name


def _hub_error(message: str) -> PromptDataError:
    return PromptDataError("--prompts", message)


def load_local_dataset(path: str | Path) -> Any:
    """A JSONL file or a ``save_to_disk`` folder as a ``datasets.Dataset`` (how the trainers
    read rlaif's output files), every row with its full provenance (``data.provenance``);
    ``FileNotFoundError`` when it is neither, for the caller to name in its own error."""
    from datasets import load_dataset, load_from_disk

    from rlaif.data.provenance import expand_dataset

    path = Path(path)
    if path.is_dir():
        return load_from_disk(str(path))
    if not path.is_file():
        raise FileNotFoundError(path)
    return expand_dataset(load_dataset("json", data_files=str(path), split="train"), path)


def is_saved_dataset(path: Path) -> bool:
    """A ``save_to_disk`` folder (as opposed to a folder of data files)."""
    return any((path / name).is_file() for name in ("state.json", "dataset_dict.json"))


def load_records(
    source: str | Path, where: Path, opts: LoadOptions, limit: int | None
) -> tuple[Iterable[dict[str, Any]], list[str]]:
    """The records of a data folder, Hub snapshot or parquet file, and its column names."""
    from datasets import DatasetDict, IterableDatasetDict, load_dataset

    kwargs: dict[str, Any] = {"split": opts.split, "streaming": opts.streaming and bool(limit)}
    if opts.data_dir:
        kwargs["data_dir"] = opts.data_dir
    if opts.subset:
        kwargs["name"] = opts.subset
    try:
        if where.is_file():
            kwargs.pop("data_dir", None)
            kwargs.pop("name", None)
            kwargs["split"] = opts.split or "train"
            ds = load_dataset("parquet", data_files=str(where), **kwargs)
        else:
            ds = load_dataset(str(where), **kwargs)
    except (ValueError, FileNotFoundError) as e:  # unknown split or subset, no data files
        said = " ".join(str(e).split())[:400]
        raise PromptDataError(source, f"datasets could not read it: {said}") from None
    if isinstance(ds, DatasetDict | IterableDatasetDict):
        if len(ds) != 1:
            splits = ", ".join(ds)
            raise PromptDataError(source, f"several splits ({splits}): choose one with --split")
        ds = next(iter(ds.values()))
    columns = list(ds.column_names or [])
    return ds, columns


def load_saved(source: str | Path, where: Path) -> tuple[Iterable[dict[str, Any]], list[str]]:
    from datasets import load_from_disk

    try:
        ds = load_from_disk(str(where))
    except (FileNotFoundError, ValueError) as e:
        raise PromptDataError(source, f"not a dataset saved with save_to_disk ({e})") from None
    if isinstance(ds.column_names, dict):
        raise PromptDataError(source, "a DatasetDict: save a single split with save_to_disk")
    return ds, list(ds.column_names)


def take(records: Iterable[dict[str, Any]], limit: int | None) -> Iterator[tuple[int, Any]]:
    for n, rec in enumerate(records, start=1):
        if limit is not None and n > limit:
            return
        yield n, rec
