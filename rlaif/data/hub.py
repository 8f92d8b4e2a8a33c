"""Uploading a generated dataset to the Hugging Face Hub: the data and its card, nothing else.

An output folder holds more than the dataset: the SQLite cache (every labeler answer, including
ones no row kept), the journal, timings, failed rows, batch state. None of that belongs in a
published dataset, so what goes up is decided by the card, not by the folder: the files named in
the card's ``configs: data_files`` (plus their ``.parquet`` twin when one was written), the plots
the card shows, and the card itself. Reading the list from the card also means
``load_dataset(REPO_ID)`` finds exactly the files the card describes. A name that leaves the
folder (``../``, an absolute path, a link out of it) is refused: the card is a file a user may
have edited or received, and a push must never upload a file from elsewhere on the machine.

The card's front matter gets the licence and language the user gives at upload time (rlaif cannot
know the terms of the user's prompts and models, so the generated card says ``unknown``). The
upload is one commit through ``huggingface_hub`` (``create_repo`` + ``create_commit``), which reads
``HF_TOKEN`` or the saved login as usual; the token is never printed.

Rows in the folder carry a reference to their provenance record (``data.provenance``); what is
uploaded has the full record in every row, as rlaif's readers give it: a JSONL file is expanded
into a temporary copy for the upload (the parquet twin already holds full records).
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any

from rlaif.errors import PushError

CARD = "README.md"


@dataclass
class Upload:
    """What one push sends: files from the folder, and the card's new text."""

    files: list[Path]
    card: str

    @property
    def paths_in_repo(self) -> list[str]:
        return [f.name for f in self.files] + [CARD]


def _front_matter(text: str, path: Path) -> tuple[dict[str, Any], str]:
    from rlaif.yamlio import yaml_parser

    if not text.startswith("---\n"):
        raise PushError(path, "the card has no YAML front matter: was the folder made by rlaif?")
    head, sep, body = text[4:].partition("\n---\n")
    if not sep:
        raise PushError(path, "the card's front matter is not closed by '---'")
    meta = yaml_parser().load(head) or {}
    return meta, body


def prepare(out_dir: Path, license: str | None = None, language: str | None = None) -> Upload:
    """The files to upload from ``out_dir`` and the card with licence/language filled in."""
    from rlaif.yamlio import yaml_parser

    card_path = out_dir / CARD
    if not out_dir.is_dir():
        raise PushError(out_dir, "no such folder")
    if not card_path.is_file():
        raise PushError(out_dir, f"no {CARD} (dataset card): push a folder written by rlaif")
    meta, body = _front_matter(card_path.read_text(encoding="utf-8"), card_path)
    names: list[str] = []
    for config in meta.get("configs") or []:
        files = config.get("data_files")
        names.extend([files] if isinstance(files, str) else list(files or []))
    if not names:
        raise PushError(card_path, "the card names no data files (configs: data_files)")
    files = []
    root = out_dir.resolve()
    for name in names:
        f = out_dir / str(name)
        if Path(str(name)).is_absolute() or not f.resolve().is_relative_to(root):
            # an edited or foreign card must not upload files from elsewhere on the machine
            raise PushError(card_path, f"data file '{name}' is outside the dataset folder")
        if not f.is_file():
            raise PushError(f, "named in the card but missing: rerun the job to finish it")
        files.append(f)
        twin = f.with_suffix(".parquet")
        if twin.is_file() and twin not in files:
            files.append(twin)
    for name in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", body):  # plots the card shows
        f = out_dir / name
        if "/" not in name and f.suffix == ".png" and f.is_file() and f not in files:
            files.append(f)
    if license:
        meta["license"] = license
    if language:
        meta["language"] = [language]
    buf = StringIO()
    yaml_parser().dump(meta, buf)
    return Upload(files, f"---\n{buf.getvalue()}---\n{body}")


def push(
    out_dir: Path,
    repo_id: str,
    private: bool = False,
    license: str | None = None,
    language: str | None = None,
    api: Any = None,
) -> str:
    """Upload the dataset of ``out_dir`` to the dataset repo ``repo_id`` in one commit; returns
    the repo's URL."""
    from huggingface_hub import CommitOperationAdd, HfApi

    upload = prepare(out_dir, license, language)
    api = api or HfApi()
    with tempfile.TemporaryDirectory(prefix="rlaif-push-") as tmp:
        operations = [
            CommitOperationAdd(path_in_repo=f.name, path_or_fileobj=str(_published(f, Path(tmp))))
            for f in upload.files
        ]
        operations.append(
            CommitOperationAdd(path_in_repo=CARD, path_or_fileobj=upload.card.encode("utf-8"))
        )
        return _commit(api, out_dir, repo_id, private, operations, upload)


def _published(f: Path, tmp: Path) -> Path:
    """The file as it is published: a JSONL file whose rows refer to their provenance record
    gets the full record back in every row (a copy under ``tmp``)."""
    from rlaif.data.provenance import has_references, write_expanded

    if f.suffix != ".jsonl" or not has_references(f):
        return f
    return write_expanded(f, tmp / f.name)


def _commit(
    api: Any, out_dir: Path, repo_id: str, private: bool, operations: list[Any], upload: Upload
) -> str:
    from huggingface_hub.errors import HfHubHTTPError

    try:
        url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        api.create_commit(
            repo_id,
            operations,
            commit_message=f"Upload {', '.join(upload.paths_in_repo)} with rlaif",
            repo_type="dataset",
        )
    except HfHubHTTPError as e:
        said = " ".join(str(e).split())[:300]
        raise PushError(out_dir, f"the Hub refused the upload to '{repo_id}': {said}") from None
    except OSError as e:  # no connection
        raise PushError(out_dir, f"cannot reach the Hub to upload '{repo_id}': {e}") from None
    return str(url)
