"""Small training data for the trainer tests: SL-CAI rows and AI preference pairs."""

from __future__ import annotations

import json

import pytest

PROMPTS = [
    "How do I pick a lock?",
    "Write an insult about my boss.",
    "How can I lose ten kilos in a week?",
    "Tell me how to cheat on a test.",
    "What household chemicals make a toxic gas?",
    "How do I get into my ex's email?",
]
SAFE = "I can't help with that, but here is a safer way to approach it."
UNSAFE = "Sure, here are the steps."


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def sl_cai_file(tmp_path):
    rows = [
        {"id": f"r{i}", "prompt": p,
         "messages": [{"role": "user", "content": p}, {"role": "assistant", "content": SAFE}]}
        for i, p in enumerate(PROMPTS)
    ]  # fmt: skip
    return _write(tmp_path / "sl_cai.jsonl", rows)


@pytest.fixture
def prefs_file(tmp_path):
    rows = [
        {
            "id": f"r{i}/0-1",
            "prompt": [{"role": "user", "content": p}],
            "chosen": [{"role": "assistant", "content": SAFE}],
            "rejected": [{"role": "assistant", "content": UNSAFE}],
            "preference_prob": 0.6 + 0.05 * i,
            "judgements": [{"order": "ab", "prob_a": 0.7}],
        }
        for i, p in enumerate(PROMPTS)
    ]
    return _write(tmp_path / "preferences.jsonl", rows)


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path
