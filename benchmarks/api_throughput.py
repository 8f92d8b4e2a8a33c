"""SL-CAI throughput against an API server: rlaif's CLI, a bare asyncio loop and distilabel.

A local OpenAI-compatible server (``latency_server.py``: 200 ms per request, 64-token answers,
at most 64 requests at once) serves every tool. Each runs SL-CAI (3 sequential calls per prompt:
response, critique, revision) at N = 200 and N = 1000 prompts; the server's capacity is
64 / 0.2 s / 3 calls = 106.7 prompts/s.

What runs, each as its own process, one after the other against the same server:

- ``rlaif generate sl-cai`` exactly as a user types it (the ``rlaif`` script beside this
  interpreter): ``--labeler openai:bench --labeler-set base_url=URL --labeler-set concurrency=64
  --max-tokens 64``, a fresh ``--out`` folder, every other setting at its default (journal,
  SQLite cache, progress display, dataset card), once with the constitution's few-shot examples
  (the default) and once with ``--no-few-shot``;
- ``bare_asyncio_sl_cai.py``: the same three sequential calls per prompt in a bare asyncio +
  openai loop with a semaphore of 64, nothing else, written as the SDK's README shows
  (``AsyncOpenAI().chat.completions.create`` on the SDK's default HTTP transport);
- ``distilabel_sl_cai.py``: three chained ``TextGeneration`` steps in distilabel 1.5.3 (its own
  venv; see that file for the two setup commands; ``--distilabel-python``).

What is timed: the wall time of the whole command, from starting the process to its exit, so
interpreter start-up, imports and writing the output count for every tool alike. prompts/s = N /
that time (rlaif is byte-compiled first, as an installed package is). Beside it, the CPU seconds
(user + system) the command used, which moves less with other load on the machine than wall time
does. distilabel also reports the time of ``pipeline.run`` alone, shown in brackets. Every tool's
output is checked to hold N rows. The load average is printed before and after each run, since
other work on the machine moves the numbers, and each run ends with the goals: at N = 1000, rlaif
(few-shot, the default) at >= 90% of the limit and at least as fast as the bare loop; at N = 200,
>= 2x distilabel.
Run: .venv/bin/python benchmarks/api_throughput.py [--sizes 200 1000] [--repeat 1]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
LIMIT = 64 / 0.2 / 3  # prompts/s: 64 slots, 200 ms a request, 3 requests a prompt


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port: int) -> None:
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("latency server did not start")


def timed(cmd: list[str], cwd: Path) -> tuple[float, float, subprocess.CompletedProcess[str]]:
    """Wall seconds and CPU seconds (user + system) of one command, and its output."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, check=False)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return seconds, cpu, proc


def count_lines(path: Path) -> int:
    with open(path, encoding="utf-8") as f:
        return sum(1 for _ in f)


def rlaif_cli() -> str:
    script = Path(sys.executable).with_name("rlaif")
    if not script.exists():
        raise RuntimeError(f"no rlaif command beside {sys.executable}: pip install -e .")
    return str(script)


def run_rlaif(n: int, url: str, prompts: Path, work: Path, few_shot: bool) -> tuple[float, float]:
    out = work / f"rlaif-{n}-{'fs' if few_shot else 'nofs'}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        rlaif_cli(), "generate", "sl-cai", "--prompts", str(prompts),
        "--labeler", "openai:bench", "--labeler-set", f"base_url={url}",
        "--labeler-set", "concurrency=64", "--max-tokens", "64", "--out", str(out),
    ]  # fmt: skip
    if not few_shot:
        cmd.append("--no-few-shot")
    seconds, cpu, _ = timed(cmd, work)
    rows = count_lines(out / "sl_cai.jsonl")
    assert rows == n, f"rlaif wrote {rows} of {n} rows"
    return seconds, cpu


def run_bare(n: int, url: str, work: Path) -> tuple[float, float]:
    out = work / f"bare-{n}.jsonl"
    cmd = [sys.executable, str(HERE / "bare_asyncio_sl_cai.py"), str(n), url, str(out)]
    seconds, cpu, _ = timed(cmd, work)
    rows = count_lines(out)
    assert rows == n, f"the bare loop wrote {rows} of {n} rows"
    return seconds, cpu


