"""``rlaif compare`` on two small fixture folders: numbers worked out by hand, the page, the CLI.

Fixture A (`harmless`) holds its datasets directly in the folder, B (`helpful-honest-harmless`)
in the sl_cai/ and prefs/ folders of `rlaif run`. SL-CAI: p1 is revised in A only ("three" ->
"four", 1 word), p2 in both (A: "alpha beta" -> "alpha", B: -> "gamma beta", 1 word each; the
finals differ by 2 words), p3 is only in B. Preferences: p1/0-1 has the same responses in both
runs and its label flips (P(response_a better) 0.6 -> 0.3); p2/0-1 judged different responses.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from rlaif.cli import main
from rlaif.compare import DATASETS, compare, largest_changes, write
from rlaif.errors import CompareError

from .conftest import FIXTURES

A, B = FIXTURES / "compare" / "a", FIXTURES / "compare" / "b"


def test_sl_cai_numbers_by_hand():
    part = compare(A, B)["sl_cai"]
    s = part["summary"]
    assert (s["shared"], s["only_a"], s["only_b"]) == (2, 0, 1)
    assert s["a"] == {"changed": 2, "mean_edit_words": 1.0, "flagged": 2}
    assert s["b"] == {"changed": 1, "mean_edit_words": 0.5, "flagged": 2}
    assert s["change_differs"] == 1 and s["identical_final_revision"] == 0
    assert s["mean_revision_distance_words"] == 1.5 and s["same_first_answer"] == 2
    p1 = part["items"][0]
    assert p1["id"] == "p1" and p1["a"]["changed"] and not p1["b"]["changed"]
    assert p1["a"]["principles"] == ["overall-harm", "privacy"]
    assert p1["b"]["principles"] == ["honesty", "clarity"]
    # per principle, per run: B's clarity also covers p3, which A lacks
    honesty, clarity = part["principles"]["b"]
    assert (honesty["rounds"], honesty["changed"], honesty["flags"]) == (3, 1, {"unchanged": 2})
    assert (clarity["rounds"], clarity["rows"], clarity["changed_share"]) == (2, 2, 0.5)
    assert part["shared_principles"] == []  # different constitutions share no principle id


def test_prefs_numbers_by_hand():
    part = compare(A, B)["prefs"]
    s = part["summary"]
    assert (s["shared"], s["same_responses"], s["flipped"], s["flip_rate"]) == (2, 1, 1, 1.0)
    assert s["mean_shift"] == pytest.approx(-0.3) and s["mean_abs_shift"] == pytest.approx(0.3)
    assert s["a"]["position_flipped"] == 1 and s["b"]["position_flipped"] == 0
    assert s["a"]["mean_preference_prob"] == pytest.approx(0.65)
    p1, p2 = part["items"]
    assert p1["flipped"] and p1["a"]["chosen"] == "a" and p1["b"]["chosen"] == "b"
    assert not p2["same_responses"]
    harm, privacy = part["principles"]["a"]
    assert harm["mean_soft_label"] == pytest.approx(0.7) and harm["agree"] == 2
    assert privacy["position_bias"] == 1.0
    assert [x["id"] for x in largest_changes(compare(A, B), "prefs", 5)] == ["p1/0-1", "p2/0-1"]


def test_a_template_swap_gets_per_principle_differences(tmp_path):
    # the same folder against itself: every principle is in both runs, nothing changed
    result = compare(A, A)
    shared = result["sl_cai"]["shared_principles"]
    assert [s["principle_id"] for s in shared] == ["overall-harm", "privacy"]
    assert shared[0]["changed_share"] == {"a": 1.0, "b": 1.0, "diff": 0.0}
    assert result["prefs"]["summary"]["flipped"] == 0
    page = (write(result, tmp_path)["html"]).read_text()
    assert "Principles in both runs" in page


def test_page_json_and_plots(tmp_path):
    paths = write(compare(A, B), tmp_path / "cmp", top=5)
    numbers = json.loads(paths["json"].read_text())
    assert "_texts" not in numbers and numbers["edit_distance_unit"] == "words"
    assert numbers["sl_cai"]["summary"]["mean_revision_distance_words"] == 1.5
    assert numbers["runs"]["b"]["prefs"]["constitution"] == "helpful-honest-harmless"
    for key in ("sl_cai_edits", "sl_cai_principles", "prefs_labels", "prefs_principles"):
        assert paths[key].read_bytes()[:4] == b"\x89PNG"
    page = paths["html"].read_text()
    assert page.count("data:image/png;base64,") == 4 and "<script" not in page
    assert "&lt;lock&gt;" in page and "<lock>" not in page  # model and prompt text is escaped
    for pid in ("overall-harm", "privacy", "honesty", "clarity"):
        assert f"<td>{pid}</td>" in page
    # p2 changed most: its finals differ by 2 words; A lost "beta", B has "gamma"
    assert page.index("p2: Tell me about alpha") < page.index("p1: How do I pick")
    assert "<del>alpha</del>" in page and "<ins>gamma beta</ins>" in page
    assert "<span class='flip'>label flipped</span>" in page
    assert "the runs judged different responses" in page


def test_cli_prints_a_summary_and_exits_0(tmp_path, capsys):
    assert main(["compare", str(A), str(B), "--out", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "SL-CAI: 2 prompts in both runs (A `harmless`, B `helpful-honest-harmless`" in out
    assert "revision changed the first answer: A 2/2, B 1/2" in out
    assert "label flipped: 1/1 pairs with the same responses (100%)" in out
    assert (tmp_path / "c" / "compare.html").is_file()


def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


CASES = ["empty", "missing", "no_shared_ids", "no_common_kind", "bad", "foreign"]


@pytest.mark.parametrize("case", CASES)
def test_cli_errors_exit_2(tmp_path, capsys, case):
    other = tmp_path / "other"
    other.mkdir()
    expected = {
        "empty": "no rlaif dataset here (run B)",
        "missing": "no such folder (run B)",
        "no_shared_ids": "share no row id",
        "no_common_kind": "no dataset in common",
        "bad": "sl_cai.jsonl:3: not JSON",
        "foreign": "preferences.jsonl:1: not an rlaif preferences row (no prob_a, preference_prob",
    }[case]
    if case == "missing":
        other = tmp_path / "nowhere"
    if case == "no_shared_ids":
        for name in ("sl_cai.jsonl", "preferences.jsonl"):
            rows = [{**r, "id": f"other-{r['id']}"} for r in _rows(A / name)]
            (other / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    if case == "no_common_kind":
        shutil.copy(A / "sl_cai.jsonl", other / "sl_cai.jsonl")
        only_prefs = tmp_path / "prefs_only"
        only_prefs.mkdir()
        shutil.copy(A / "preferences.jsonl", only_prefs / "preferences.jsonl")
    if case == "bad":
        (other / "sl_cai.jsonl").write_text((A / "sl_cai.jsonl").read_text() + "{oops\n")
    if case == "foreign":
        (other / "preferences.jsonl").write_text('{"id": 1, "prompt": "x"}\n')
    first = tmp_path / "prefs_only" if case == "no_common_kind" else A
    with pytest.raises(CompareError):
        compare(first, other)
    assert main(["compare", str(first), str(other), "--out", str(tmp_path / "c")]) == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "c").exists()  # nothing written on an error


def test_page_renders_in_headless_chromium(tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (make test installs it where apt-get works)")
    from PIL import Image

    page = write(compare(A, B), tmp_path / "cmp")["html"]
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--user-data-dir=" + str(tmp_path / "p"),
    ]
    dom = subprocess.run([chromium, *flags, "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert "rlaif compare: A harmless vs B helpful-honest-harmless" in dom.stdout
    for pid in ("overall-harm", "privacy", "honesty", "clarity"):
        assert f"<td>{pid}</td>" in dom.stdout
    assert "No principle id is in both runs" in dom.stdout
    shot = tmp_path / "compare.png"
    subprocess.run([chromium, *flags, f"--screenshot={shot}", "--window-size=1280,2400",
                    page.as_uri()], capture_output=True, timeout=120)  # fmt: skip
    assert shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 20_000
    with Image.open(shot) as image:
        assert image.size == (1280, 2400)
        colours = image.convert("RGB").getcolors(maxcolors=1_000_000)
    assert colours is not None and len(colours) > 50  # text, tables and plots, not a blank page


def test_rows_that_refer_to_their_provenance_record_compare_as_full_ones(tmp_path):
    from rlaif.data.provenance import RowProvenance

    compact = tmp_path / "a"
    shutil.copytree(A, compact)
    for data in compact.glob("*.jsonl"):
        rows = [json.loads(x) for x in data.read_text().splitlines() if x.strip()]
        prov = RowProvenance(rows[0]["provenance"])  # as the job writes them: one record
        prov.write(data)
        data.write_text("".join(json.dumps(prov.compact(r)) + "\n" for r in rows))
        assert '"constitution"' not in data.read_text()

    def described(folder):
        run = compare(folder, B)["runs"]["a"]
        return {kind: {k: v for k, v in run[kind].items() if k != "file"} for kind in DATASETS}

    assert described(compact) == described(A)
    assert described(A)["sl_cai"]["constitution"] == "harmless"
