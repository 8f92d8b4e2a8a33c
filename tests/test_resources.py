"""Shipped files by name: constitutions, prompt sets and recipes resolve from any directory."""

from __future__ import annotations

from rlaif.constitution import load_constitution
from rlaif.data.sources import read_prompts
from rlaif.engine.sl_cai import SLCAIConfig
from rlaif.resources import builtin_dir, locate, shipped_names

from .conftest import REPO


def test_bare_names_resolve_to_shipped_files_and_local_files_win(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nowhere near the source tree
    assert locate("harmless", "constitution") == builtin_dir("constitution") / "harmless.yaml"
    assert locate("quickstart", "recipe").name == "quickstart.yaml"
    assert locate("train/sft", "recipe") == builtin_dir("recipes") / "train" / "sft.yaml"
    assert load_constitution("harmless").name == "harmless"
    assert len(read_prompts("demo_prompts.txt")) == len(read_prompts("demo_prompts"))
    # a config names them the same way
    cfg = SLCAIConfig(prompts="demo_prompts.txt", constitution="helpful-honest-harmless")
    assert cfg.constitution.is_file() and cfg.prompts.is_file()
    # a file of the same name where the user runs always wins
    (tmp_path / "harmless").write_text("name: mine\n")
    assert locate("harmless", "constitution").resolve() == tmp_path / "harmless"
    (tmp_path / "quickstart.yaml").write_text("name: mine\n")  # the name with its suffix, too
    assert locate("quickstart", "recipe").resolve() == tmp_path / "quickstart.yaml"
    # an unknown name stays as given, so the caller's not-found error names it
    assert str(locate("no-such", "recipe")) == "no-such"


def test_shipped_names_list_what_locate_finds():
    assert {"harmless", "helpful-honest-harmless", "evaluation"} <= set(
        shipped_names("constitution")
    )
    assert "examples/harmless" not in shipped_names("constitution")
    assert {"quickstart", "sl-cai", "prefs", "train/sft", "train/ppo"} <= set(
        shipped_names("recipe")
    )
    for name in shipped_names("recipe"):
        assert locate(name, "recipe").is_file()


def test_shipped_recipes_refer_to_shipped_files_by_name_only():
    for recipe in (REPO / "recipes").rglob("*.yaml"):
        for line in recipe.read_text().splitlines():
            setting = line.split("#", 1)[0]
            assert "rlaif/data/" not in setting and "constitution/" not in setting, (recipe, line)
