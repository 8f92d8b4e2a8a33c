"""``rlaif models list``: which local models and labeler backends are available."""

from __future__ import annotations

import argparse
import importlib.util

from rich.console import Console
from rich.table import Table

from rlaif.labelers.base import aliases, backends
from rlaif.models import list_models

# The optional package each backend needs, to say whether it is usable here.
_BACKEND_NEEDS = {
    "transformers": "transformers",
    "openai": "openai",
    "anthropic": "anthropic",
    "vllm": "vllm",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list local models and labeler backends")
    cmds = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = cmds.add_parser("list", help="show embedded models, their cache, and labeler backends")
    ls.set_defaults(func=list_)


def list_(args: argparse.Namespace) -> int:
    console = Console()
    t = Table(title="embedded models (no download: shipped inside a PyPI package)")
    for col in ("name", "model", "installed", "converted cache"):
        t.add_column(col, overflow="fold")
    for m in list_models():
        installed = "yes" if m["installed"] else f"no: {m['install']}"
        cache = m["cache"] if m["converted"] else "not yet (converted on first use)"
        t.add_row(m["name"], m["title"], installed, cache)
    console.print(t)
    b = Table(title="labeler backends (--labeler NAME or BACKEND:MODEL)")
    b.add_column("name")
    b.add_column("usable here")
    for name in sorted(backends()):
        need = _BACKEND_NEEDS.get(name)
        ok = need is None or importlib.util.find_spec(need) is not None
        b.add_row(name, "yes" if ok else f"no: pip install {need}")
    for alias, (backend, settings) in sorted(aliases().items()):
        b.add_row(alias, f"alias for {backend} {settings}")
    console.print(b)
    return 0
