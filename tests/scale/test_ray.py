"""``--ray``: the same rows as a one-process run, resumable after a kill, and clean shut-down.

The Ray tests start a local Ray instance of 2 CPUs with two actors on the tiny random Llama,
greedy. Greedy tokens do not depend on how the scheduler cut the batches (left padding with the
attention mask), so the one-process run and the two-actor run use the same batch size setting
and must write the same bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlaif.cli import main
from rlaif.errors import ClusterError, LabelerCallError
from rlaif.scale.ray import RaySettings, Role, gpus_wanted, plan

RAY_FLAGS = ["--ray", "local", "--ray-actors", "2", "--ray-set", "num_cpus=2"]
N_PROMPTS = 24


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _command(tiny_llama_dir: Path, prompts: Path, out: str, *extra: str) -> list[str]:
    return [
        "generate", "sl-cai", "--prompts", str(prompts), "--labeler",
        f"transformers:{tiny_llama_dir}", "--rounds", "1", "--max-tokens", "12",
        "--temperature", "0", "--batch-size", "2", "--out", out, *extra,
    ]  # fmt: skip


def _ray_pids() -> set[int]:
    """Processes of any Ray instance on this machine (raylet, GCS, agents, workers)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"ray::" in cmd or b"/site-packages/ray/" in cmd:
            pids.add(int(entry.name))
    return pids


def _no_new_ray_processes(before: set[int], timeout: float = 15.0) -> None:
    deadline = time.time() + timeout
    while (left := _ray_pids() - before) and time.time() < deadline:
        time.sleep(0.2)
    assert not left, f"Ray processes left running: {sorted(left)}"


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(f"Question {i}: how do I do thing {i}?" for i in range(N_PROMPTS)))
    return path


@pytest.fixture(scope="module")
def one_process(tiny_llama_dir: Path, prompts: Path, tmp_path_factory) -> Path:
    """The reference: the same job without Ray, run from its own folder (``out``)."""
    here = tmp_path_factory.mktemp("one")
    cwd = Path.cwd()
    os.chdir(here)
    try:
        assert main(_command(tiny_llama_dir, prompts, "out")) == 0
    finally:
        os.chdir(cwd)
    return here / "out"


# --------------------------------------------------------------------------- without a cluster


def test_ray_not_installed_is_one_line(tiny_llama_dir, prompts, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    assert main(_command(tiny_llama_dir, prompts, str(tmp_path / "out"), "--ray")) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "rlaif: error: --ray needs Ray, which is not installed: pip install 'rlaif[ray]'"
    ]


def test_ray_settings_typo_and_config_key(tiny_llama_dir, prompts, tmp_path, capsys):
    cmd = _command(tiny_llama_dir, prompts, str(tmp_path / "out"), "--ray-set", "num_cpu=2")
    assert main(cmd) == 2
    assert "num_cpu: Extra inputs are not permitted" in capsys.readouterr().err
    cfg = tmp_path / "job.yaml"
    cfg.write_text(f"prompts: {prompts}\nray: auto\nray_settings:\n  cpus_per_actr: 1\n")
    assert main(["generate", "sl-cai", "--config", str(cfg)]) == 2
    assert f"{cfg}:3: ray_settings: bad Ray settings: cpus_per_actr" in capsys.readouterr().err


