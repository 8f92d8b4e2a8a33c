"""Finding the datasets of an output folder: flat (`rlaif generate`) or staged (`rlaif run`)."""

from __future__ import annotations

import json
import shutil

import pytest

from rlaif.data.outputs import find_datasets
from rlaif.errors import NoDatasetError

from ..conftest import FIXTURES


def test_a_run_folder_lists_each_stage_dataset_with_its_side_files():
    found = find_datasets(FIXTURES / "review")
    assert [(d.name, d.kind) for d in found] == [
        ("sl_cai", "sl_cai"), ("prefs", "prefs"), ("red_team", "red_team"),
        ("eval", "policy_eval"),
    ]  # fmt: skip
    sides = {d.name: [s for s, _ in d.side_files] for d in found}
    assert sides == {"sl_cai": ["failed"], "prefs": ["unlabeled"], "red_team": [], "eval": []}


def test_a_flat_folder_and_a_second_prefs_stage(tmp_path):
    shutil.copytree(FIXTURES / "compare" / "a", tmp_path / "out")
    (tmp_path / "out" / "prefs_2").mkdir()
    shutil.copy(FIXTURES / "compare" / "a" / "preferences.jsonl", tmp_path / "out" / "prefs_2")
    found = find_datasets(tmp_path / "out")
    assert [(d.name, d.kind) for d in found] == [
        ("sl_cai", "sl_cai"), ("prefs", "prefs"), ("prefs_2", "prefs")
    ]  # fmt: skip


def test_a_prompts_file_that_is_not_red_team_output_is_no_dataset(tmp_path):
    (tmp_path / "prompts.jsonl").write_text(json.dumps({"id": "1", "prompt": "hi"}) + "\n")
    with pytest.raises(NoDatasetError, match="no rlaif dataset here"):
        find_datasets(tmp_path)
    with pytest.raises(NoDatasetError, match="no such folder"):
        find_datasets(tmp_path / "missing")


def test_a_damaged_dataset_is_found_and_its_line_named_when_read(tmp_path):
    from rlaif.data.outputs import read_jsonl
    from rlaif.errors import ReviewError

    (tmp_path / "sl_cai.jsonl").write_text('{"id": "1", "prompt": "hi", \n')
    (ds,) = find_datasets(tmp_path)
    with pytest.raises(ReviewError, match=r"sl_cai.jsonl:1: invalid JSON"):
        read_jsonl(ds.path)
