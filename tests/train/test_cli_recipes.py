"""``rlaif train`` from the command line, the shipped recipes and the accelerate configs."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rlaif.cli import main
from rlaif.cli.train import KINDS
from rlaif.train.common import load_recipe

from ..conftest import REPO


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_shipped_recipes_are_valid(kind):
    import importlib

    module, config, _, _ = KINDS[kind]
    cfg = load_recipe(getattr(importlib.import_module(module), config), REPO / "recipes" /
                      "train" / f"{kind}.yaml")  # fmt: skip
    assert str(cfg.output_dir).startswith("outputs/run/")


def test_accelerate_configs_are_yaml_with_a_distributed_type():
    from ruamel.yaml import YAML

    found = {}
    for path in sorted((REPO / "recipes" / "accelerate").glob("*.yaml")):
        found[path.stem] = YAML(typ="safe").load(path.read_text())["distributed_type"]
    assert found == {"ddp": "MULTI_GPU", "fsdp": "FSDP", "single_gpu": "NO", "zero3": "DEEPSPEED"}


def test_train_sft_from_the_command_line(tiny_llama_dir, sl_cai_file, tmp_path, capsys):
    recipe = tmp_path / "sft.yaml"
    recipe.write_text(f"model: {tiny_llama_dir}\ndataset: {sl_cai_file}\nuse_cpu: true\n")
    out = tmp_path / "sft"
    sets = ["max_steps=2", f"output_dir={out}", "per_device_train_batch_size=2"]
    code = main(["train", "sft", "--config", str(recipe), *(f"--set={s}" for s in sets)])
    assert code == 0
    assert (out / "model.safetensors").is_file() and (out / "metrics.jsonl").is_file()
    assert "loss.png" in capsys.readouterr().out.replace("\n", "").replace(" ", "")


def test_train_recipe_typo_exits_2(tmp_path, capsys):
    recipe = tmp_path / "ppo.yaml"
    recipe.write_text("steps: 2\nkl_coeff: 0.1\n")
    assert main(["train", "ppo", "--config", str(recipe)]) == 2
    assert (
        f"{recipe}:2: unknown key 'kl_coeff' (did you mean 'kl_coef'?)" in capsys.readouterr().err
    )


def test_module_entry_point_for_accelerate_launch(tmp_path):
    recipe = tmp_path / "rm.yaml"
    recipe.write_text("learning_rat: 1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "rlaif.train.reward", "--config", str(recipe)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and "unknown key 'learning_rat'" in proc.stderr
