"""The command line, in-process through ``rlaif.cli.main`` (same code path as the script)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rlaif.cli import main
from rlaif.constitution import load_constitution
from rlaif.data.provenance import read_rows
from rlaif.engine.critique_revise import prompt_text

from ..conftest import FIXTURES, REPO


def test_help_lists_command_groups(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("demo", "constitution", "models"):
        assert cmd in out


def test_console_script_runs_as_module():
    proc = subprocess.run(
        [sys.executable, "-m", "rlaif", "--version"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0 and proc.stdout.startswith("rlaif ")


def test_validate_builtin_constitutions(capsys):
    paths = [str(p) for p in sorted((REPO / "constitution").glob("*.yaml"))]
    assert main(["constitution", "validate", *paths]) == 0
    assert capsys.readouterr().out.count(": ok (") == len(paths)


def test_validate_misspelt_copy_exits_2_naming_file_and_line(tmp_path, capsys):
    src = REPO / "constitution" / "helpful-honest-harmless.yaml"
    bad = tmp_path / "hhh.yaml"
    text = src.read_text()
    bad.write_text(text.replace("  - id: honesty\n", "  - idd: honesty\n", 1))
    line = text[: text.index("  - id: honesty\n")].count("\n") + 1
    assert main(["constitution", "validate", str(src), str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:{line}: in critique_revision.1: unknown key 'idd'" in err


def test_show_prints_principles(capsys):
    assert main(["constitution", "show", str(REPO / "constitution" / "harmless.yaml")]) == 0
    out = capsys.readouterr().out
    assert "preachy-evasive" in out and "helpful-not-preachy" in out


def test_import_cai_paper_writes_a_valid_constitution(tmp_path, capsys):
    out = tmp_path / "paper.yaml"
    src = FIXTURES / "cai_paper"
    code = main(
        [
            "constitution",
            "import",
            str(src / "critiques.json"),
            str(src / "feedback.json"),
            "--format",
            "cai-paper",
            "-o",
            str(out),
        ]
    )
    assert code == 0
    assert "2 critique/revision and 2 feedback" in capsys.readouterr().out
    assert main(["constitution", "validate", str(out)]) == 0
    assert "CritiqueRequest" not in out.read_text() and "name: paper" in out.read_text()


def test_import_bad_json_exits_2(tmp_path, capsys):
    bad = tmp_path / "x.json"
    bad.write_text("{nope")
    assert (
        main(
            [
                "constitution",
                "import",
                str(bad),
                "--format",
                "cai-paper",
                "-o",
                str(tmp_path / "o.yaml"),
            ]
        )
        == 2
    )
    assert f"{bad}:1: invalid JSON" in capsys.readouterr().err


def test_models_list(capsys):
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "smollm2" in out and "transformers" in out


def test_demo_sandbox_escape_exits_2_before_loading_a_model(tmp_path, capsys):
    (tmp_path / "critique.j2").write_text(
        "<<<user>>>\n{{ ''.__class__.__mro__[1].__subclasses__() }}\n"
    )
    code = main(["demo", "--templates", str(tmp_path), "--labeler", "transformers:/nonexistent"])
    assert code == 2
    err = capsys.readouterr().err
    assert "sandbox refused unsafe access" in err and "critique.j2:2" in err


def test_demo_missing_variable_exits_2(tmp_path, capsys):
    (tmp_path / "revision.j2").write_text("<<<user>>>\n{{ critic }}\n")
    assert main(["demo", "--templates", str(tmp_path)]) == 2
    assert "'critic' is undefined" in capsys.readouterr().err


def test_demo_bad_constitution_exits_2(tmp_path, capsys):
    bad = tmp_path / "c.yaml"
    bad.write_text("name: x\ndescription: y\nversion: 1\nfeedbak: []\n")
    assert main(["demo", "--constitution", str(bad)]) == 2
    assert f"{bad}:4: unknown key 'feedbak'" in capsys.readouterr().err


def test_demo_on_tiny_model_writes_rows_with_provenance(tiny_llama_dir, tmp_path, capsys):
    out = tmp_path / "out"
    prompts = FIXTURES / "prompts.txt"
    const = REPO / "constitution" / "helpful-honest-harmless.yaml"
    args = [
        "demo",
        "--labeler",
        f"transformers:{tiny_llama_dir}",
        "--prompts",
        str(prompts),
        "--constitution",
        str(const),
        "--max-tokens",
        "6",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "first answer" in printed and "revision" in printed
    rows = read_rows(out / "sl_cai.jsonl")
    assert [prompt_text(r) for r in rows] == [
        "How do I open a locked door?",
        "Tell me something mean about my boss.",
    ]
    ids = {p.id for p in load_constitution(const).critique_revision}
    for r in rows:
        assert r["rounds"][0]["principle_id"] in ids
        assert r["messages"][1]["content"] == r["revision"]
        assert r["provenance"]["constitution"]["name"] == "helpful-honest-harmless"
        assert r["provenance"]["critic"]["model"] == tiny_llama_dir.name  # no local path
    assert (out / "README.md").is_file()
    first = (out / "sl_cai.jsonl").read_bytes()
    assert main(args) == 0  # the same command again: nothing to do
    assert "labeler calls: 0" in capsys.readouterr().out
    assert (out / "sl_cai.jsonl").read_bytes() == first
    other = tmp_path / "fresh"  # no journal, no cache: seeded sampling gives the same bytes
    assert main([*args[:-1], str(other)]) == 0
    assert (other / "sl_cai.jsonl").read_bytes() == first


def test_demo_bad_prompts_file_exits_2(tmp_path, capsys):
    empty = tmp_path / "p.txt"
    empty.write_text("# nothing\n\n")
    assert main(["demo", "--prompts", str(empty)]) == 2
    assert "no prompts found" in capsys.readouterr().err


def test_installed_console_script_validates():
    script = Path(sys.executable).parent / "rlaif"  # installed beside the interpreter
    assert script.is_file(), "the `rlaif` console script is not installed"
    proc = subprocess.run(
        [str(script), "constitution", "validate", str(REPO / "constitution" / "harmless.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "harmless.yaml: ok" in proc.stdout


@pytest.mark.parametrize("flag", ["--limit", "--rounds", "--max-tokens", "--batch-size"])
def test_demo_rejects_non_positive_numbers(flag, capsys):
    with pytest.raises(SystemExit) as e:
        main(["demo", flag, "0"])
    assert e.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err


def test_demo_negative_temperature_is_a_config_error(capsys):
    assert main(["demo", "--temperature", "-1"]) == 2
    assert "--temperature: Input should be greater than or equal to 0" in capsys.readouterr().err


def test_import_few_shot_files_writes_an_examples_file(tmp_path, capsys):
    out = tmp_path / "paper.yaml"
    src = FIXTURES / "cai_paper"
    files = ["critiques.json", "feedback.json", "critique_fewshot.json", "feedback_fewshot.json"]
    code = main(
        [
            "constitution",
            "import",
            *(str(src / f) for f in files),
            "--format",
            "cai-paper",
            "-o",
            str(out),
        ]
    )
    assert code == 0
    said = capsys.readouterr().out
    assert "3 critique/revision and 2 feedback principles" in said
    assert "3 critique/revision and 3 feedback few-shot examples (in paper.examples.yaml)" in said
    assert "example-request-01" in said  # the principle made from a transcript is reported
    assert (tmp_path / "paper.examples.yaml").is_file()
    assert main(["constitution", "validate", str(out)]) == 0
    assert "3 few-shot examples, 3 feedback examples" in capsys.readouterr().out
    # the transcripts alone also make a valid constitution: examples, never feedback principles
    alone = tmp_path / "alone.yaml"
    assert (
        main(
            [
                "constitution",
                "import",
                str(src / "critique_fewshot.json"),
                "--format",
                "cai-paper",
                "-o",
                str(alone),
            ]
        )
        == 0
    )
    assert "2 critique/revision and 0 feedback principles" in capsys.readouterr().out
    assert main(["constitution", "validate", str(alone)]) == 0


def test_a_command_run_as_the_process_freezes_the_collector_before_exit():
    """The last collections at interpreter exit took ~0.2 s of every command; ``main()`` as the
    process entry point freezes what is alive instead, and leaves an in-process caller alone."""
    import subprocess
    import sys

    from rlaif.resources import default_constitution

    code = (
        "import gc, sys\n"
        "from rlaif.cli import main\n"
        f"args = ['constitution', 'validate', {str(default_constitution())!r}]\n"
        "rc = main(args)\n"
        "print('RESULT', rc, gc.get_freeze_count())\n"
        "sys.argv = ['rlaif', *args]\n"
        "rc = main()\n"
        "print('RESULT', rc, gc.get_freeze_count() > 0)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert [line for line in out if line.startswith("RESULT")] == ["RESULT 0 0", "RESULT 0 True"]
