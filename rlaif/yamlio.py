"""Line-aware YAML -> pydantic validation, shared by constitutions and config files.

We parse with ruamel.yaml's round-trip loader because it remembers the line of every key and list
item; pydantic's error locations (``("feedback", 3, "instrction")``) are walked back through that
tree so every error names ``file:line``, with a did-you-mean for misspelt keys. Duplicate keys are
errors, not last-one-wins.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from rlaif.errors import ProblemsError

M = TypeVar("M", bound=BaseModel)


def yaml_parser() -> YAML:
    y = YAML(typ="rt")
    y.allow_duplicate_keys = False
    return y


def parse_yaml(path: Path, error: type[ProblemsError]) -> tuple[Any, bytes]:
    """Read and parse ``path``; any problem raises ``error`` with the file and line."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise error(path, [(None, "file not found")]) from None
    except OSError as e:
        raise error(path, [(None, f"cannot read file: {e.strerror}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(path, [(None, f"not UTF-8 text ({e.reason})")]) from None
    try:
        return yaml_parser().load(text), raw
    except MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = (e.problem or e.context or "invalid YAML").strip()
        if "duplicate key" in problem or "found duplicate key" in str(e):
            key = re.search(r'duplicate key "([^"]+)"', str(e))
            problem = f"duplicate key '{key.group(1)}'" if key else "duplicate key"
        raise error(path, [(line, f"invalid YAML: {problem}")]) from None
    except YAMLError as e:
        raise error(path, [(None, f"invalid YAML: {e}")]) from None


def plain(node: Any) -> Any:
    """ruamel's round-trip types (CommentedMap, ScalarFloat, ScalarBoolean, ...) -> plain Python
    values, so that no ruamel object travels on (into pydantic, a config, a saved optimizer)."""
    from ruamel.yaml.scalarbool import ScalarBoolean

    if isinstance(node, dict):
        return {str(k): plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [plain(v) for v in node]
    if isinstance(node, str):
        return str(node)
    if isinstance(node, ScalarBoolean | bool):
        return bool(node)
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    return node


def line_of(root: Any, loc: Sequence[str | int]) -> int | None:
    """The 1-based line of the node at ``loc``, or of its deepest existing ancestor."""
    node, line = root, (root.lc.line + 1 if hasattr(root, "lc") else 1)
    for part in loc:
        if isinstance(node, CommentedMap) and part in node:
            line = node.lc.key(part)[0] + 1
            node = node[part]
        elif isinstance(node, CommentedSeq) and isinstance(part, int) and 0 <= part < len(node):
            line = node.lc.item(part)[0] + 1
            node = node[part]
        else:
            break
    return line


def _describe(err: dict[str, Any], model: type[BaseModel]) -> str:
    loc = err["loc"]
    where = ".".join(str(p) for p in loc[:-1]) if len(loc) > 1 else ""
    prefix = f"in {where}: " if where else ""
    name = str(loc[-1]) if loc else ""
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(model, loc[:-1])
        hint = difflib.get_close_matches(name, allowed, n=1)
        suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
        return f"{prefix}unknown key '{name}'{suggestion}; allowed: {', '.join(allowed)}"
    if err["type"] == "missing":
        return f"{prefix}missing required key '{name}'"
    field = ".".join(str(p) for p in loc)
    msg = err["msg"].removeprefix("Value error, ")
    return f"{field}: {msg}" if field else msg


def _allowed_keys(model: type[BaseModel], loc: Sequence[str | int]) -> list[str]:
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part)
        if field is None:
            return []
        ann = field.annotation
        args = getattr(ann, "__args__", ())
        current = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), ann)
    return list(current.model_fields) if isinstance(current, type) else []


def validate_yaml(model: type[M], root: Any, path: Path, error: type[ProblemsError]) -> M:
    """Validate a parsed YAML tree against ``model``; every problem is reported with its line."""
    try:
        return model.model_validate(plain(root))
    except ValidationError as e:
        problems = [(line_of(root, err["loc"]), _describe(err, model)) for err in e.errors()]
        raise error(path, problems) from None


def load_yaml_model(
    path: str | Path,
    model: type[M],
    error: type[ProblemsError],
    overrides: dict[str, Any] | None = None,
) -> M:
    """Parse a YAML mapping file and validate it against ``model``; ``overrides`` (``--set``,
    dotted keys for nested settings) replace the file's values first. A problem in a key the file
    has names its line; one in an override names the ``--set``."""
    path = Path(path)
    root, _ = parse_yaml(path, error)
    if root is None:
        root = CommentedMap()
    if not isinstance(root, CommentedMap):
        raise error(path, [(1, "expected a YAML mapping of keys")])
    given: set[tuple[str, ...]] = set()
    for dotted, value in (overrides or {}).items():
        keys = tuple(dotted.split("."))
        node = root
        for i, key in enumerate(keys[:-1]):
            if not isinstance(node.get(key), CommentedMap):
                if key in node and node[key] is not None:
                    at = ".".join(keys[: i + 1])
                    raise error(path, [(None, f"--set {dotted}: '{at}' is not a mapping")])
                node[key] = CommentedMap()
            node = node[key]
        node[keys[-1]] = value
        given.add(keys)
    try:
        return model.model_validate(plain(root))
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = tuple(str(x) for x in err["loc"])
            hit = next((k for k in given if loc[: len(k)] == k or k[: len(loc)] == loc), None)
            if hit is not None:
                problems.append((None, f"--set {'.'.join(hit)}: {_describe(err, model)}"))
            else:
                problems.append((line_of(root, err["loc"]), _describe(err, model)))
        raise error(path, problems) from None


def parse_key_values(pairs: Sequence[str], flag: str) -> dict[str, Any]:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}``: ``KEY=VALUE`` flags (``--set``,
    ``--labeler-set``), each value read as YAML (numbers, booleans, lists)."""
    from rlaif.errors import ConfigError

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} expects KEY=VALUE, got {pair!r}")
        out[key.strip()] = YAML(typ="safe").load(value) if value.strip() else ""
    return out
