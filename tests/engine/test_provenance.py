"""What rows and cards say of the labelers (nothing a user would not publish), and how a row
carries its provenance: a reference to the one record the journal writes beside the dataset."""

from __future__ import annotations

import asyncio
import json

from rlaif.engine.jobs import public_description
from rlaif.labelers.reliability import redact
from rlaif.models import weights_fingerprint


def test_urls_lose_credentials_and_key_like_query_values():
    assert redact("http://me:hunter2@10.0.0.5:8000/v1?api-key=abc&api-version=2024-06") == (
        "http://10.0.0.5:8000/v1?api-key=[redacted]&api-version=2024-06"
    )
    assert redact("https://api.example.com/v1?key=s3cret&token=t") == (
        "https://api.example.com/v1?key=[redacted]&token=[redacted]"
    )
    assert redact("http://127.0.0.1:8080/v1") == "http://127.0.0.1:8080/v1"


def test_a_local_model_is_named_by_its_folder_and_weights(tmp_path):
    folder = tmp_path / "checkpoints" / "my-sft"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"weights")
    desc = {"backend": "transformers", "model": str(folder), "batch_size": 8,
            "base_url": ["http://u:p@h:1/v1", "http://h:2/v1"]}  # fmt: skip
    public = public_description(desc)
    assert public["model"] == "my-sft"
    assert public["weights_fingerprint"] == weights_fingerprint(str(folder)) != ""
    assert public["base_url"] == ["http://h:1/v1", "http://h:2/v1"]
    assert str(tmp_path) not in json.dumps(public) and "u:p" not in json.dumps(public)
    # a name that is no local path (a Hub id, an API model) stays as it is
    assert public_description({"model": "org/name"})["model"] == "org/name"


def test_redact_catches_keys_in_query_strings():
    said = redact("GET https://h/v1?api_key=abc123&x=1 and https://h/v1?api-key=def456")
    assert "abc123" not in said and "def456" not in said and "x=1" in said


# --------------------------------------------------------------------------- rows refer to it

RECORD = {
    "rlaif": "0.1.0",
    "source": {"file": "prompts.txt", "sha256": "0" * 64},
    "constitution": {"name": "harmless", "version": "1.0", "sha256": "1" * 64},
    "templates": {name: "2" * 64 for name in ("initial_response", "critique", "revision")},
    "critic": {"backend": "openai", "model": "gpt-4o-mini", "concurrency": 32},
    "params": {"temperature": 0.7, "top_p": 1.0, "max_tokens": 256, "seed": 0},
}


def _journal(path):
    from rlaif.engine.jobs import fingerprint
    from rlaif.engine.journal import Journal

    return Journal(path, fingerprint(RECORD), provenance=RECORD)


def test_the_journal_writes_the_record_once_and_a_reference_per_row(tmp_path):
    from rlaif.data.provenance import read_rows, record_file, record_sha256

    target = tmp_path / "sl_cai.jsonl"
    journal = _journal(target)
    ids = [f"r{i}" for i in range(1000)]
    journal.open(ids)
    assert json.loads(record_file(target).read_text())["records"] == {record_sha256(RECORD): RECORD}
    for rid in ids:
        journal.append({"id": rid, "revision": "text", "provenance": RECORD})
    journal.finish(len(ids))
    lines = target.read_text().splitlines()
    assert all(json.loads(x)["provenance"] == {"sha256": record_sha256(RECORD)} for x in lines)
    full_row = len(json.dumps({"id": "r999", "revision": "text", "provenance": RECORD}))
    assert target.stat().st_size < len(ids) * full_row / 4  # the record is not copied per row
    assert [r["provenance"] for r in read_rows(target)] == [RECORD] * 1000


def test_resumed_rows_come_back_with_the_full_record_old_or_new_form(tmp_path):
    from rlaif.engine.runner import run_rows

    target = tmp_path / "sl_cai.jsonl"
    journal = _journal(target)
    journal.open(["a", "b", "c"])
    journal.append({"id": "a", "provenance": RECORD})
    journal.close()
    # a row an older rlaif wrote into the same journal, with the whole record in it
    with journal.partial.open("a") as f:
        f.write(json.dumps({"id": "b", "provenance": RECORD}) + "\n")

    async def process(row):
        return {"id": row["id"], "provenance": RECORD}

    again = _journal(target)
    rows = [{"id": x} for x in "abc"]
    done = asyncio.run(run_rows(rows, process, again, window=2))
    assert [r["provenance"] for r in done] == [RECORD] * 3
    again.finish(3)
    written = [json.loads(x)["provenance"] for x in target.read_text().splitlines()]
    assert written[1] == RECORD and written[0] == written[2] != RECORD  # kept byte for byte
