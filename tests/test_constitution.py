from __future__ import annotations

import itertools
import shutil
import textwrap
from pathlib import Path

import pytest

from rlaif.constitution import (
    dump_constitution,
    load_constitution,
    sample_principles,
)
from rlaif.errors import ConstitutionError, ImportFormatError
from rlaif.importers import import_cai_paper

from .conftest import FIXTURES, REPO

BUILTIN = sorted((REPO / "constitution").glob("*.yaml"))


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


GOOD = """
    name: tiny
    description: a test constitution
    version: 2
    critique_revision:
      - id: a
        critique_request: Is it harmful?
        revision_request: Make it harmless.
      - id: b
        critique_request: Is it rude?
        revision_request: Make it polite.
    feedback:
      - id: f1
        instruction: Which is kinder?
"""


def test_builtin_constitutions_load():
    names = {"harmless.yaml", "helpful-honest-harmless.yaml", "evaluation.yaml"}
    assert {p.name for p in BUILTIN} >= names
    for path in BUILTIN:
        c = load_constitution(path)
        assert c.feedback and len(c.sha256) == 64
        if path.name != "evaluation.yaml":  # the evaluation questions have no SL-CAI part
            assert c.critique_revision
    questions = {
        p.id for p in load_constitution(REPO / "constitution" / "evaluation.yaml").feedback
    }
    assert questions == {"harmful-compliance", "evasive", "agrees-false-claim", "more-helpful"}


def test_harmless_covers_enough_principles_and_has_examples():
    c = load_constitution(REPO / "constitution" / "harmless.yaml")
    assert len(c.critique_revision) >= 12
    assert len(c.feedback) >= 12
    assert len(c.few_shot) >= 1
    ids = {p.id for p in c.critique_revision}
    assert {"sycophancy", "preachy-evasive", "violence-weapons", "privacy"} <= ids


def test_good_file_parses_and_version_becomes_text(tmp_path):
    c = load_constitution(write(tmp_path, GOOD))
    assert c.version == "2"
    assert [p.id for p in c.critique_revision] == ["a", "b"]
    assert c.critique_principle("b").revision_request == "Make it polite."
    assert c.path == tmp_path / "c.yaml"


def test_misspelt_key_names_file_line_and_suggests(tmp_path):
    path = write(tmp_path, GOOD.replace("revision_request: Make it polite.", "revison_request: x"))
    with pytest.raises(ConstitutionError) as err:
        load_constitution(path)
    text = str(err.value)
    assert f"{path}:10: in critique_revision.1: unknown key 'revison_request'" in text
    assert "did you mean 'revision_request'" in text
    # the missing required key is reported at the list item's line, in the same pass
    assert f"{path}:8: in critique_revision.1: missing required key 'revision_request'" in text


def test_misspelt_key_in_real_constitution_copy(tmp_path):
    src = REPO / "constitution" / "harmless.yaml"
    lines = src.read_text().splitlines(keepends=True)
    n = next(i for i, ln in enumerate(lines) if ln.strip().startswith("instruction:"))
    lines[n] = lines[n].replace("instruction:", "instrucion:")
    bad = tmp_path / "harmless.yaml"
    bad.write_text("".join(lines))
    shutil.copytree(src.parent / "examples", tmp_path / "examples")
    with pytest.raises(ConstitutionError) as err:
        load_constitution(bad)
    assert f"{bad}:{n + 1}: " in str(err.value)
    assert err.value.line is not None


def test_top_level_unknown_key(tmp_path):
    path = write(tmp_path, GOOD + "    principls: []\n")
    with pytest.raises(ConstitutionError, match=r"c\.yaml:14: unknown key 'principls'"):
        load_constitution(path)


def test_duplicate_ids_name_both_lines(tmp_path):
    path = write(tmp_path, GOOD.replace("- id: b", "- id: a"))
    with pytest.raises(ConstitutionError) as err:
        load_constitution(path)
    assert f"{path}:8: duplicate critique_revision id 'a' (first at line 5)" in str(err.value)


def test_duplicate_yaml_key_is_an_error_with_line(tmp_path):
    path = write(tmp_path, GOOD.replace("version: 2", "version: 2\n    name: again"))
    with pytest.raises(ConstitutionError, match=r"c\.yaml:4: invalid YAML: duplicate key 'name'"):
        load_constitution(path)


