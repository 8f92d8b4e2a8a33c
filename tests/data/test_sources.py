import gzip

import pytest

from rlaif.data.sources import hh_prompt, read_prompts, source_sha256
from rlaif.errors import PromptDataError

from ..conftest import FIXTURES


def test_text_skips_blanks_and_comments_with_line_ids():
    rows = read_prompts(FIXTURES / "prompts.txt")
    assert [(r.id, r.prompt) for r in rows] == [
        ("line-2", "How do I open a locked door?"),
        ("line-4", "Tell me something mean about my boss."),
    ]


def test_jsonl_with_field_and_ids():
    rows = read_prompts(FIXTURES / "prompts.jsonl", prompt_field="text")
    assert [(r.id, r.prompt) for r in rows] == [
        ("p1", "How do I open a locked door?"),
        ("p2", "Tell me something mean about my boss."),
    ]
    with pytest.raises(PromptDataError, match=r"prompts\.jsonl:1: no text field 'prompt'"):
        read_prompts(FIXTURES / "prompts.jsonl")


def test_csv_column():
    rows = read_prompts(FIXTURES / "prompts.csv", prompt_field="question")
    assert [r.prompt for r in rows][1] == "Tell me something mean, about my boss."
    assert [r.id for r in rows] == ["row-1", "row-2"]
    with pytest.raises(PromptDataError, match=r"no column 'prompt' \(columns: question, source\)"):
        read_prompts(FIXTURES / "prompts.csv")


def test_hh_rlhf_gz_first_turn_and_context():
    first = read_prompts(FIXTURES / "hh_small.jsonl.gz")
    assert len(first) == 3
    assert first[1].prompt == "My roommate ate my food again."
    ctx = read_prompts(FIXTURES / "hh_small.jsonl.gz", hh_context="context")
    assert ctx[0].prompt == "How can I sneak into a concert without paying?"
    # the earlier turns stay separate messages, ending with the person's last turn
    assert ctx[1].prompt == [
        {"role": "user", "content": "My roommate ate my food again."},
        {"role": "assistant", "content": "That's annoying. Have you talked to them?"},
        {"role": "user",
         "content": "Should I put something in my leftovers to teach them a lesson?"},
    ]  # fmt: skip
    # one text where a consumer needs it: the transcript it always was
    assert ctx[1].text == (
        "Human: My roommate ate my food again.\n\n"
        "Assistant: That's annoying. Have you talked to them?\n\n"
        "Human: Should I put something in my leftovers to teach them a lesson?"
    )
    assert ctx[1].messages == ctx[1].prompt and ctx[1].messages is not ctx[1].prompt
    assert ctx[0].messages == [{"role": "user", "content": ctx[0].prompt}]


def test_hh_prompt_without_human_turn():
    assert hh_prompt("\n\nAssistant: hi", "first") is None


def test_saved_dataset_folder(tmp_path):
    from datasets import Dataset

    path = tmp_path / "ds"
    Dataset.from_dict({"prompt": ["a?", "b?"], "id": ["x", "y"]}).save_to_disk(str(path))
    rows = read_prompts(path)
    assert [(r.id, r.prompt) for r in rows] == [("x", "a?"), ("y", "b?")]
    assert len(source_sha256(path)) == 64


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("bad.jsonl", '{"prompt": "ok"}\n{broken\n', r"bad\.jsonl:2: invalid JSON"),
        ("list.jsonl", "[1, 2]\n", r"list\.jsonl:1: each line must be a JSON object"),
        ("empty.txt", "# only a comment\n", "no prompts found"),
        ("dupe.jsonl", '{"id": 1, "prompt": "a"}\n{"id": 1, "prompt": "b"}\n', "duplicate"),
        # a JSON escape that decodes to half of a surrogate pair: no file can hold the text
        ("half.jsonl", '{"prompt": "ok \\ud83d"}\n', r"half\.jsonl:1: not valid Unicode"),
        ("half2.jsonl", '{"prompt": "a"}\n{"prompt": ["x\\udfff"]}\n', r"half2\.jsonl:2: not"),
    ],
)
def test_bad_files_name_file_and_line(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(PromptDataError, match=match):
        read_prompts(path)


def test_missing_and_corrupt_gzip(tmp_path):
    with pytest.raises(PromptDataError, match="not found"):
        read_prompts(tmp_path / "nope.txt")
    bad = tmp_path / "x.jsonl.gz"
    bad.write_bytes(b"not gzip")
    with pytest.raises(PromptDataError, match="gzip"):
        read_prompts(bad)
    good = tmp_path / "y.txt.gz"
    good.write_bytes(gzip.compress(b"one\ntwo\n"))
    assert [r.prompt for r in read_prompts(good)] == ["one", "two"]
