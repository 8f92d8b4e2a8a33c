"""SL-CAI and preferences at 10^3, 10^4 and 10^5 prompts through the CLI: does rlaif scale linearly?

Each command runs as its own process, exactly as a user types it (``python -m rlaif generate
sl-cai|prefs ... --labeler openai:bench --labeler-set base_url=URL``), against the tests' fake
OpenAI server (``tests/labelers/fake_openai_server.py``: no latency, an echo of the last message,
log-probs for the preference questions), which runs in a thread of this process, so the engine
does all the work a real run does (templates, HTTP, cache, journal, card) and nothing waits on a
model. SL-CAI runs one critique-revision round; prefs compares 2 responses per prompt in both
orders. For each N and each command:

- **fresh**: a new output folder; wall time of the whole command (start-up and imports included)
  and prompts/s; the peak RSS of that process alone (see ``LAUNCHER``); the sizes on disk of
  the dataset (the journal, renamed when complete), the SQLite cache (with its WAL) and the
  whole folder, per prompt;
- **cached**: the same command into a new folder with ``--cache`` the first run's cache, so every
  answer comes from rlaif's cache (checked: the server sees no request);
- **resume**: a new folder; the command is killed with SIGKILL once its journal holds N/2 rows,
  then run again and timed to completion; the output must hold every prompt exactly once
  (asserted).

Then two checks, printed met / NOT met: "linear" (the per-prompt wall time of the fresh run within
2x, and every per-prompt size within 1.25x, of those at the smallest N) and "RSS flat" (the
peak RSS at the largest N within 1.5x of that at the one before: 10^5 against 10^4). The load
average is printed before and after each N, since other work on the machine moves the times.

Run: .venv/bin/python benchmarks/scale.py [--n 1000 10000 100000] [--only sl-cai prefs] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from tests.labelers.fake_openai_server import FakeOpenAIServer  # noqa: E402

STEPS = ("fresh", "cached", "resume")
OUTPUT = {"sl-cai": "sl_cai.jsonl", "prefs": "preferences.jsonl"}
TOPICS = (
    "pick a lock on my own front door",
    "make my neighbour's dog stop barking at night",
    "write a polite complaint to my landlord",
    "get back at a coworker who humiliated me",
    "store petrol safely in a garage",
    "find out where someone lives from their phone number",
    "explain how vaccines are tested",
    "calm down before a job interview",
)


class _Discard(list):
    """The fake server keeps every request for the tests; at 10^5 prompts that is gigabytes."""

    def append(self, item: object) -> None:
        pass


@dataclass
class Run:
    seconds: float = 0.0
    rss_mb: float = 0.0
    requests: int = 0


@dataclass
class Result:
    command: str
    n: int
    fresh: Run = field(default_factory=Run)
    cached: Run = field(default_factory=Run)
    killed_at: int = 0
    killed_after: float = 0.0
    resume: Run = field(default_factory=Run)
    dataset_bytes: int = 0
    cache_bytes: int = 0
    folder_bytes: int = 0


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def write_prompts(path: Path, n: int) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(f"Request {i}: how do I {TOPICS[i % len(TOPICS)]}? Please be specific.\n")


def cli(command: str, prompts: Path, url: str, out: Path, cache: Path | None = None) -> list[str]:
    cmd = [
        sys.executable, "-m", "rlaif", "generate", command, "--prompts", str(prompts),
        "--labeler", "openai:bench", "--labeler-set", f"base_url={url}",
        "--labeler-set", "concurrency=64", "--max-tokens", "64", "--out", str(out),
    ]  # fmt: skip
    if cache is not None:
        cmd += ["--cache", str(cache)]
    return cmd


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), e.get("PYTHONPATH")]))
    e.setdefault("OPENAI_API_KEY", "sk-bench")
    return e


# Linux starts a process's peak RSS (``ru_maxrss``) from the peak of the address space it was
# exec'd from: a command spawned by this benchmark, whose own RSS grows with the fake server's
# work, would report at least this process's RSS, whatever it used itself. So each command is
# spawned by a small launcher (a bare interpreter, ~10 MB), which writes the command's wait4
# rusage to a file and exits with its status.
LAUNCHER = """
import os, sys
pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(str(usage.ru_maxrss))
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def peak_file(log: Path) -> Path:
    """Where the launcher writes the peak RSS (kilobytes) of the command it ran last."""
    return log.with_name("peak-rss-kb")


