"""``rlaif init`` (a starter project to edit) and ``rlaif run RECIPE --set KEY=VALUE``."""

from __future__ import annotations

import pytest

from rlaif.cli import main
from rlaif.constitution import load_constitution
from rlaif.errors import ConfigFileError
from rlaif.pipeline import RunConfig
from rlaif.resources import locate
from rlaif.yamlio import load_yaml_model


def test_init_writes_a_project_whose_recipes_use_its_own_files(tmp_path, monkeypatch, capsys):
    project = tmp_path / "proj"
    assert main(["init", str(project)]) == 0
    assert "wrote a starter project" in capsys.readouterr().out
    monkeypatch.chdir(project)
    cfg = load_yaml_model("recipe.yaml", RunConfig, ConfigFileError)
    # the recipe points at the copies, so an edit there is what the next run uses
    assert cfg.constitution.resolve() == project / "constitution" / "harmless.yaml"
    assert cfg.prompts.resolve() == project / "data" / "prompts.txt"
    assert cfg.templates is not None and (cfg.templates / "critique.j2").is_file()
    # only what --templates overrides: the labelers' prefill instruction is not a project file
    assert not (cfg.templates / "prefill_instruction.j2").exists()
    const = load_constitution("constitution/harmless.yaml")
    assert len(const.few_shot) == 2  # the examples file came along
    assert main(["run", "recipe.yaml", "--list"]) == 0
    assert "sl_cai     not run" in capsys.readouterr().out
    assert main(["constitution", "validate", "constitution/harmless.yaml"]) == 0
    # a second init refuses to overwrite the user's edits
    (project / "data" / "prompts.txt").write_text("my own prompt\n")
    assert main(["init", str(project)]) == 2
    assert "nothing written (--force overwrites)" in capsys.readouterr().err
    assert (project / "data" / "prompts.txt").read_text() == "my own prompt\n"


def test_run_set_overrides_nested_keys():
    recipe = locate("quickstart", "recipe")
    sets = {"sft.learning_rate": 1e-5, "rl.settings.kl_coef": 0.1, "train_prompts": 5}
    cfg = load_yaml_model(recipe, RunConfig, ConfigFileError, sets)
    assert cfg.sft["learning_rate"] == 1e-5 and cfg.sft["max_steps"] == 6  # the rest is kept
    assert cfg.rl.settings["kl_coef"] == 0.1 and cfg.rl.settings["steps"] == 4
    assert cfg.train_prompts == 5
    new = load_yaml_model(recipe, RunConfig, ConfigFileError, {"eval_prompts": "benign_prompts"})
    assert new.eval_prompts is not None and new.eval_prompts.name == "benign_prompts.txt"


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "sft.learning_rte=1e-5",
            "--set sft.learning_rte: sft: unknown key 'learning_rte' (did you mean "
            "'learning_rate'?)",
        ),
        ("rl.settings.kl_coeff=0.1", "--set rl.settings.kl_coeff: rl: unknown key 'kl_coeff'"),
        ("train_prompt=3", "--set train_prompt: unknown key 'train_prompt' (did you mean"),
        ("name.sub=1", "--set name.sub: 'name' is not a mapping"),
        (
            "prefs.feedback.few_shoot=false",
            "--set prefs.feedback.few_shoot: prefs: in feedback: unknown key 'few_shoot' (did you "
            "mean 'few_shot'?)",
        ),
    ],
)
def test_run_set_typos_are_errors_naming_the_override(override, message, capsys):
    assert main(["run", "quickstart", "--set", override, "--list"]) == 2
    err = capsys.readouterr().err
    assert message in err and "quickstart.yaml" in err


def test_a_typo_in_the_file_still_names_its_line(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(
        "name: t\nprompts: demo_prompts.txt\nsft:\n  max_steps: 2\nrl:\n  algoritm: ppo\n"
    )
    assert main(["run", str(path), "--set", "sft.max_steps=3", "--list"]) == 2
    assert f"{path}:6: in rl: unknown key 'algoritm'" in capsys.readouterr().err