def test_api_labelers_stay_off_ray(prompts, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    cmd = ["generate", "prefs", "--prompts", str(prompts), "--labeler", "openai:m", "--ray",
           "--out", str(tmp_path / "out")]  # fmt: skip
    assert main(cmd) == 2
    err = capsys.readouterr().err
    assert "API labelers (openai)" in err and "--concurrency" in err


def _role(backend: str, **settings) -> Role:
    return Role(labeler=None, backend=backend, settings=settings)  # type: ignore[arg-type]


def test_plan_sizes_the_pool_from_the_cluster():
    s = RaySettings()
    cpu_nodes = [{"CPU": 8.0}, {"CPU": 4.0}]
    gpu_nodes = [{"CPU": 32.0, "GPU": 4.0}, {"CPU": 32.0, "GPU": 4.0}]
    tf = _role("transformers", model="m", device="auto")
    # transformers on CPUs: one single-threaded actor per CPU
    assert plan([tf], cpu_nodes, s, None).actors == 12
    # on GPUs: one per GPU, one CPU each
    shape = plan([tf], gpu_nodes, s, None)
    assert (shape.actors, shape.cpus, shape.gpus) == (8, 1.0, 1.0)
    # vLLM with tensor parallelism: one actor per tensor_parallel_size GPUs of a node
    tp = _role("vllm", model="m", engine_args={"tensor_parallel_size": 4})
    assert gpus_wanted(tp) == 4
    shape = plan([tp], gpu_nodes, s, None)
    assert (shape.actors, shape.gpus) == (2, 4.0)
    # vLLM on CPUs: one actor per node, holding the smallest node's CPUs
    shape = plan([_role("vllm", model="m")], cpu_nodes, s, None)
    assert (shape.actors, shape.cpus) == (2, 4.0)
    # what the user sets wins; more actors than fit is an error, not a run that waits forever
    assert plan([tf], cpu_nodes, RaySettings(cpus_per_actor=4), None).actors == 3
    assert plan([tf], cpu_nodes, s, 5).actors == 5
    with pytest.raises(ClusterError, match="13 Ray actors asked for, 12 fit"):
        plan([tf], cpu_nodes, s, 13)
    with pytest.raises(ClusterError, match="no Ray node can hold"):
        plan([tf], cpu_nodes, RaySettings(gpus_per_actor=1), None)


def test_cpu_actors_are_counted_by_the_nodes_memory_as_well_as_cpus():
    s = RaySettings()
    gb = 1024**3
    tf = _role("transformers", model="m", device="auto")
    nodes = [{"CPU": 32.0, "memory": 128 * gb}, {"CPU": 8.0, "memory": 64 * gb}]
    # a 7B model in float32 (~28 GB with overhead): 4 copies fit in 128 GB, 2 in 64 GB
    shape = plan([tf], nodes, s, None, memory=28 * gb)
    assert (shape.actors, shape.cpus, shape.memory) == (6, 1.0, 28 * gb)
    # a small model: the CPUs are the limit again
    assert plan([tf], nodes, s, None, memory=1 * gb).actors == 40
    # a node that does not report memory, or a model of unknown size, is counted by CPUs
    assert plan([tf], [{"CPU": 8.0}], s, None, memory=28 * gb).actors == 8
    assert plan([tf], nodes, s, None, memory=None).actors == 40
    # on GPUs the model lives in GPU memory: RAM does not limit the pool
    gpu_nodes = [{"CPU": 32.0, "GPU": 4.0, "memory": 16 * gb}]
    shape = plan([tf], gpu_nodes, s, None, memory=28 * gb)
    assert (shape.actors, shape.memory) == (4, None)
    with pytest.raises(ClusterError, match="5 Ray actors asked for, 4 fit") as e:
        plan([tf], [{"CPU": 32.0, "memory": 128 * gb}], s, 5, memory=28 * gb)
    assert "28.0 GB of memory" in str(e.value) and "memory_per_actor_gb" in str(e.value)
    # not even one copy fits: said in GB, with what to do
    with pytest.raises(ClusterError, match="no Ray node has the memory for a labeler actor") as e:
        plan([tf], nodes, s, None, memory=200 * gb)
    assert "200.0 GB" in str(e.value) and "at most 128.0 GB" in str(e.value)


def test_actor_memory_comes_from_the_weights_on_disk_or_the_setting(tiny_llama_dir):
    from rlaif.scale.ray import GB, MEMORY_OVERHEAD, actor_memory, weights_bytes

    tf = _role("transformers", model=str(tiny_llama_dir))
    size = (tiny_llama_dir / "model.safetensors").stat().st_size
    assert weights_bytes([tf]) == size
    assert weights_bytes([tf, tf]) == 2 * size  # an actor holds every role's model
    assert actor_memory([tf], RaySettings()) == size * MEMORY_OVERHEAD
    assert actor_memory([tf], RaySettings(memory_per_actor_gb=3)) == 3 * GB
    assert actor_memory([_role("transformers", model="/no/such/model")], RaySettings()) is None


def test_an_async_vllm_labeler_goes_to_the_actors_in_whole_batches():
    from rlaif.labelers.base import create_labeler
    from rlaif.scale.ray import RayLabeler

    class Pool:  # the two numbers RayLabeler reads of a pool of two actors
        size = 2

        def acquire(self) -> None:
            pass

    inner = create_labeler("vllm:smollm2", batch_size=16)  # the async engine: one per call
    assert inner.max_batch_size == 1
    on_ray = RayLabeler(Pool(), "labeler", inner)  # type: ignore[arg-type]
    assert (on_ray.max_batch_size, on_ray.max_concurrency) == (16, 2)


def test_actors_load_what_the_driver_resolved(tmp_path, monkeypatch):
    from rlaif import models
    from rlaif.scale.ray import actor_settings

    monkeypatch.chdir(tmp_path)
    (tmp_path / "ckpt").mkdir()
    local = actor_settings("transformers", {"model": "ckpt", "batch_size": 4})
    assert local == {"model": str(tmp_path / "ckpt"), "batch_size": 4}
    assert actor_settings("transformers", {"model": "tiny-random"})["model"] == "tiny-random"
    pinned = models.HubModel("org/model", "main", "0123abcd" * 5, tmp_path)
    monkeypatch.setattr(models, "hub_model", lambda name: pinned if name == "org/model" else None)
    assert actor_settings("vllm", {"model": "org/model"})["model"] == f"org/model@{'0123abcd' * 5}"
    assert actor_settings("vllm", {"model": "org/model"})["engine"] == "sync"  # whole batches
    engine_args = {"tensor_parallel_size": 2}
    tp = actor_settings("vllm", {"model": "tiny-random", "engine_args": engine_args})
    assert tp["engine_args"] == {"tensor_parallel_size": 2, "distributed_executor_backend": "mp"}


# --------------------------------------------------------------------------- a local cluster


def _card(path: Path) -> str:
    return re.sub(r"- [0-9.]+ s wall time", "- (time) s wall time", path.read_text())


@pytest.mark.slow
def test_two_actors_write_the_one_process_bytes(
    tiny_llama_dir, prompts, tmp_path, monkeypatch, one_process
):
    pytest.importorskip("ray")
    before = _ray_pids()
    (tmp_path / "ray").mkdir()
    monkeypatch.chdir(tmp_path / "ray")
    assert main(_command(tiny_llama_dir, prompts, "out", *RAY_FLAGS)) == 0
    out = tmp_path / "ray" / "out"
    assert len((out / "sl_cai.jsonl").read_text().splitlines()) == N_PROMPTS
    assert _sha(out / "sl_cai.jsonl") == _sha(one_process / "sl_cai.jsonl")
    # the card: the same but for the wall time and the command that made it
    one_cmd = "rlaif " + " ".join(_command(tiny_llama_dir, prompts, "out"))
    expected = _card(one_process / "README.md").replace(one_cmd, f"{one_cmd} {' '.join(RAY_FLAGS)}")
    assert _card(out / "README.md") == expected
    _no_new_ray_processes(before)


@pytest.mark.slow
def test_kill_9_of_the_driver_then_rerun(tiny_llama_dir, prompts, tmp_path, one_process):
    pytest.importorskip("ray")
    before = _ray_pids()
    out = tmp_path / "killed"
    cmd = _command(tiny_llama_dir, prompts, str(out), *RAY_FLAGS)
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlaif", *cmd],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,  # its local Ray instance lives in this process group
    )
    partial = out / ".sl_cai.jsonl.partial"
    try:
        deadline = time.time() + 120
        while not (partial.exists() and partial.read_bytes().count(b"\n") >= 2):
            assert proc.poll() is None, f"finished before the kill: {proc.stderr.read()}"
            assert time.time() < deadline, "no rows written in time"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        # a driver killed with -9 leaves some Ray helpers of its local instance behind
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    kept = partial.read_bytes().decode()
    kept = kept[: kept.rfind("\n") + 1].splitlines()
    assert 2 <= len(kept) < N_PROMPTS, f"the kill should land mid-run ({len(kept)} rows)"
    _no_new_ray_processes(before)

    assert main(cmd) == 0
    lines = (out / "sl_cai.jsonl").read_text().splitlines()
    ids = [json.loads(x)["id"] for x in lines]
    assert ids == [f"line-{i}" for i in range(1, N_PROMPTS + 1)]  # once each, in order
    assert lines[: len(kept)] == kept
    assert _sha(out / "sl_cai.jsonl") == _sha(one_process / "sl_cai.jsonl")
    _no_new_ray_processes(before)


