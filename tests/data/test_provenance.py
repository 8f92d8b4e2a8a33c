"""Row provenance as a reference to one record per dataset, and the readers that expand it."""

from __future__ import annotations

import json
import logging

from rlaif.data.datasets_io import load_local_dataset
from rlaif.data.provenance import (
    RowProvenance,
    expand,
    is_reference,
    read_rows,
    record_file,
    record_sha256,
    write_expanded,
)

RECORD = {
    "rlaif": "0.1.0",
    "source": {"file": "p.txt", "sha256": "ab" * 32},
    "params": {"temperature": 0.7, "seed": 0},
    "critic": {"backend": "openai", "model": "gpt-4o-mini"},
}


def write_dataset(path, rows, record=RECORD):
    """A dataset as a job writes it: the record once, each row a reference."""
    prov = RowProvenance(record)
    prov.write(path)
    path.write_text("".join(json.dumps(prov.compact(r)) + "\n" for r in rows))
    return prov


def test_a_row_of_the_job_carries_only_the_records_hash():
    prov = RowProvenance(RECORD)
    row = prov.compact({"id": "a", "provenance": RECORD})
    assert row == {"id": "a", "provenance": {"sha256": record_sha256(RECORD)}}
    # an equal copy (a row parsed back from JSON) gets the same reference
    assert prov.compact({"id": "a", "provenance": json.loads(json.dumps(RECORD))}) == row
    assert len(json.dumps(row["provenance"])) == 78 < len(json.dumps(RECORD))


def test_a_row_with_other_provenance_carries_the_differences_and_expands_back():
    prov = RowProvenance(RECORD)
    other = {k: v for k, v in RECORD.items() if k != "critic"}
    other["params"] = {"temperature": 0.0, "seed": 3}
    other["extra"] = [1, 2]
    ref = prov.reference(other)
    assert ref["base"] == prov.sha256 and ref["sha256"] == record_sha256(other)
    assert json.loads(ref["changed"]) == {"params": other["params"], "extra": [1, 2]}
    assert ref["removed"] == ["critic"]
    assert is_reference(ref) and not is_reference(RECORD)
    assert expand(ref, {prov.sha256: RECORD}) == other
    assert expand(ref, {}) is ref  # no record: the reference stays


def test_read_rows_expands_references_and_reads_old_full_rows_as_they_are(tmp_path):
    data = tmp_path / "sl_cai.jsonl"
    write_dataset(data, [{"id": "a", "provenance": RECORD}, {"id": "b", "provenance": RECORD}])
    with data.open("a") as f:  # a row written by an older rlaif: the full record
        f.write(json.dumps({"id": "c", "provenance": {**RECORD, "rlaif": "0.0.9"}}) + "\n")
    rows = read_rows(data)
    assert [r["provenance"] for r in rows] == [RECORD, RECORD, {**RECORD, "rlaif": "0.0.9"}]
    # a side file (unlabeled rows) finds the same record by its hash
    side = tmp_path / "sl_cai.unlabeled.jsonl"
    side.write_text(data.read_text().splitlines()[0] + "\n")
    assert read_rows(side)[0]["provenance"] == RECORD


def test_datasets_reader_gives_the_full_record_in_every_row(tmp_path):
    data = tmp_path / "preferences.jsonl"
    rows = [{"id": f"r{i}", "prob_a": 0.5, "provenance": RECORD} for i in range(5)]
    write_dataset(data, rows)
    assert '"rlaif"' not in data.read_text()
    ds = load_local_dataset(data)
    assert ds.column_names == ["id", "prob_a", "provenance"]
    assert ds["provenance"] == [RECORD] * 5
    # an older dataset (full records, no record file) loads as it always did
    old = tmp_path / "old" / "preferences.jsonl"
    old.parent.mkdir()
    old.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load_local_dataset(old)["provenance"] == [RECORD] * 5


def test_a_copy_without_its_record_file_keeps_the_references_and_warns(tmp_path, caplog):
    data = tmp_path / "sl_cai.jsonl"
    write_dataset(data, [{"id": "a", "provenance": RECORD}])
    record_file(data).unlink()
    with caplog.at_level(logging.WARNING):
        (row,) = read_rows(data)
    assert row["provenance"] == {"sha256": record_sha256(RECORD)}
    assert "sl_cai.provenance.json" in caplog.text or ".provenance.json" in caplog.text
    assert load_local_dataset(data)["provenance"][0]["sha256"] == record_sha256(RECORD)


def test_the_record_file_keeps_an_earlier_jobs_record_until_pruned(tmp_path):
    data = tmp_path / "sl_cai.jsonl"
    old = write_dataset(data, [{"id": "a", "provenance": RECORD}])
    new = RowProvenance({**RECORD, "params": {"temperature": 0.0, "seed": 0}})
    new.write(data)  # a new job started over the finished dataset: the old rows still read
    assert read_rows(data)[0]["provenance"] == RECORD
    records = json.loads(record_file(data).read_text())["records"]
    assert set(records) == {old.sha256, new.sha256}
    new.prune(data)
    assert set(json.loads(record_file(data).read_text())["records"]) == {new.sha256}


def test_write_expanded_is_the_published_form(tmp_path):
    data = tmp_path / "sl_cai.jsonl"
    write_dataset(data, [{"id": "a", "provenance": RECORD}, {"id": "b"}])
    out = write_expanded(data, tmp_path / "published.jsonl")
    published = [json.loads(x) for x in out.read_text().splitlines()]
    assert published == [{"id": "a", "provenance": RECORD}, {"id": "b"}]