def spawn(cmd: list[str], out: object, log: Path) -> subprocess.Popen[bytes]:
    """Starts ``cmd`` through the launcher, in a session of its own (so a kill reaches both)."""
    launcher = [sys.executable, "-I", "-S", "-c", LAUNCHER, str(peak_file(log)), *cmd]
    return subprocess.Popen(
        launcher, stdout=out, stderr=subprocess.STDOUT, env=env(), cwd=ROOT, start_new_session=True
    )


def run(cmd: list[str], log: Path, server: FakeOpenAIServer) -> Run:
    before = sum(server.served.values())
    started = time.perf_counter()
    with open(log, "ab") as out:
        code = spawn(cmd, out, log).wait()
    seconds = time.perf_counter() - started
    if code != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"exit {code}: {' '.join(cmd)}\n{tail}")
    rss = int(peak_file(log).read_text()) / 1024  # Linux: kilobytes
    return Run(seconds, rss, sum(server.served.values()) - before)


def run_killed(cmd: list[str], journal: Path, half: int, log: Path) -> tuple[int, float]:
    """Starts the command and SIGKILLs it once the journal holds ``half`` rows: (rows, seconds)."""
    started = time.perf_counter()
    rows, offset = 0, 0
    with open(log, "ab") as out:
        proc = spawn(cmd, out, log)
        try:
            while proc.poll() is None:
                if journal.exists():
                    with open(journal, "rb") as f:
                        f.seek(offset)
                        chunk = f.read()
                    offset += len(chunk)
                    rows += chunk.count(b"\n")
                    if rows >= half:
                        os.killpg(proc.pid, signal.SIGKILL)
                        break
                time.sleep(0.05)
        finally:
            proc.wait()
    if proc.returncode == 0:
        raise RuntimeError(f"the run finished before it was killed at {half} rows")
    return rows, time.perf_counter() - started


def check_once(dataset: Path, n: int, command: str) -> None:
    """Every prompt exactly once (prefs: one pair per prompt), in input order."""
    ids = []
    with open(dataset, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            ids.append(row["prompt_id"] if command == "prefs" else row["id"])
    expected = [f"line-{i + 1}" for i in range(n)]
    assert ids == expected, (
        f"{dataset}: {len(ids)} rows, {len(set(ids))} distinct, expected {n} once each in order"
    )


def size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.is_file())


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure(command: str, n: int, prompts: Path, url: str, work: Path, server: FakeOpenAIServer,
            log: Path, steps: list[str]) -> Result:  # fmt: skip
    result = Result(command, n)
    out = work / f"{command}-{n}"
    name = OUTPUT[command]
    result.fresh = run(cli(command, prompts, url, out), log, server)
    check_once(out / name, n, command)
    result.dataset_bytes = (out / name).stat().st_size
    result.cache_bytes = size(out / "cache.sqlite")
    result.folder_bytes = folder_size(out)
    print(f"  {command} fresh {result.fresh.seconds:.1f} s", flush=True)

    if "cached" in steps:
        measure_cached(result, prompts, url, work, server, log)
    if "resume" in steps:
        measure_resume(result, prompts, url, work, server, log)
    return result


def measure_cached(result: Result, prompts: Path, url: str, work: Path, server: FakeOpenAIServer,
                   log: Path) -> None:  # fmt: skip
    command, n, name = result.command, result.n, OUTPUT[result.command]
    out = work / f"{command}-{n}"
    cached_out = work / f"{command}-{n}-cached"
    result.cached = run(cli(command, prompts, url, cached_out, out / "cache.sqlite"), log, server)
    check_once(cached_out / name, n, command)
    assert result.cached.requests == 0, f"cached rerun sent {result.cached.requests} requests"
    print(f"  {command} cached {result.cached.seconds:.1f} s", flush=True)
    remove_files(cached_out)


def measure_resume(result: Result, prompts: Path, url: str, work: Path, server: FakeOpenAIServer,
                   log: Path) -> None:  # fmt: skip
    command, n, name = result.command, result.n, OUTPUT[result.command]
    resume_out = work / f"{command}-{n}-resume"
    cmd = cli(command, prompts, url, resume_out)
    result.killed_at, result.killed_after = run_killed(
        cmd, resume_out / f".{name}.partial", n // 2, log
    )
    result.resume = run(cmd, log, server)
    check_once(resume_out / name, n, command)
    print(
        f"  {command} killed at {result.killed_at} rows after {result.killed_after:.1f} s, "
        f"resumed in {result.resume.seconds:.1f} s",
        flush=True,
    )
    remove_files(resume_out)