@pytest.mark.slow
def test_a_dead_actor_fails_its_call_and_is_restarted(tiny_llama_dir):
    ray = pytest.importorskip("ray")
    from rlaif.labelers.base import GenerateParams, create_labeler, run_sync
    from rlaif.scale.ray import distribute

    before = _ray_pids()
    inner = create_labeler(f"transformers:{tiny_llama_dir}", batch_size=2)
    role = Role(inner, "transformers", {"model": str(tiny_llama_dir), "batch_size": 2})
    settings = {"num_cpus": 1, "max_restarts": 1}
    labeler = distribute("local", 1, settings, {"labeler": role})["labeler"]
    assert labeler.max_concurrency == 1 and labeler.model_name == inner.model_name
    assert labeler.describe() == inner.describe()
    convs = [[{"role": "user", "content": f"Hello there, {name}"}] for name in ("Ann", "Bob")]
    params = GenerateParams(temperature=0, max_tokens=256)
    options = [" (A)", " (B)"]

    async def killed_in_a_call(pid: int) -> LabelerCallError:
        call = asyncio.ensure_future(labeler.generate(convs, params))
        await asyncio.sleep(0.05)  # the call is on its way to the actor
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(LabelerCallError) as died:
            await call
        assert died.value.retryable and not died.value.permanent
        return died.value

    async def scenario() -> tuple[str, str, str, list[list[float]]]:
        try:
            first = (await labeler.generate(convs, params))[0][0].text
            scores = await labeler.option_logprobs(convs, options)
            pid = labeler.pool.where()[0]["pid"]
            died = await killed_in_a_call(pid)
            again = (await labeler.generate(convs, params))[0][0].text  # waits for the restart
            restarted = labeler.pool.where()[0]["pid"]
            assert restarted != pid
            await killed_in_a_call(restarted)  # its last restart (max_restarts=1) is spent
            with pytest.raises(LabelerCallError, match="every Ray labeler actor died") as gone:
                await labeler.generate(convs, params)
            assert gone.value.permanent  # the run stops (resumable) instead of failing rows
            return first, died.reason, again, scores
        finally:
            await labeler.aclose()

    first, reason, again, scores = run_sync(scenario())
    assert reason.startswith("Ray actor died")
    assert again == first
    # what the actor computed is what this process computes with the same model
    assert first == inner.generate_sync(convs, params)[0][0].text
    local = inner.option_logprobs_sync(convs, options)
    assert all(x < 0 for row in scores for x in row)
    assert scores == [pytest.approx(row, abs=1e-4) for row in local]
    assert not ray.is_initialized()  # aclose disconnected what it started
    _no_new_ray_processes(before)


