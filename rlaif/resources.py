"""Where the built-in constitutions, prompt templates and recipes live, and how names find them.

They sit at the top of the repository (``constitution/``, ``prompts/``, ``recipes/``) so users
find and copy them; a wheel carries them as ``rlaif/_data/...`` (hatch ``force-include``). We
look in the installed location first and fall back to the source checkout, so an editable
install and a wheel both work without duplicating the files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator

_PKG = Path(__file__).resolve().parent


def builtin_dir(kind: str) -> Path:
    """The directory holding the built-in ``constitution``, ``prompts`` or ``recipes`` files."""
    for candidate in (_PKG / "_data" / kind, _PKG.parent / kind):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"rlaif's built-in '{kind}' directory is missing from the install")


def default_constitution() -> Path:
    return builtin_dir("constitution") / "harmless.yaml"


def demo_prompts() -> Path:
    return _PKG / "data" / "demo_prompts.txt"


def evaluation_constitution() -> Path:
    """The yes/no questions and the helpfulness comparison of the evaluation."""
    return builtin_dir("constitution") / "evaluation.yaml"


def data_file(name: str) -> Path:
    """A prompt set shipped with rlaif (``benign_prompts.txt``, ``sycophancy_probes.txt``)."""
    return _PKG / "data" / name


# what a bare name refers to, per kind: the folder of shipped files and the suffix to try
_SHIPPED = {
    "constitution": (lambda: builtin_dir("constitution"), ".yaml"),
    "prompts": (lambda: _PKG / "data", ".txt"),
    "recipe": (lambda: builtin_dir("recipes"), ".yaml"),
}


def locate(value: str | Path, kind: str) -> Path:
    """A path as given when it exists; otherwise the shipped file of that name, if there is one
    (``harmless`` -> the built-in ``constitution/harmless.yaml``, ``demo_prompts.txt`` -> the demo
    prompts, ``quickstart`` or ``train/sft`` -> a shipped recipe). Recipes and configs refer to
    shipped files this way, so they work from any directory and from an installed wheel. A local
    file of the same name always wins."""
    path = Path(value)
    folder_of, suffix = _SHIPPED[kind]
    if path.exists() or path.is_absolute():
        return path
    if path.suffix != suffix and Path(f"{path}{suffix}").is_file():  # quickstart.yaml, here
        return Path(f"{path}{suffix}")
    try:
        folder = folder_of()
    except FileNotFoundError:
        return path
    for candidate in (folder / path, folder / f"{path}{suffix}"):
        if candidate.is_file():
            return candidate
    return path


def shipped_names(kind: str) -> list[str]:
    """Names ``locate`` resolves for ``kind`` (for error messages and ``rlaif init``)."""
    folder_of, suffix = _SHIPPED[kind]
    try:
        folder = folder_of()
    except FileNotFoundError:
        return []
    found = folder.rglob(f"*{suffix}") if kind == "recipe" else folder.glob(f"*{suffix}")
    files = sorted(p for p in found if p.is_file())
    return [str(p.relative_to(folder))[: -len(suffix)] for p in files]


def _located(kind: str) -> Any:
    return AfterValidator(lambda p: locate(p, kind))


# config fields naming a constitution or prompt file: a shipped name works as well as a path
ConstitutionPath = Annotated[Path, _located("constitution")]
PromptsPath = Annotated[Path, _located("prompts")]