def run_distilabel(python: Path, n: int, url: str, work: Path) -> tuple[float, float, float] | None:
    """Wall and CPU seconds of the command, and the seconds distilabel reports for its run."""
    if not python.exists():
        return None
    seconds, cpu, proc = timed(
        [str(python.absolute()), str(HERE / "distilabel_sl_cai.py"), str(n), url], work
    )
    for line in proc.stdout.splitlines():
        if line.startswith("DISTILABEL"):
            fields = dict(part.split("=") for part in line.split()[1:])
            assert int(fields["rows"]) == n, line
            return seconds, cpu, float(fields["seconds"])
    raise RuntimeError(f"distilabel printed no result:\n{proc.stderr[-3000:]}")


def rate(n: int, seconds: float, cpu: float) -> str:
    share = 100 * n / seconds / LIMIT
    return f"{n / seconds:6.1f} prompts/s ({share:5.1f}%) {seconds:6.2f} s, cpu {cpu:5.2f} s"


def goals(n: int, rlaif_s: float, bare_s: float, distilabel_s: float | None) -> None:
    """The issue's goals for this size, met or not, by how much."""
    if n == 1000:
        share = 100 * n / rlaif_s / LIMIT
        print(f"  goal >= 90% of the limit: {'met' if share >= 90 else 'NOT met'} ({share:.1f}%)")
        ok = rlaif_s <= bare_s
        print(f"  goal >= the bare loop: {'met' if ok else 'NOT met'} ({bare_s / rlaif_s:.2f}x)")
    if n == 200 and distilabel_s is not None:
        x = distilabel_s / rlaif_s
        print(f"  goal >= 2x distilabel: {'met' if x >= 2 else 'NOT met'} ({x:.2f}x)")


def compile_rlaif() -> None:
    """Byte-compiles the rlaif package, as ``pip install`` does when it installs one. An editable
    checkout otherwise compiles its modules from source at every start where Python may not
    write ``__pycache__`` (PYTHONDONTWRITEBYTECODE), which adds about 0.1 s to each command."""
    import compileall

    import rlaif

    compileall.compile_dir(Path(rlaif.__file__).parent, quiet=1)


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[200, 1000])
    ap.add_argument("--repeat", type=int, default=1, help="runs of the whole comparison")
    ap.add_argument("--distilabel-python", type=Path, default=Path(".bench/distilabel/bin/python"))
    ap.add_argument("--no-distilabel", action="store_true")
    args = ap.parse_args()
    compile_rlaif()
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(HERE / "latency_server.py"), "--port", str(port)]
    )
    try:
        wait_ready(port)
        url = f"http://127.0.0.1:{port}/v1"
        print(f"server: 200 ms/request, 64 tokens, 64 at once -> limit {LIMIT:.1f} prompts/s")
        print("timed: wall time of each whole command (start-up, imports, output included)")
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            for run in range(1, args.repeat + 1):
                print(f"run {run}/{args.repeat}, load average {load()}", flush=True)
                for n in args.sizes:
                    prompts = work / f"prompts-{n}.txt"
                    prompts.write_text("\n".join(f"prompt {i}" for i in range(n)) + "\n")
                    fs = run_rlaif(n, url, prompts, work, few_shot=True)
                    nofs = run_rlaif(n, url, prompts, work, few_shot=False)
                    bare = run_bare(n, url, work)
                    dl = None if args.no_distilabel else run_distilabel(
                        args.distilabel_python, n, url, work
                    )  # fmt: skip
                    print(f"N={n}")
                    print(f"  rlaif CLI, few-shot     {rate(n, *fs)}")
                    print(f"  rlaif CLI, no few-shot  {rate(n, *nofs)}")
                    print(f"  bare asyncio loop       {rate(n, *bare)}")
                    if dl is None:
                        print("  distilabel              not run (see distilabel_sl_cai.py)")
                    else:
                        print(f"  distilabel 1.5.3        {rate(n, *dl[:2])} [run {dl[2]:.2f} s]")
                    ratio = f"  rlaif few-shot / bare loop {bare[0] / fs[0]:.2f}x"
                    ratio += f", no few-shot / bare loop {bare[0] / nofs[0]:.2f}x"
                    if dl is not None:
                        ratio += f", few-shot / distilabel {dl[0] / fs[0]:.2f}x"
                    print(ratio, flush=True)
                    goals(n, fs[0], bare[0], None if dl is None else dl[0])
                print(f"load average after run {run}: {load()}", flush=True)
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