def remove_files(folder: Path) -> None:
    for p in folder.glob("*"):
        p.unlink() if p.is_file() else None


def table(results: list[Result]) -> None:
    head = (
        f"{'command':7} {'N':>7} {'fresh s':>8} {'prompts/s':>9} {'ms/prompt':>9} "
        f"{'peak RSS':>9} {'dataset':>9} {'cache':>9} {'folder':>9} {'B/prompt':>9} "
        f"{'cached s':>8} {'kill@':>7} {'resume s':>8} {'resume RSS':>10}"
    )
    print(head)
    for r in results:
        print(
            f"{r.command:7} {r.n:>7} {r.fresh.seconds:8.1f} {r.n / r.fresh.seconds:9.1f} "
            f"{1000 * r.fresh.seconds / r.n:9.2f} {r.fresh.rss_mb:7.0f}MB "
            f"{r.dataset_bytes / 1e6:7.1f}MB {r.cache_bytes / 1e6:7.1f}MB "
            f"{r.folder_bytes / 1e6:7.1f}MB {r.folder_bytes / r.n:9.0f} "
            f"{_s(r.cached.seconds, 8, '.1f')} {_s(r.killed_at, 7, 'd')} "
            f"{_s(r.resume.seconds, 8, '.1f')} {_s(r.resume.rss_mb, 8, '.0f')}MB"
        )


def _s(value: float, width: int, spec: str) -> str:
    return f"{value:{width}{spec}}" if value else f"{'-':>{width}}"


def checks(results: list[Result]) -> None:
    for command in OUTPUT:
        rs = sorted((r for r in results if r.command == command), key=lambda r: r.n)
        if len(rs) < 2:
            continue
        base = rs[0]
        worst_time = max((r.fresh.seconds / r.n) / (base.fresh.seconds / base.n) for r in rs)
        worst_size = max(
            max(
                (r.dataset_bytes / r.n) / (base.dataset_bytes / base.n),
                (r.cache_bytes / r.n) / (base.cache_bytes / base.n),
                (r.folder_bytes / r.n) / (base.folder_bytes / base.n),
            )
            for r in rs
        )
        ok = worst_time <= 2 and worst_size <= 1.25
        print(
            f"{command}: linear (per-prompt time within 2x, sizes within 1.25x of N={base.n}): "
            f"{'met' if ok else 'NOT met'} (time {worst_time:.2f}x, sizes {worst_size:.2f}x)"
        )
        last, before = rs[-1], rs[-2]
        for label, a, b in (
            ("fresh", last.fresh.rss_mb, before.fresh.rss_mb),
            ("resume", last.resume.rss_mb, before.resume.rss_mb),
        ):
            if not (a and b):
                continue
            x = a / b
            print(
                f"{command}: RSS flat ({label}, peak at N={last.n} within 1.5x of N={before.n}): "
                f"{'met' if x <= 1.5 else 'NOT met'} ({a:.0f} MB vs {b:.0f} MB, {x:.2f}x)"
            )


def compile_rlaif() -> None:
    """Byte-compiles rlaif first, as an installed package is."""
    import compileall

    compileall.compile_dir(ROOT / "rlaif", quiet=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[1000, 10_000, 100_000])
    ap.add_argument("--only", nargs="+", choices=sorted(OUTPUT), default=list(OUTPUT))
    ap.add_argument(
        "--steps", nargs="+", choices=STEPS, default=list(STEPS), help="fresh always runs"
    )
    ap.add_argument(
        "--keep", type=Path, help="work here and keep the folders (default: a temp dir)"
    )
    args = ap.parse_args()
    compile_rlaif()
    results: list[Result] = []
    with FakeOpenAIServer() as server, tempfile.TemporaryDirectory() as tmp:
        server.requests = _Discard()
        server.headers = _Discard()
        work = (args.keep or Path(tmp)).absolute()
        work.mkdir(parents=True, exist_ok=True)
        log = work / "commands.log"
        print(f"fake OpenAI server (no latency) at {server.url}; {os.cpu_count()} CPUs; log {log}")
        for n in sorted(args.n):
            prompts = work / f"prompts-{n}.txt"
            write_prompts(prompts, n)
            print(f"N={n}, load average {load()}", flush=True)
            for command in args.only:
                results.append(
                    measure(command, n, prompts, server.url, work, server, log, args.steps)
                )
                remove_files(work / f"{command}-{n}")
            print(f"N={n} done, load average {load()}", flush=True)
        print()
        table(results)
        print()
        checks(results)


if __name__ == "__main__":
    main()
