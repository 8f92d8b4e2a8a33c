"""The one loader for prompt templates: sandboxed Jinja that renders to chat messages.

Prompt text lives only in ``prompts/*.j2``. A template renders to plain text in which a line
``<<<system>>>``, ``<<<user>>>`` or ``<<<assistant>>>`` starts a new message; this keeps templates
readable and lets users write loops (few-shot turns) in Jinja. A trailing assistant message is a
prefill that the model continues (used for multiple-choice answers).

Why these choices:
- ``ImmutableSandboxedEnvironment``: users pass their own templates with ``--templates DIR``; a
  template must not reach Python internals (``''.__class__.__mro__``), nor change the values it is
  given (``examples.append(...)`` would change the few-shot lists kept per principle for every
  later row), so the sandbox refuses both and we turn its ``SecurityError`` into a clear
  ``TemplateSandboxError``.
- ``StrictUndefined``: a misspelt variable is an error naming the template, line and variable,
  never an empty string silently sent to a model.
- Values substituted with ``{{ }}`` can never start a message: ``finalize`` escapes the marker in
  them, so a model output containing ``<<<system>>>`` cannot forge a turn.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, TypedDict

import jinja2
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from rlaif.errors import TemplateError, TemplateSandboxError
from rlaif.resources import builtin_dir

Role = Literal["system", "user", "assistant"]


class Message(TypedDict):
    role: Role
    content: str


TEMPLATE_NAMES = (
    "initial_response",
    "critique",
    "revision",
    "feedback",
    "feedback_cot",
    "score",
    "multiple_choice",
    "classify",
    "red_team",
    "red_team_classify",
)

_MARKER = re.compile(r"^<<<(system|user|assistant)>>>[ \t]*$", re.M)
_ESC = "\ue000"  # private-use character: escapes a marker that arrives inside a variable


def _finalize(value: Any) -> Any:
    if isinstance(value, str) and "<<<" in value:
        return value.replace("<<<", _ESC + "<<<")
    return value


class Templates:
    """Built-in templates, optionally overridden file by file from ``override_dir``."""

    def __init__(self, override_dir: str | Path | None = None):
        self.builtin = builtin_dir("prompts")
        self.override = Path(override_dir) if override_dir is not None else None
        if self.override is not None and not self.override.is_dir():
            raise TemplateError(self.override, "--templates must be an existing directory")
        search = [str(self.override)] if self.override else []
        self.env = ImmutableSandboxedEnvironment(
            loader=jinja2.FileSystemLoader([*search, str(self.builtin)]),
            undefined=jinja2.StrictUndefined,
            finalize=_finalize,
            trim_blocks=True,
            lstrip_blocks=True,
            autoescape=False,
            auto_reload=False,  # a template is compiled once per run, not stat'ed per render
        )
        self._compiled: dict[str, tuple[jinja2.Template, Path]] = {}

    def path(self, name: str) -> Path:
        """The file that provides template ``name`` (the override if there is one)."""
        filename = f"{name}.j2"
        if self.override and (self.override / filename).is_file():
            return self.override / filename
        path = self.builtin / filename
        if not path.is_file():
            raise TemplateError(path, f"no template named '{name}'")
        return path

    def unknown_overrides(self) -> list[str]:
        """Files in the override dir that match no known template (likely typos)."""
        if not self.override:
            return []
        known = {f"{n}.j2" for n in TEMPLATE_NAMES}
        return sorted(p.name for p in self.override.glob("*.j2") if p.name not in known)

    def sha256(self, name: str) -> str:
        return hashlib.sha256(self.path(name).read_bytes()).hexdigest()

    def hashes(self, names: Iterable[str] = TEMPLATE_NAMES) -> dict[str, str]:
        return {n: self.sha256(n) for n in names}

    def _load(self, name: str) -> tuple[jinja2.Template, Path]:
        """The compiled template and its file, looked up once (rendering is on the hot path)."""
        found = self._compiled.get(name)
        if found is not None:
            return found
        path = self.path(name)
        try:
            template = self.env.get_template(f"{name}.j2")
        except jinja2.TemplateSyntaxError as e:
            raise TemplateError(path, f"template syntax error: {e.message}", e.lineno) from None
        self._compiled[name] = (template, path)
        return template, path

    def render(self, name: str, **variables: Any) -> list[Message]:
        """Render template ``name`` to a list of chat messages."""
        template, path = self._load(name)
        try:
            text = template.render(**variables)
        except SecurityError as e:
            raise TemplateSandboxError(
                path, f"sandbox refused unsafe access: {e}", _template_line(e, template)
            ) from None
        except jinja2.UndefinedError as e:
            given = ", ".join(sorted(variables)) or "none"
            raise TemplateError(
                path,
                f"template '{name}' uses an undefined variable: {e.message} "
                f"(variables given: {given})",
                _template_line(e, template),
            ) from None
        except jinja2.TemplateError as e:
            raise TemplateError(path, f"render failed: {e}", _template_line(e, template)) from None
        except Exception as e:  # a filter or method raised inside the template
            raise TemplateError(
                path, f"render failed: {type(e).__name__}: {e}", _template_line(e, template)
            ) from None
        return _split_messages(text, path)


def as_messages(prompt: str | Sequence[Message]) -> list[Message]:
    """A prompt as chat messages: a string is one user message; a conversation is copied (role
    and content only)."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def prompt_variables(prompt: str | Sequence[Message]) -> dict[str, Any]:
    """The template variables of a prompt, one turn or a conversation ending with the person's
    turn: ``prompt`` (the text of that last turn), ``context`` (the turns before it, empty for a
    single turn) and ``conversation`` (every turn, as messages). Templates that show one
    question use ``prompt`` and ``context``; those that show a whole conversation use
    ``conversation``."""
    turns = as_messages(prompt)
    if not turns or turns[-1]["role"] != "user":
        raise ValueError("a conversation prompt must end with the person's (user) turn")
    return {"prompt": turns[-1]["content"], "context": turns[:-1], "conversation": turns}


def _template_line(exc: BaseException, template: jinja2.Template) -> int | None:
    """Jinja rewrites tracebacks so template frames carry the template's own line numbers."""
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == template.filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _split_messages(text: str, path: Path) -> list[Message]:
    parts = _MARKER.split(text)
    preamble, rest = parts[0], parts[1:]
    if preamble.strip():
        raise TemplateError(
            path, "text before the first <<<role>>> marker; every message needs a role line"
        )
    if not rest:
        raise TemplateError(path, "renders no messages: add a line <<<user>>> before the text")
    messages: list[Message] = []
    for role, body in zip(rest[0::2], rest[1::2], strict=True):
        content = body.strip().replace(_ESC + "<<<", "<<<")
        if not content:
            raise TemplateError(path, f"message {len(messages) + 1} ({role}) renders empty")
        if role == "system" and messages:
            raise TemplateError(path, "a system message may only come first")
        messages.append({"role": role, "content": content})  # type: ignore[typeddict-item]
    if messages[-1]["role"] == "system":
        raise TemplateError(path, "the last message must be from the user or an assistant prefill")
    return messages
