"""Where the built-in constitutions and prompt templates live.

They sit at the top of the repository (``constitution/``, ``prompts/``) so users find and copy
them; a wheel carries them as ``rlaif/_data/...`` (hatch ``force-include``). We look in the
installed location first and fall back to the source checkout, so an editable install and a
wheel both work without duplicating the files.
"""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent


def builtin_dir(kind: str) -> Path:
    """The directory holding the built-in ``constitution`` or ``prompts`` files."""
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