def test_yaml_syntax_error_has_line(tmp_path):
    path = write(tmp_path, GOOD.replace("Which is kinder?", "[unclosed"))
    with pytest.raises(ConstitutionError) as err:
        load_constitution(path)
    assert err.value.line is not None and err.value.line >= 13
    assert "invalid YAML" in str(err.value)


def test_blank_text_and_bad_id(tmp_path):
    path = write(tmp_path, GOOD.replace("Is it rude?", "'   '").replace("id: f1", "id: 'f 1'"))
    with pytest.raises(ConstitutionError) as err:
        load_constitution(path)
    problems = dict(err.value.problems)
    assert "must not be blank" in problems[9]
    assert "pattern" in problems[12]


def test_not_a_mapping_and_missing_file(tmp_path):
    with pytest.raises(
        ConstitutionError, match=r"c\.yaml:1: a constitution must be a YAML mapping"
    ):
        load_constitution(write(tmp_path, "- just\n- a list\n"))
    with pytest.raises(ConstitutionError, match="file not found"):
        load_constitution(tmp_path / "nope.yaml")


def test_no_principles_is_an_error(tmp_path):
    path = write(tmp_path, "name: x\ndescription: y\nversion: '1'\n")
    with pytest.raises(ConstitutionError, match="no principles"):
        load_constitution(path)


def test_examples_file_is_resolved_validated_and_hashed(tmp_path):
    ex = write(
        tmp_path,
        """
        examples:
          - principle: a
            prompt: p
            response: r
            critique: c
            revision: v
        """,
        "ex.yaml",
    )
    path = write(tmp_path, GOOD + "    examples: ex.yaml\n")
    c = load_constitution(path)
    assert c.few_shot[0].principle == "a"
    before = c.sha256
    ex.write_text(ex.read_text().replace("revision: v", "revision: w"))
    assert load_constitution(path).sha256 != before  # example text is part of the hash

    ex.write_text(ex.read_text().replace("principle: a", "principle: zz"))
    with pytest.raises(ConstitutionError, match=r"ex\.yaml:2: unknown principle id 'zz'"):
        load_constitution(path)


def test_missing_examples_file_points_at_the_key(tmp_path):
    path = write(tmp_path, GOOD + "    examples: nowhere.yaml\n")
    with pytest.raises(ConstitutionError, match=r"c\.yaml:14: examples file not found"):
        load_constitution(path)


def test_sample_principles_reproducible_and_without_repeats():
    items = list("abcdef")
    first = sample_principles(items, 6, seed=1, key="row-1")
    assert sorted(first) == items  # a full cycle uses every principle once
    assert sample_principles(items, 6, seed=1, key="row-1") == first
    assert any(sample_principles(items, 6, seed=1, key=f"row-{i}") != first for i in range(2, 6))
    long = sample_principles(items, 13, seed=3, key="x")
    assert sorted(long[:6]) == items and sorted(long[6:12]) == items
    assert all(a != b for a, b in itertools.pairwise(long))


def test_import_cai_paper_strips_cue_words(tmp_path):
    src = FIXTURES / "cai_paper"
    data = import_cai_paper([src / "critiques.json", src / "feedback.json"]).constitution_body()
    crit = data["critique_revision"]
    assert crit[0] == {
        "id": "unkind0",
        "critique_request": "Point out where the assistant's reply was unkind or rude.",
        "revision_request": "Rewrite the reply so that it is kind and polite.",
    }
    assert crit[1]["id"] == "risky-1"
    fb = data["feedback"]
    assert fb[0]["instruction"] == "Please choose the response that is kinder and more considerate."
    assert fb[1]["instruction"].endswith("danger.")
    assert not any("Options" in f["instruction"] for f in fb)
    # the result is a valid constitution once named
    out = tmp_path / "imported.yaml"
    out.write_text(dump_constitution({"name": "x", "description": "y", "version": "1", **data}))
    c = load_constitution(out)
    assert len(c.critique_revision) == 2 and len(c.feedback) == 2


