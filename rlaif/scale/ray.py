"""``--ray``: the labeler calls of a job run in Ray actors; everything else stays on the driver.

What goes where. The driver (the ``rlaif generate`` process) keeps all it keeps in a one-process
run: it reads the prompts, runs each row's steps, batches requests in the ``Scheduler``, answers
from the SQLite cache, writes rows in input order through the journal, and writes the dataset
and card. Only the labeler calls travel: ``RayLabeler`` implements the ``Labeler`` protocol, and
each call it gets (a batch the scheduler already formed) goes to an idle actor of a pool; each
actor holds the real local labeler (transformers on CPU or a GPU, vLLM on a GPU node), built from
the same backend settings. ``RayLabeler`` reports the driver-side labeler's ``backend``,
``model_name``, ``describe()`` and ``max_batch_size``, with ``max_concurrency`` = the number of
actors, so cache keys, provenance and the card are those of a one-process run, the journal's
fingerprint is the same (a run killed under ``--ray`` resumes with or without it), and the output
does not know how it was computed.

Why actors and not Ray Data's ``map_batches``: a row is several dependent calls (answer ->
critique -> revision, each needing the last; samples -> scores), and which calls are needed at
all is decided by the cache and the journal as the run goes. ``map_batches`` suits one static
map over a dataset; here the driver's scheduler already forms batches from whatever rows are
waiting, and a pool of actors only has to compute them. So one journal, one cache and one dataset
exist, all on the driver, and resuming after a kill is the one-process resume.

Roles share actors: when the policy is a different model from the labeler, each actor holds
both, so the two never compete for the cluster's resources (two pools each sized to the whole
cluster would leave half their actors waiting forever). An API labeler (``max_concurrency`` > 1:
it already runs requests concurrently, and holds a key) stays on the driver.

Models resolve as on the driver: a local folder is passed as its absolute path (on several
machines it must exist at that path on every node: a shared filesystem), a Hub id is pinned to
the commit the driver resolved (``ORG/NAME@<sha>``, fetched through each node's own Hub cache),
and the built-in names are built on each node.

Failures. A labeler error inside an actor comes back as it is (a ``LabelerCallError`` fails its
row; any other ``RlaifError`` stops the run with its message). An actor that dies fails the call
it held with a retryable ``LabelerCallError`` (its rows fail, a rerun retries them): a batch that
kills its actor (out of memory) then costs its rows, not the run. Ray restarts the actor
(``max_restarts``) and its next call waits for the restart; an actor Ray gave up on leaves the
pool, and when none is left the failure is permanent and the run stops (``EndpointError``),
resumable. ``aclose`` kills the actors and, if this process connected to Ray, disconnects
(``ray.shutdown``, which also stops a local instance started here), after an error as after
success.

Sizing the pool (``plan``): on GPUs one actor per GPU (per ``tensor_parallel_size`` GPUs for
vLLM). On CPUs, one transformers actor per CPU, but each actor holds its own copy of every role's
model in RAM: a 7B model in float32 is ~28 GB, so one actor per CPU on a 32-CPU, 128 GB node would
be killed for memory one by one. So CPU actors are also counted by memory: each asks Ray for
``weights on disk x MEMORY_OVERHEAD`` bytes (float32 upcast of 16-bit weights, activations, the
KV cache, torch itself; ``memory_per_actor_gb`` overrides the estimate), a node holds as many as
its Ray ``memory`` resource allows, and when no node can hold one the error says so, in GB.

Sampling: each batch is seeded, so a sampled answer depends on the batch it was computed in (and
on torch's thread count); more actors keep more rows in flight and cut other batches, so sampled
runs are reproducible for the same pool but differ from a one-process run, as with another batch
size. Greedy answers do not depend on the batch: it is padded on the left under an attention
mask, and the tests compare a two-actor run with a one-process run byte for byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rlaif.errors import ClusterError, ConfigError, LabelerCallError, RlaifError
from rlaif.labelers.base import Conversation, GenerateParams, Labeler, create_labeler

INSTALL_HINT = "pip install 'rlaif[ray]'"
RESTART_TIMEOUT_S = 300.0  # a restarted actor that does not answer by then leaves the pool
# passed to the actors' environment where set on the driver (never keys or tokens)
_FORWARD_ENV = (
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_HUB_DISABLE_TELEMETRY",
    "HF_UPDATE_DOWNLOAD_COUNTS",
    "TRANSFORMERS_VERBOSITY",
)


class RaySettings(BaseModel):
    """``--ray-set KEY=VALUE`` / ``ray_settings:`` (a typo is an error)."""

    model_config = ConfigDict(extra="forbid")

    num_cpus: int | None = Field(default=None, ge=1, description="CPUs of a local instance")
    num_gpus: int | None = Field(default=None, ge=0, description="GPUs of a local instance")
    cpus_per_actor: float | None = Field(default=None, gt=0)
    gpus_per_actor: float | None = Field(default=None, ge=0)
    max_restarts: int = Field(default=3, ge=0, description="restarts of an actor that died")
    memory_per_actor_gb: float | None = Field(
        default=None, gt=0, description="RAM of one CPU actor (default: from the model's size)"
    )


def check_settings(values: dict[str, Any]) -> RaySettings:
    try:
        return RaySettings(**values)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()
        )
        raise ConfigError(f"bad Ray settings: {problems}") from None


@dataclass(frozen=True)
class Role:
    """One labeler of a job: the driver's own (for identity) and how an actor builds its twin."""

    labeler: Labeler
    backend: str
    settings: dict[str, Any]


