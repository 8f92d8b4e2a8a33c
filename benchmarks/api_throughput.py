"""SL-CAI throughput against an API server: rlaif vs distilabel, side by side in one run.

A local OpenAI-compatible server (``latency_server.py``: 200 ms per request, 64-token answers,
at most 64 requests at once) serves both. Each tool runs SL-CAI (3 sequential calls per prompt:
response, critique, revision) at N = 200 and N = 1000 prompts. The server's capacity is
64 / 0.2 s / 3 calls = 106.7 prompts/s; we print each tool's prompts/s, the ratio, and rlaif's
share of that limit. Both are timed from the start of the job, after imports.

distilabel runs in its own venv (see ``distilabel_sl_cai.py`` for the two setup commands); pass
its interpreter with ``--distilabel-python`` (default ``.bench/distilabel/bin/python``).
Run: .venv/bin/python benchmarks/api_throughput.py
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


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


def run_rlaif(n: int, url: str, work: Path) -> float:
    from rlaif.engine.sl_cai import SLCAIConfig, run_sl_cai

    prompts = work / f"prompts-{n}.txt"
    prompts.write_text("\n".join(f"prompt {i}" for i in range(n)))
    out = work / f"rlaif-{n}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = SLCAIConfig(
        prompts=prompts,
        labeler="openai:bench",
        labeler_settings={"base_url": url, "concurrency": 64, "api_key_env": "RLAIF_BENCH_KEY"},
        rounds=1,
        max_tokens=64,
        few_shot=False,
        out=out,
    )
    started = time.perf_counter()
    result = asyncio.run(run_sl_cai(cfg, "benchmark"))
    seconds = time.perf_counter() - started
    assert len(result.rows) == n, f"rlaif wrote {len(result.rows)} of {n} rows"
    return seconds


def run_distilabel(python: Path, n: int, url: str) -> float | None:
    if not python.exists():
        return None
    env = {**os.environ, "DISTILABEL_LOG_LEVEL": "WARNING"}
    proc = subprocess.run(
        [str(python.absolute()), str(HERE / "distilabel_sl_cai.py"), str(n), url],
        capture_output=True, text=True, env=env, check=False, cwd=tempfile.gettempdir(),
    )  # fmt: skip
    for line in proc.stdout.splitlines():
        if line.startswith("DISTILABEL"):
            fields = dict(part.split("=") for part in line.split()[1:])
            assert int(fields["rows"]) == n, line
            return float(fields["seconds"])
    raise RuntimeError(f"distilabel failed:\n{proc.stderr[-3000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[200, 1000])
    ap.add_argument("--distilabel-python", type=Path, default=Path(".bench/distilabel/bin/python"))
    args = ap.parse_args()
    os.environ.setdefault("RLAIF_BENCH_KEY", "sk-local")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(HERE / "latency_server.py"), "--port", str(port)]
    )
    limit = 64 / 0.2 / 3
    try:
        wait_ready(port)
        url = f"http://127.0.0.1:{port}/v1"
        with tempfile.TemporaryDirectory() as tmp:
            print(f"server: 200 ms/request, 64 tokens, 64 at once -> limit {limit:.1f} prompts/s")
            for n in args.sizes:
                ours = n / run_rlaif(n, url, Path(tmp))
                theirs_s = run_distilabel(args.distilabel_python, n, url)
                line = (
                    f"N={n:5d}  rlaif {ours:6.1f} prompts/s ({100 * ours / limit:4.1f}% of limit)"
                )
                if theirs_s is None:
                    line += "  distilabel: not installed (see distilabel_sl_cai.py)"
                else:
                    theirs = n / theirs_s
                    line += f"  distilabel {theirs:6.1f} prompts/s  ratio {ours / theirs:.2f}x"
                print(line, flush=True)
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
