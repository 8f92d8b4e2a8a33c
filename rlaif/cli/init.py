"""``rlaif init DIR``: a starter project a user edits, made from the files rlaif ships.

Users change rlaif by editing files, never code: the constitution, the prompt templates and the
recipe. ``init`` copies the shipped ones into a folder and points the recipe at the copies, so
the first edit a user makes is to their own file and shows up in the next run. Nothing is
overwritten: an existing file is an error unless ``--force``.
"""

from __future__ import annotations

import argparse
from io import StringIO
from pathlib import Path

from rlaif.errors import ConfigError
from rlaif.resources import builtin_dir, demo_prompts, locate

README = """\
# {name}

A Constitutional AI project made by `rlaif init`. Edit the files, then run:

    rlaif run recipe.yaml                  # the whole loop: SL-CAI, SFT, feedback, RM, RL, eval
    rlaif run recipe.yaml --set sft.max_steps=20 --set rl.settings.kl_coef=0.1
    rlaif generate sl-cai --config sl-cai.yaml
    rlaif constitution validate constitution/harmless.yaml

- `constitution/harmless.yaml`: the principles (critique/revision for SL-CAI, multiple-choice
  feedback for RL-CAI); `constitution/examples/harmless.yaml` holds its few-shot examples.
- `templates/*.j2`: the prompt templates (sandboxed Jinja); the recipes use this folder.
- `data/prompts.txt`: the prompts, one a line; any format rlaif reads works (JSONL, CSV, parquet,
  hh-rlhf, a saved dataset).
- `recipe.yaml`: the run recipe (models, sizes, per-stage settings); `sl-cai.yaml`: settings of
  `rlaif generate sl-cai`.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "init",
        help="write a starter project (constitution, templates, prompts, recipes) to edit",
        description="Copy the shipped constitution, prompt templates, demo prompts and the "
        "quickstart recipe into DIR, with the recipes pointing at the copies. Edit them, then "
        "`cd DIR && rlaif run recipe.yaml`.",
    )
    p.add_argument("dir", type=Path, metavar="DIR")
    p.add_argument("--force", action="store_true", help="overwrite files that exist")
    p.set_defaults(func=run)


def _recipe(source: Path, **paths: str) -> str:
    """A shipped recipe with its file settings pointed at the project's copies (comments kept)."""
    from rlaif.yamlio import yaml_parser

    y = yaml_parser()
    y.width = 100
    root = y.load(source.read_text(encoding="utf-8"))
    for key, value in paths.items():
        root[key] = value
    buf = StringIO()
    y.dump(root, buf)
    return buf.getvalue()


def run(args: argparse.Namespace) -> int:
    root: Path = args.dir
    constitution = builtin_dir("constitution")
    files: dict[Path, bytes] = {
        root / "constitution" / "harmless.yaml": (constitution / "harmless.yaml").read_bytes(),
        root / "constitution" / "examples" / "harmless.yaml": (
            constitution / "examples" / "harmless.yaml"
        ).read_bytes(),
        root / "data" / "prompts.txt": demo_prompts().read_bytes(),
    }
    from rlaif.templates import TEMPLATE_NAMES

    for name in TEMPLATE_NAMES:  # the ones --templates overrides (not the labelers' own)
        template = builtin_dir("prompts") / f"{name}.j2"
        files[root / "templates" / template.name] = template.read_bytes()
    own = {"constitution": "constitution/harmless.yaml", "prompts": "data/prompts.txt"}
    recipe = _recipe(locate("quickstart", "recipe"), **own, templates="templates")
    recipe = recipe.replace("rlaif run quickstart", "rlaif run recipe.yaml")
    files[root / "recipe.yaml"] = recipe.encode()
    files[root / "sl-cai.yaml"] = _recipe(
        locate("sl-cai", "recipe"), **own, templates="templates", out="outputs/sl-cai"
    ).encode()
    files[root / "README.md"] = README.format(name=root.resolve().name).encode()
    existing = [str(f) for f in files if f.exists()]
    if existing and not args.force:
        raise ConfigError(
            f"{len(existing)} file(s) exist, e.g. {existing[0]}: nothing written "
            "(--force overwrites)"
        )
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    print(f"wrote a starter project to {root} ({len(files)} files):")
    print(f"  cd {root} && rlaif run recipe.yaml   (or: rlaif demo --limit 2)")
    return 0