def test_recipe_ray_keys_reach_the_data_stages_not_their_fingerprints(prompts, tmp_path):
    from rlaif.errors import ConfigFileError
    from rlaif.pipeline import RunConfig, fingerprinted, plan
    from rlaif.yamlio import parse_yaml, validate_yaml

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"name: r\nprompts: {prompts}\ntrain_prompts: 8\nout: {tmp_path / 'run'}\n"
        "ray: auto\nray_actors: 3\nprefs:\n  ray_actors: 2\n"
    )
    root, _ = parse_yaml(recipe, ConfigFileError)
    cfg = validate_yaml(RunConfig, root, recipe, ConfigFileError)
    plain = RunConfig(name="r", prompts=prompts, train_prompts=8, out=tmp_path / "run")
    with_ray = {stage.name: stage.settings() for stage in plan(cfg)}
    without = {stage.name: stage.settings() for stage in plan(plain)}
    assert with_ray["sl_cai"]["ray"] == "auto" and with_ray["sl_cai"]["ray_actors"] == 3
    assert with_ray["prefs"]["ray_actors"] == 2  # a stage section's own key wins
    assert "ray" not in with_ray["sft"] and "ray" not in without["sl_cai"]
    for name in without:
        assert fingerprinted(with_ray[name]) == fingerprinted(without[name]), name
    recipe.write_text(f"name: r\nprompts: {prompts}\nray_settings:\n  cpus: 2\n")
    root, _ = parse_yaml(recipe, ConfigFileError)
    with pytest.raises(ConfigFileError, match="bad Ray settings: cpus"):
        validate_yaml(RunConfig, root, recipe, ConfigFileError)
