"""The review fixture: a run folder (stage folders of SL-CAI, preferences, red-team prompts and
policy eval samples, with failed and unlabeled side files), copied so tests may label it."""

from __future__ import annotations

import shutil

import pytest

from ..conftest import FIXTURES


@pytest.fixture
def out_dir(tmp_path):
    out = tmp_path / "run"
    shutil.copytree(FIXTURES / "review", out)
    return out


@pytest.fixture
def folder(out_dir):
    from rlaif.review.folder import open_folder

    return open_folder(out_dir)
