"""``rlaif review OUT_DIR``: read an output folder's datasets in a local web page and label a
sample; ``rlaif review export OUT_DIR --gold F --prefs F``: the labels as gold and human
preference files."""

from __future__ import annotations

import argparse
from pathlib import Path

LOCAL = ("127.0.0.1", "localhost")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "review",
        help="read the datasets in a local web page and label a sample by hand",
        usage="rlaif review [export] OUT_DIR [options]",
        description="`rlaif review OUT_DIR` serves a page over the datasets of an output folder "
        "or run folder (SL-CAI, preferences, red-team prompts, policy eval samples): filters, "
        "search, each row with its critiques, revisions and word diff, each pair side by side; "
        "keyboard labelling (1/2/=/s, j/k) with the AI's label hidden until you answer, and "
        "human-AI agreement with 95% intervals. Labels go to OUT_DIR/review.sqlite; the "
        "datasets are never written. `rlaif review export OUT_DIR --gold FILE --prefs FILE` "
        "writes the labels as a gold file for `rlaif eval labeler --gold` and as human "
        "preference pairs for a reward model or DPO `mix` entry.",
    )
    p.add_argument("words", nargs="+", metavar="[export] OUT_DIR", help="the output folder")
    s = p.add_argument_group("serving")
    s.add_argument("--port", type=int, default=8000, help="port (8000)")
    s.add_argument(
        "--host", default="127.0.0.1",
        help="address to listen on (127.0.0.1); any other needs the printed token",
    )  # fmt: skip
    s.add_argument("--sample", type=int, metavar="N", help="label a random sample of N rows")
    s.add_argument("--seed", type=int, default=0, help="the sample's seed (0)")
    e = p.add_argument_group("export")
    e.add_argument("--gold", type=Path, metavar="FILE", help="gold pairs for eval labeler")
    e.add_argument("--prefs", type=Path, metavar="FILE", help="human preference pairs (mix)")
    e.add_argument("--labeler", metavar="NAME", help="export only this person's labels")
    p.set_defaults(func=run, parser=p)


def run(args: argparse.Namespace) -> int:
    from rlaif.errors import ReviewError

    words = args.words
    if words[0] == "export" and len(words) == 2:
        return export(Path(words[1]), args)
    if len(words) != 1 or words[0] == "export":
        raise ReviewError("usage: rlaif review OUT_DIR, or rlaif review export OUT_DIR --gold F")
    if args.gold or args.prefs or args.labeler:
        raise ReviewError("--gold, --prefs and --labeler belong to `rlaif review export OUT_DIR`")
    if args.sample is not None and args.sample < 1:
        raise ReviewError("--sample takes a number of rows, at least 1")
    return serve(Path(words[0]), args)


def serve(folder: Path, args: argparse.Namespace) -> int:
    from rlaif.review.folder import open_folder
    from rlaif.review.server import create_app, new_token, serve

    rf = open_folder(folder, args.sample, args.seed)
    local = args.host in LOCAL
    token = None if local else new_token()
    app = create_app(rf, token=token, local=local)
    kinds = ", ".join(f"{d.name} ({d.kind})" for d in rf.datasets)
    shown = (
        f"a sample of {len(rf.items)} of {rf.total} rows (seed {rf.seed})"
        if rf.sample_size
        else f"{rf.total} rows"
    )
    print(f"rlaif review: {shown} from {kinds}")
    print(f"labels go to {rf.store.path}")
    where = "127.0.0.1" if local else args.host
    url = f"http://{where}:{args.port}/" + (f"?token={token}" if token else "")
    if token:
        print(f"listening on {args.host}: anyone with this address (token included) can label")
    print(f"open {url}", flush=True)
    serve(app, args.host, args.port)
    return 0


def export(folder: Path, args: argparse.Namespace) -> int:
    from rlaif.data.outputs import find_datasets
    from rlaif.errors import ReviewError
    from rlaif.review.export import write_gold, write_prefs
    from rlaif.review.folder import open_folder

    if not args.gold and not args.prefs:
        raise ReviewError("rlaif review export: give --gold FILE and/or --prefs FILE")
    from rlaif.review.storage import FILE_NAME

    if not (folder / FILE_NAME).is_file():
        find_datasets(folder)  # a folder without datasets says so first
        raise ReviewError(
            f"{folder / FILE_NAME}: no labels yet; label with `rlaif review {folder}`"
        )
    rf = open_folder(folder)
    labels = rf.store.current()
    for flag, write in (("gold", write_gold), ("prefs", write_prefs)):
        target = getattr(args, flag)
        if target is None:
            continue
        done = write(target, rf.by_key, labels, rf.dataset_paths, args.labeler)
        left = ", ".join(f"{k}: {n}" for k, n in done.left_out.items())
        print(
            f"wrote {done.rows} {flag} rows to {done.path}"
            + (f" (left out: {left})" if left else "")
        )
    return 0
