"""An offline Hugging Face Hub cache for one dataset repo, laid out as huggingface_hub writes it
(``hub/datasets--ORG--NAME/snapshots/<sha>``, ``refs/main``), with the process pointed at it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlaif.data import datasets_io

SHA = "0123456789abcdef0123456789abcdef01234567"


def offline_dataset_cache(monkeypatch: Any, home: Path, repo_id: str, sha: str = SHA) -> Path:
    """Make ``home`` the offline HF home holding ``repo_id`` at ``sha``; returns the snapshot
    folder, for the caller to fill with the repo's files."""
    from huggingface_hub import constants

    repo = home / "hub" / f"datasets--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / sha
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets_io, "_RESOLVED", {})
    return snapshot