@pytest.mark.parametrize(
    "content, match",
    [
        ('{"a": {"prompt": ["no cue"], "edit_request": "x"}}', "missing CritiqueRequest"),
        ('{"a": {"prompt": [], "edit_request": "x"}}', "list of one string"),
        ('{"a": {"prompt": ["x"], "other": 1}}', "expected keys"),
        ("[1, 2]", "item 0: expected a feedback instruction"),
        ('["Choose the kinder reply. Options:", "Just some text"]', "item 1: expected a feedback"),
        ('[{"prompt": "x", "corrects": ["a"]}]', "item 0: expected a feedback"),
        ('[{"prompt": "x", "corrects": [], "incorrects": ["b"]}]', "non-empty lists"),
        ('["\\n\\nHuman: hi\\n\\nCritiqueRequest: c\\n\\nCritique: d"]', "Assistant"),
        (
            '["\\n\\nHuman: hi\\n\\nAssistant: yo\\n\\nCritiqueRequest: c\\n\\nCritique: d"]',
            "found CritiqueRequest, Critique$",
        ),
        ('"text"', "expected a JSON object"),
        ("{broken", "invalid JSON"),
    ],
)
def test_import_rejects_malformed_input(tmp_path, content, match):
    path = tmp_path / "in.json"
    path.write_text(content)
    with pytest.raises(ImportFormatError, match=match):
        import_cai_paper([path])


def test_yaml_values_come_out_as_plain_python(tmp_path):
    from rlaif.errors import ConfigFileError
    from rlaif.yamlio import parse_yaml, plain

    path = tmp_path / "v.yaml"
    path.write_text("lr: 1.0e-6\nsteps: 4\nflag: true\nname: x\nitems: [1, 2.5]\n")
    root, _ = parse_yaml(path, ConfigFileError)
    values = plain(root)
    assert values == {"lr": 1e-6, "steps": 4, "flag": True, "name": "x", "items": [1, 2.5]}
    assert [type(v) for v in values.values()] == [float, int, bool, str, list]
    assert [type(v) for v in values["items"]] == [int, float]


def test_import_few_shot_transcripts_gives_examples_not_principles(tmp_path):
    """The paper's critique/revision few-shot file (a list of Human/Assistant transcripts with
    critique and revision blocks) becomes few-shot examples; no transcript becomes a feedback
    principle."""
    src = FIXTURES / "cai_paper"
    got = import_cai_paper([src / "critiques.json", src / "critique_fewshot.json"])
    assert got.feedback == [] and got.feedback_examples == []
    assert len(got.examples) == 3  # one block in the first transcript, two in the second
    first, second, third = got.examples
    assert first["principle"] == "unkind0"  # the critique request of an imported principle
    assert first["prompt"] == "How do I pick the lock on my neighbour's shed?"
    assert first["response"].startswith("Use a tension wrench")
    assert first["revision"].endswith("they will likely open it for you.")
    assert "context" not in first
    # the multi-turn transcript keeps its earlier turns; its requests match no imported
    # principle, so one is made from them (and reported as such)
    assert second["context"] == [
        {"role": "user", "content": "I want to learn to cook."},
        {"role": "assistant", "content": "Great! What kinds of food do you like?"},
    ]
    assert second["prompt"] == "Spicy food. What should I start with?"
    assert (
        got.from_examples == ["example-request-01"] and second["principle"] == "example-request-01"
    )
    made = got.critique_revision[-1]
    assert made["critique_request"] == "Say whether the reply could put the person in danger."
    # a second block critiques the first revision
    assert third["principle"] == "unkind0" and third["response"] == second["revision"]
    assert not any("CritiqueRequest" in str(ex) or "Human:" in str(ex) for ex in got.examples)


def test_import_feedback_few_shot_rows(tmp_path):
    src = FIXTURES / "cai_paper"
    got = import_cai_paper([src / "feedback.json", src / "feedback_fewshot.json"])
    assert [f["id"] for f in got.feedback] == ["feedback-01", "feedback-02"]
    # one example per (correct, incorrect) pair: 1x1 + 1x2
    assert len(got.feedback_examples) == 3
    a, b, c = got.feedback_examples
    assert a["prompt"] == "Can you tell me how to hotwire a car?" and "context" not in a
    assert a["better"].startswith("I can't help") and a["worse"].startswith("Sure: pull")
    assert b["prompt"] == "She lost her job. What can I say?"
    assert b["context"][1] == {
        "role": "assistant",
        "content": "I'm sorry to hear that. What happened?",
    }
    assert b["better"] == c["better"] and {b["worse"], c["worse"]} == {
        "Tell her to toughen up.",
        "Say nothing; it's not your problem.",
    }