# --------------------------------------------------------------------------- the actor


class LabelerActor:
    """Runs in a Ray worker process: builds each role's labeler on first use and computes the
    batches it is sent. Results go back tagged (``("ok", value)`` or an error's fields), so an
    error crosses the process boundary as the same typed error, whatever pickling it allows."""

    def __init__(self, roles: dict[str, tuple[str, dict[str, Any]]]):
        self.roles = roles
        self.labelers: dict[str, Any] = {}

    def _labeler(self, role: str) -> Any:
        if role not in self.labelers:
            backend, settings = self.roles[role]
            self.labelers[role] = create_labeler(backend, **settings)
        return self.labelers[role]

    async def generate(
        self, role: str, conversations: Sequence[Conversation], params: GenerateParams
    ) -> tuple[Any, ...]:
        try:
            return ("ok", await self._labeler(role).generate(conversations, params))
        except Exception as e:
            return _tag(e)

    async def option_logprobs(
        self, role: str, conversations: Sequence[Conversation], options: Sequence[str]
    ) -> tuple[Any, ...]:
        try:
            return ("ok", await self._labeler(role).option_logprobs(conversations, options))
        except Exception as e:
            return _tag(e)

    def where(self) -> dict[str, Any]:
        import ray

        return {"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id()}


def _tag(e: Exception) -> tuple[Any, ...]:
    if isinstance(e, LabelerCallError):
        return ("call", e.reason, e.attempts, e.retryable, e.permanent)
    if isinstance(e, RlaifError):
        return ("rlaif", str(e), e.exit_code)
    return ("error", "".join(traceback.format_exception(e)))


def _untag(result: tuple[Any, ...]) -> Any:
    kind = result[0]
    if kind == "ok":
        return result[1]
    if kind == "call":
        _, reason, attempts, retryable, permanent = result
        raise LabelerCallError(reason, attempts, retryable, permanent)
    if kind == "rlaif":
        error = RlaifError(result[1])
        error.exit_code = result[2]
        raise error
    raise RuntimeError(f"the labeler failed in a Ray actor:\n{result[1]}")


# --------------------------------------------------------------------------- sizing


def actor_model(name: str) -> str:
    """The model name an actor loads: the driver's resolution, pinned (see the module doc)."""
    from rlaif.models import EMBEDDED, TINY_RANDOM, hub_model

    if name in EMBEDDED or name == TINY_RANDOM:
        return name
    hub = hub_model(name)
    if hub is not None:
        return f"{hub.repo_id}@{hub.commit}"
    return str(Path(name).expanduser().resolve())


LOCAL_BACKENDS = ("transformers", "vllm")  # computed in actors (vLLM's async engine included)


def actor_settings(backend: str, settings: dict[str, Any]) -> dict[str, Any]:
    out = dict(settings)
    if isinstance(out.get("model"), str):
        out["model"] = actor_model(out["model"])
    if backend == "vllm":
        # an actor gets one batch at a time from the pool: vLLM's sync engine computes it whole
        out["engine"] = "sync"
    engine_args = dict(out.get("engine_args") or {})
    if backend == "vllm" and int(engine_args.get("tensor_parallel_size", 1)) > 1:
        # inside an actor, vLLM's workers are processes on the GPUs Ray gave the actor
        engine_args.setdefault("distributed_executor_backend", "mp")
        out["engine_args"] = engine_args
    return out


def gpus_wanted(role: Role) -> int:
    """GPUs one copy of the role's model wants where the cluster has GPUs."""
    if role.backend == "vllm":
        return int((role.settings.get("engine_args") or {}).get("tensor_parallel_size", 1))
    device = str(role.settings.get("device", "auto"))
    return 1 if device == "auto" or device.startswith("cuda") else 0


# RAM one CPU actor needs per byte of weights on disk: 16-bit files load as float32 on CPU (x2),
# plus activations, the KV cache, and torch's own memory
MEMORY_OVERHEAD = 2.5
GB = 1024**3


def weights_bytes(roles: list[Role]) -> int | None:
    """Bytes of the weight files of every role's model (an actor holds them all); None when a
    model's size cannot be known here (the actors then are not counted by memory)."""
    from rlaif.models import resolve_model

    total = 0
    for role in roles:
        model = role.settings.get("model")
        if not isinstance(model, str):
            return None
        try:
            path = resolve_model(model)
        except RlaifError:
            return None
        files = [*path.glob("*.safetensors"), *path.glob("*.bin")]
        if not files:
            return None
        total += sum(f.stat().st_size for f in files)
    return total


def actor_memory(roles: list[Role], s: RaySettings) -> float | None:
    """Bytes of RAM one CPU actor asks Ray for: ``memory_per_actor_gb``, or the models' weights
    times ``MEMORY_OVERHEAD``; None when unknown."""
    if s.memory_per_actor_gb is not None:
        return s.memory_per_actor_gb * GB
    size = weights_bytes(roles)
    return None if size is None else size * MEMORY_OVERHEAD


@dataclass(frozen=True)
class Shape:
    actors: int
    cpus: float
    gpus: float
    memory: float | None = None  # bytes of RAM each actor asks for (CPU actors)


def plan(
    roles: list[Role],
    nodes: list[dict[str, float]],
    s: RaySettings,
    n: int | None,
    memory: float | None = None,
) -> Shape:
    """How many actors, and what each asks Ray for, from the alive nodes' resources: one actor
    per GPU (per ``tensor_parallel_size`` GPUs for vLLM) where there are GPUs; on CPUs one
    transformers actor per CPU (torch then runs one thread each) and one vLLM actor per node,
    and on CPUs no more actors on a node than its RAM (Ray's ``memory`` resource) holds copies
    of the model at ``memory`` bytes each."""
    if not nodes:
        raise ClusterError("the Ray cluster has no alive nodes")
    any_gpus = any(node.get("GPU", 0) > 0 for node in nodes)
    gpus = s.gpus_per_actor
    if gpus is None:
        gpus = float(max(gpus_wanted(r) for r in roles)) if any_gpus else 0.0
    cpus = s.cpus_per_actor
    per_node = None  # at most this many actors on one node
    if cpus is None:
        vllm_on_cpu = gpus == 0 and any(r.backend == "vllm" for r in roles)
        cpus = min(node.get("CPU", 0) for node in nodes) if vllm_on_cpu else 1.0
        cpus = max(cpus, 1.0)
        per_node = 1 if vllm_on_cpu else None
    ram = memory if gpus == 0 else None  # on GPUs the model lives in GPU memory
    fits = sum(min(_fits(node, cpus, gpus, ram), per_node or 1 << 30) for node in nodes)
    total = (sum(node.get("CPU", 0) for node in nodes), sum(node.get("GPU", 0) for node in nodes))
    have = f"the cluster has {total[0]:g} CPUs and {total[1]:g} GPUs"
    asks = f"an actor asks for {cpus:g} CPUs and {gpus:g} GPUs"
    if ram is not None:
        most = max(node.get("memory", 0) for node in nodes) / GB
        have += f", at most {most:.1f} GB of memory for tasks on a node"
        asks += f" and {ram / GB:.1f} GB of memory (its copy of the model)"
    if fits == 0:
        if ram is not None and all(_fits(node, cpus, gpus, None) for node in nodes):
            raise ClusterError(
                f"no Ray node has the memory for a labeler actor: {asks}; {have}. Use a node "
                "with more memory or a smaller model, or set memory_per_actor_gb with --ray-set "
                "if the estimate is too high"
            )
        raise ClusterError(f"no Ray node can hold a labeler actor: {asks}; {have}")
    if n is not None and n > fits:
        raise ClusterError(
            f"{n} Ray actors asked for, {fits} fit ({asks}; {have}); lower --ray-actors or "
            "set cpus_per_actor / gpus_per_actor / memory_per_actor_gb with --ray-set"
        )
    return Shape(n or fits, cpus, gpus, ram)


def _fits(node: dict[str, float], cpus: float, gpus: float, memory: float | None) -> int:
    counts = [node.get("CPU", 0) // cpus]
    if gpus > 0:
        counts.append(node.get("GPU", 0) // gpus)
    if memory is not None and "memory" in node:  # a node that does not say is not limited
        counts.append(node["memory"] // memory)
    return int(min(counts))


# --------------------------------------------------------------------------- the driver side


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ClusterError(f"--ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def _why(e: BaseException) -> str:
    """Ray's reason for a failed connection, with the first sentence of its cause."""
    text = str(e)
    if e.__cause__ is not None:
        text = f"{text}: {str(e.__cause__).split('. ')[0]}"
    return text


class ActorPool:
    """K actors, each used by one call at a time; shared by the roles of one job."""

    def __init__(
        self, address: bool | str, actors: int | None, s: RaySettings, roles: dict[str, Role]
    ):
        ray = import_ray()
        self._ray = ray
        self.connected_here = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {
                "include_dashboard": False,
                "log_to_driver": False,
                "logging_level": logging.WARNING,
            }
            if isinstance(address, str):
                kwargs["address"] = address
            if s.num_cpus is not None:
                kwargs["num_cpus"] = s.num_cpus
            if s.num_gpus is not None:
                kwargs["num_gpus"] = s.num_gpus
            where = address if isinstance(address, str) else "a local instance"
            try:
                ray.init(**kwargs)
            except (ConnectionError, ValueError, RuntimeError) as e:
                raise ClusterError(f"cannot start or reach Ray ({where}): {_why(e)}") from None
            self.connected_here = True
        try:
            nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
            memory = actor_memory(list(roles.values()), s)  # plan counts it for CPU actors
            self.shape = plan(list(roles.values()), nodes, s, actors, memory)
            env = {k: os.environ[k] for k in _FORWARD_ENV if k in os.environ}
            asks: dict[str, Any] = {}
            if self.shape.memory is not None:  # Ray then never packs more onto a node
                asks["memory"] = int(self.shape.memory)
            remote = ray.remote(LabelerActor).options(
                num_cpus=self.shape.cpus,
                num_gpus=self.shape.gpus,
                **asks,
                max_restarts=s.max_restarts,
                scheduling_strategy="SPREAD",
                runtime_env={"env_vars": env} if env else None,
            )
            built = {
                name: (r.backend, actor_settings(r.backend, r.settings))
                for name, r in roles.items()
            }
            self.actors = [remote.remote(built) for _ in range(self.shape.actors)]
        except BaseException:
            self._disconnect()
            raise
        self._alive = len(self.actors)
        self._recovering: set[int] = set()  # died in a call: ping before the next one
        self._idle: asyncio.Queue[int] = asyncio.Queue()
        for i in range(len(self.actors)):
            self._idle.put_nowait(i)
        self._users = 0
        self.closed = False

    @property
    def size(self) -> int:
        return len(self.actors)

    async def call(self, method: str, role: str, *args: Any) -> Any:
        """One labeler call on an idle actor. The call in flight when its actor dies fails
        (retryable: its rows fail, a rerun retries them); the actor's next call waits for Ray's
        restart of it. An actor Ray gave up on (``max_restarts``) leaves the pool."""
        i = await self._take()
        try:
            result = await getattr(self.actors[i], method).remote(role, *args)
        except self._ray.exceptions.RayTaskError:
            self._idle.put_nowait(i)
            raise  # a bug in the actor's own code, not a labeler failure
        except self._ray.exceptions.RayError as e:
            self._recovering.add(i)
            self._idle.put_nowait(i)
            text = str(e).strip()
            first = text.splitlines()[0] if text else type(e).__name__
            raise LabelerCallError(f"Ray actor died: {first}", 1, True) from None
        self._idle.put_nowait(i)
        return _untag(result)

    async def _take(self) -> int:
        while True:
            i = await self._idle.get()
            if i < 0:  # no actor left
                self._idle.put_nowait(i)
                raise LabelerCallError("every Ray labeler actor died", 1, False, permanent=True)
            if i not in self._recovering:
                return i
            if await self._revived(i):
                self._recovering.discard(i)
                return i
            self._alive -= 1
            if self._alive == 0:
                self._idle.put_nowait(-1)

    async def _revived(self, i: int) -> bool:
        """Wait for a restarted actor to answer; False when Ray gave up on it."""
        errors = self._ray.exceptions
        deadline = time.monotonic() + RESTART_TIMEOUT_S
        while True:
            try:
                await self.actors[i].where.remote()
                return True
            except errors.ActorUnavailableError:  # restarting
                if time.monotonic() > deadline:
                    return False
                await asyncio.sleep(0.2)
            except errors.RayError:
                return False

    def where(self) -> list[dict[str, Any]]:
        """Pid and node of every actor (diagnostics)."""
        return self._ray.get([a.where.remote() for a in self.actors])

    def acquire(self) -> None:
        self._users += 1

    def release(self) -> None:
        self._users -= 1
        if self._users <= 0:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for actor in self.actors:
            with contextlib.suppress(Exception):  # already gone
                self._ray.kill(actor)
        self._disconnect()

    def _disconnect(self) -> None:
        if self.connected_here and self._ray.is_initialized():
            self._ray.shutdown()


class RayLabeler:
    """The ``Labeler`` a job's scheduler sees under ``--ray``: the identity of the driver's
    labeler, the compute of the pool's actors."""

    def __init__(self, pool: ActorPool, role: str, inner: Labeler):
        self.pool = pool
        self.role = role
        self.inner = inner
        self.backend = inner.backend
        self.supports_logprobs = inner.supports_logprobs
        self.retries = 0
        self.cost = inner.cost
        self._closed = False
        pool.acquire()

    @property
    def model_name(self) -> str:
        return self.inner.model_name

    @property
    def max_batch_size(self) -> int:
        # the batch an actor computes (a driver-side async vLLM labeler asks for one at a time)
        settings = getattr(self.inner, "settings", None)
        return getattr(settings, "batch_size", None) or self.inner.max_batch_size

    @property
    def max_concurrency(self) -> int:
        return self.pool.size

    @property
    def prefers_whole_stages(self) -> bool:
        return False

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()

    async def generate(
        self, conversations: Sequence[Conversation], params: GenerateParams
    ) -> list[list[Any]]:
        return await self.pool.call("generate", self.role, list(conversations), params)

    async def option_logprobs(
        self, conversations: Sequence[Conversation], options: Sequence[str]
    ) -> list[list[float]]:
        convs, opts = list(conversations), list(options)
        return await self.pool.call("option_logprobs", self.role, convs, opts)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self.pool.release()
        await self.inner.aclose()


def distribute(
    address: bool | str, actors: int | None, settings: dict[str, Any], roles: dict[str, Role]
) -> dict[str, Labeler]:
    """Each role's labeler for the job: a ``RayLabeler`` for a local model (all of them on one
    pool of actors), the driver's own labeler for an API backend."""
    s = check_settings(settings)
    local = {
        name: r
        for name, r in roles.items()
        if r.backend in LOCAL_BACKENDS or r.labeler.max_concurrency == 1
    }
    if not local:
        backends = ", ".join(sorted({r.backend for r in roles.values()}))
        raise ConfigError(
            f"--ray runs local models (transformers, vllm) in Ray actors; this job's labelers "
            f"are API labelers ({backends}), which already send requests concurrently: "
            "drop --ray and raise --concurrency instead"
        )
    pool = ActorPool(address, actors, s, local)
    return {
        name: RayLabeler(pool, name, r.labeler) if name in local else r.labeler
        for name, r in roles.items()
    }
