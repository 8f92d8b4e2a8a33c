"""An in-process OpenAI-compatible HTTP server with fault injection, for tests.

It answers ``POST /v1/chat/completions`` on 127.0.0.1 with a deterministic reply (an echo of the
last message), and, at a set rate or on a script, fails the way real servers do: 429 with
Retry-After, 500, a hang past the client's timeout, malformed JSON, or a body cut short; and, for
the fail-fast tests, the permanent answers "401" (the key, echoed in the message as careless
servers do), "403" and "404" (an unknown model). Real HTTP over loopback, so the openai SDK's
whole stack is exercised; only the model is fake.

A multiple-choice question (a last person's turn holding ``(A) ...`` and ``(B) ...``) is answered
by its content: the fake prefers the option whose text sorts last (``"echo: x #1"`` over
``"echo: x #0"``), with P = 0.8 in its top log-probs, or naming it in a sampled answer, so soft
labels, the chosen side and both orders can be checked exactly. ``no_option_if(request)`` makes
the answer name no option at all (top tokens that are no label, text that names none).

``strict=True`` enforces what current provider models accept, by model id, the way the providers
answer (a 400 naming the parameter): OpenAI reasoning models (``o1``..., ``gpt-5``...) refuse
``max_tokens``, a non-default ``temperature``/``top_p`` and ``logprobs``; Claude Sonnet 4.5 and
Opus 4.1 refuse ``temperature`` with ``top_p``; Opus 4.7 refuses either; Claude 5 refuses
non-default sampling; Claude 4.6 and later refuse an assistant prefill. These rules are this
file's own, written from the providers' documentation, not rlaif's table.

``caching=True`` makes the server bill like a provider with prompt caching, and count tokens over
the whole prompt (off, it counts the words of the last turn, as the older tests expect). Tokens
are approximated as 4 characters each, rounded up (``fake_tokens``), per text block (Anthropic)
or over the whole prompt (OpenAI). Anthropic: a prefix is read from the cache only up to a
``cache_control`` breakpoint whose exact prefix (model, system and messages up to and including
the marked block) an earlier request wrote; a breakpoint whose prefix reaches the model's minimum
cacheable length (``cache_min_tokens``, default the provider's value for the model, from its
documentation) writes it; shorter ones are not cached, as the API does, and more than 4
breakpoints are refused with a 400. ``usage`` then says ``input_tokens`` (the rest),
``cache_read_input_tokens`` and ``cache_creation_input_tokens``. There is no expiry (the real
cache lives 5 minutes from its last use) and no look-back for hits before a breakpoint. OpenAI:
every prompt's prefixes of 1024 tokens (``cache_min_tokens``), 1152, 1280, ... (128-token steps)
are cached; a later prompt starting with one of them reports the longest as
``prompt_tokens_details.cached_tokens`` (part of ``prompt_tokens``). ``refuse_fields`` makes the
server refuse those request fields with a 400 naming them, as servers that forbid unknown fields
do ("Extra inputs are not permitted"): top-level fields on the OpenAI path (vLLM's answer),
``cache_control`` in any block on the Anthropic path.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FAULTS = ("429", "500", "hang", "garbage", "truncated")


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # the default backlog of 5 drops bursts of connections
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that time out close their end; a broken pipe here is expected


class FakeOpenAIServer:
    def __init__(
        self,
        fault_rate: float = 0.0,
        faults: tuple[str, ...] = FAULTS,
        script: list[str] | None = None,
        seed: int = 0,
        retry_after: str = "0",
        retry_after_ms: str | None = None,
        hang_seconds: float = 2.0,
        latency: float = 0.0,
        strict: bool = False,
        caching: bool = False,
        cache_min_tokens: int | None = None,
    ):
        self.strict = strict
        self.caching = caching
        self.cache_min_tokens = cache_min_tokens
        self.refuse_fields: set[str] = set()  # request fields refused with a 400 naming them
        self.cache_keys: Counter[str] = Counter()  # prompt_cache_key values received
        self.answered_usage: list[dict[str, Any]] = []  # the usage of each answer, in order
        self._prompt_cache: set[str] = set()
        self.refused: list[str] = []  # the parameters strict mode refused, one per 400
        self.fault_rate = fault_rate
        self.faults = faults
        self.script = list(script or [])  # faults to serve first, in order ("ok" = no fault)
        self.rng = random.Random(seed)
        self.retry_after = retry_after
        self.retry_after_ms = retry_after_ms
        self.hang_seconds = hang_seconds
        self.latency = latency
        self.served: Counter[str] = Counter()
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.permanent: str | None = None  # "500", "401", ...: fail every request that way
        self.fail_if: Any = None  # request -> bool: these requests always get a 500
        self.echo_prefill = False  # anthropic: start the answer with the assistant prefill
        self.no_option_if: Any = None  # request -> bool: the answer names no option
        # request -> None or the provider's stop reason for the answer ("content_filter",
        # "tool_calls" for OpenAI; "refusal", "tool_use" for Anthropic)
        self.stop_reason_if: Any = None
        self.votes_served: Counter[str] = Counter()  # per question (the conversation)
        self.in_flight = 0
        self.peak_in_flight = 0
        self._lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def root_url(self) -> str:
        """For SDKs that add ``/v1/...`` themselves (anthropic)."""
        return self.url[: -len("/v1")]

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> FakeOpenAIServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _pick_fault(self, request: dict[str, Any]) -> str:
        with self._lock:
            if self.fail_if is not None and self.fail_if(request):
                return "500"
            if self.permanent:
                return self.permanent
            if self.script:
                return self.script.pop(0)
            if self.rng.random() < self.fault_rate:
                return self.rng.choice(self.faults)
            return "ok"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None,
                      length: int | None = None) -> None:  # fmt: skip
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body) if length is None else length))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                request = json.loads(self.rfile.read(length) or b"{}")
                with server._lock:
                    server.requests.append(request)
                    server.headers.append({k.lower(): v for k, v in self.headers.items()})
                    server.in_flight += 1
                    server.peak_in_flight = max(server.peak_in_flight, server.in_flight)
                try:
                    self._answer(request)
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def _answer(self, request: dict[str, Any]) -> None:
                refused = server.refusal(self.path, request)
                if refused is not None:
                    return self._send(400, json.dumps(refused).encode())
                if server.strict:
                    refusal = strict_refusal(self.path, request)
                    if refusal is not None:
                        param, body = refusal
                        with server._lock:
                            server.refused.append(param)
                        return self._send(400, json.dumps(body).encode())
                fault = server._pick_fault(request)
                server.served[fault] += 1
                if server.latency:
                    time.sleep(server.latency)
                if fault == "429":
                    err = b'{"error": {"message": "slow down", "type": "rate_limit"}}'
                    wait = {"Retry-After": server.retry_after}
                    if server.retry_after_ms is not None:
                        wait["retry-after-ms"] = server.retry_after_ms
                    return self._send(429, err, wait)
                if fault == "401":
                    key = self.headers.get("Authorization", "").removeprefix("Bearer ")
                    key = key or self.headers.get("x-api-key", "")
                    err = {
                        "error": {
                            "message": f"Incorrect API key provided: {key}.",
                            "type": "invalid_request_error",
                            "code": "invalid_api_key",
                        }
                    }
                    return self._send(401, json.dumps(err).encode())
                if fault == "403":
                    return self._send(403, b'{"error": {"message": "not allowed in your region"}}')
                if fault == "404":
                    err = {
                        "error": {
                            "message": f"The model `{request.get('model')}` does not exist",
                            "type": "invalid_request_error",
                        }
                    }
                    return self._send(404, json.dumps(err).encode())
                if fault == "500":
                    return self._send(500, b'{"error": {"message": "boom"}}')
                if fault == "400":
                    return self._send(400, b'{"error": {"message": "bad request"}}')
                if fault == "hang":
                    time.sleep(server.hang_seconds)
                    return self._send(500, b'{"error": {"message": "late"}}')
                if fault == "garbage":
                    return self._send(200, b"<html>not json at all")
                stop = server.stop_reason_if(request) if server.stop_reason_if else None
                if self.path.endswith("/messages"):
                    answer = server.anthropic_message(request)
                    if stop:
                        answer["stop_reason"] = stop
                else:
                    no_option = bool(server.no_option_if and server.no_option_if(request))
                    answer = server.openai_completion(request, no_option)
                    for choice in answer["choices"] if stop else []:
                        choice["finish_reason"] = stop
                with server._lock:
                    server.answered_usage.append(answer["usage"])
                body = json.dumps(answer).encode()
                if fault == "truncated":
                    self._send(200, body[: len(body) // 2], length=len(body))
                    self.close_connection = True
                    return None
                return self._send(200, body)

        return Handler


def _anthropic_message(server: FakeOpenAIServer, request: dict[str, Any]) -> dict[str, Any]:
    """Anthropic Messages format. To a multiple-choice question (after an assistant prefill, or a
    last person's turn holding the options) it votes: "(A)" three times in four, "(B)" otherwise
    (a cyclic counter per question, so any 8 votes on one question split 6:2, however requests
    for several questions interleave): a pure position bias."""
    messages = request["messages"]
    last = messages[-1]
    if last["role"] == "assistant" or question_of(request) is not None:
        question = json.dumps(messages, sort_keys=True)
        with server._lock:
            k = server.votes_served[question]
            server.votes_served[question] += 1
        text = " (A)" if k % 4 != 3 else " (B)"
        if server.no_option_if and server.no_option_if(request):
            text = " I would rather not say."
        if last["role"] == "assistant" and server.echo_prefill:
            text = last["content"] + text
        elif last["role"] == "user":
            text = _begin_as_asked(last["content"]) + text
    else:
        text = f"echo: {last['content']}"
    words = text.split(" ")
    limit = request.get("max_tokens") or 64
    return {
        "id": "msg_test",
        "type": "message",
        "role": "assistant",
        "model": request.get("model", "fake"),
        "content": [{"type": "text", "text": " ".join(words[:limit])}],
        "stop_reason": "max_tokens" if len(words) > limit else "end_turn",
        "stop_sequence": None,
        "usage": {
            **(
                server.anthropic_usage(request)  # type: ignore[attr-defined]
                if server.caching
                else {"input_tokens": len(last["content"].split())}
            ),
            "output_tokens": len(words),
        },
    }


FakeOpenAIServer.anthropic_message = _anthropic_message  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- prompt caching

# the shortest prefix Anthropic caches, by model (its prompt caching documentation, early 2026)
ANTHROPIC_MINIMUM = (
    (r"claude-(opus-4-[56]|haiku-4-5)(-|$)", 4096),
    (r"claude-(3-5-haiku|3-haiku|haiku-3)", 2048),
    (r"", 1024),
)
OPENAI_MINIMUM, OPENAI_STEP = 1024, 128


def fake_tokens(text: str) -> int:
    """The fake's token count: 4 characters a token, rounded up."""
    return -(-len(text) // 4)


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode()).hexdigest()


def _anthropic_blocks(request: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(role, text, marked) for every text block of the prompt, system first."""
    turns = [("system", request["system"])] if request.get("system") else []
    turns += [(m["role"], m["content"]) for m in request["messages"]]
    blocks = []
    for role, content in turns:
        if isinstance(content, str):
            blocks.append((role, content, False))
        else:
            blocks += [(role, b.get("text", ""), "cache_control" in b) for b in content]
    return blocks


def _refusal(self: FakeOpenAIServer, path: str, request: dict[str, Any]) -> dict[str, Any] | None:
    """The 400 body for a request this server refuses before answering, if it does."""
    if path.endswith("/messages"):
        marks = sum(marked for _, _, marked in _anthropic_blocks(request))
        if marks and "cache_control" in self.refuse_fields:
            with self._lock:
                self.refused.append("cache_control")
            said = "messages.0.content.0.cache_control: Extra inputs are not permitted"
            return _anthropic_error(said)
        if marks > 4 and self.caching:
            return _anthropic_error(
                f"A maximum of 4 blocks with cache_control may be provided. Found {marks}."
            )
        return None
    for name in sorted(self.refuse_fields & set(request)):
        with self._lock:
            self.refused.append(name)
        said = "Extra inputs are not permitted"
        detail = [{"type": "extra_forbidden", "loc": ["body", name], "msg": said}]
        return {"object": "error", "message": str(detail), "type": "BadRequestError",
                "param": None, "code": 400}  # fmt: skip
    return None


def _anthropic_usage(self: FakeOpenAIServer, request: dict[str, Any]) -> dict[str, int]:
    """Anthropic's usage for the prompt, with the cache read at the longest marked prefix seen
    before and written up to the last marked prefix long enough to be cached."""
    model = str(request.get("model", ""))
    minimum = self.cache_min_tokens or next(
        n for pattern, n in ANTHROPIC_MINIMUM if re.match(pattern, model)
    )
    blocks = _anthropic_blocks(request)
    ends, total = [], 0
    for _, text, _ in blocks:
        total += fake_tokens(text)
        ends.append(total)
    marked = [i for i, (_, _, m) in enumerate(blocks) if m]
    keys = {i: _digest(model, [b[:2] for b in blocks[: i + 1]]) for i in marked}
    with self._lock:
        read = next((ends[i] for i in reversed(marked) if keys[i] in self._prompt_cache), 0)
        cacheable = [i for i in marked if ends[i] >= minimum]
        written = max(0, max((ends[i] for i in cacheable), default=0) - read)
        self._prompt_cache.update(keys[i] for i in cacheable)
    return {
        "input_tokens": total - read - written,
        "cache_read_input_tokens": read,
        "cache_creation_input_tokens": written,
    }


def _openai_completion(
    self: FakeOpenAIServer, request: dict[str, Any], no_option: bool = False
) -> dict[str, Any]:
    """``completion``, and with ``caching`` its usage over the whole prompt, cached prefixes
    reported in ``prompt_tokens_details``."""
    answer = completion(request, no_option)
    if request.get("prompt_cache_key"):
        with self._lock:
            self.cache_keys[request["prompt_cache_key"]] += 1
    if not self.caching:
        return answer
    model = str(request.get("model", ""))
    text = "".join(f"<|{m['role']}|>{m['content']}" for m in request["messages"])
    total = fake_tokens(text)
    steps = range(self.cache_min_tokens or OPENAI_MINIMUM, total + 1, OPENAI_STEP)
    keys = {k: _digest(model, text[: 4 * k]) for k in steps}
    with self._lock:
        cached = max((k for k, key in keys.items() if key in self._prompt_cache), default=0)
        self._prompt_cache.update(keys.values())
    usage = answer["usage"]
    usage["prompt_tokens"] = total
    usage["total_tokens"] = total + usage["completion_tokens"]
    usage["prompt_tokens_details"] = {"cached_tokens": cached}
    return answer


FakeOpenAIServer.refusal = _refusal  # type: ignore[attr-defined]
FakeOpenAIServer.anthropic_usage = _anthropic_usage  # type: ignore[attr-defined]
FakeOpenAIServer.openai_completion = _openai_completion  # type: ignore[attr-defined]


_OPTIONS = re.compile(r"\(A\) (.*?)\n\s*\n\(B\) (.*?)(?:\n\s*\n|$)", re.S)
_BEGIN = re.compile(r'Begin your reply with "(.*?)"')
P_PREFERRED = 0.8


def question_of(request: dict[str, Any]) -> tuple[str, str] | None:
    """The two options of a multiple-choice question in the last person's turn, if it is one."""
    users = [m for m in request.get("messages", []) if m.get("role") == "user"]
    if not users:
        return None
    found = _OPTIONS.search(str(users[-1].get("content", "")))
    return (found.group(1).strip(), found.group(2).strip()) if found else None


def preferred(request: dict[str, Any]) -> str | None:
    """The label the fake prefers for a question: the option whose text sorts last."""
    options = question_of(request)
    if options is None:
        return None
    return "A" if options[0] > options[1] else "B"


def _begin_as_asked(text: str) -> str:
    """What an answer starts with when the turn asks it to begin with something."""
    found = _BEGIN.search(text)
    return found.group(1) if found else ""


def _top(label: str | None, no_option: bool) -> list[dict[str, Any]]:
    if no_option:  # the model wrote something else entirely
        return [{"token": "I", "logprob": -0.1, "bytes": None},
                {"token": " cannot", "logprob": -2.5, "bytes": None}]  # fmt: skip
    if label is None:  # not a question the fake recognises: A at p ~ 0.73, B at ~ 0.27
        return [{"token": "A", "logprob": -0.3133, "bytes": None},
                {"token": "B", "logprob": -1.3133, "bytes": None},
                {"token": "C", "logprob": -6.0, "bytes": None}]  # fmt: skip
    other = "B" if label == "A" else "A"
    return [{"token": label, "logprob": math.log(P_PREFERRED), "bytes": None},
            {"token": other, "logprob": math.log(1 - P_PREFERRED), "bytes": None},
            {"token": "C", "logprob": -6.0, "bytes": None}]  # fmt: skip


def completion(request: dict[str, Any], no_option: bool = False) -> dict[str, Any]:
    """A deterministic chat completion: 'echo: <last message>' cut to max_tokens words; to a
    multiple-choice question, the preferred option (in the top log-probs, or named)."""
    last = request["messages"][-1]["content"]
    label = preferred(request)
    if label is not None and not request.get("logprobs"):
        said = "I would rather not say." if no_option else f"({label})"
        if request["messages"][-1]["role"] == "user":
            said = f"{_begin_as_asked(last)} {said}".strip()
        words = said.split()
    else:
        words = f"echo: {last}".split()
    limit = request.get("max_tokens") or request.get("max_completion_tokens") or 64
    n = request.get("n") or 1
    text = " ".join(words[:limit])
    finish = "length" if len(words) > limit else "stop"
    choices = []
    for i in range(n):
        varied = text if n == 1 or label is not None else f"{text} #{i}"
        choice: dict[str, Any] = {
            "index": i,
            "message": {"role": "assistant", "content": varied},
            "finish_reason": finish,
        }
        if request.get("logprobs"):
            top = _top(label, no_option)
            choice["logprobs"] = {
                "content": [
                    {"token": " (", "logprob": -0.01, "bytes": None,
                     "top_logprobs": [{"token": " (", "logprob": -0.01, "bytes": None}]},
                    {"token": top[0]["token"], "logprob": top[0]["logprob"], "bytes": None,
                     "top_logprobs": top},
                ]
            }  # fmt: skip
        choices.append(choice)
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": request.get("model", "fake"),
        "choices": choices,
        "usage": {
            "prompt_tokens": len(last.split()),
            "completion_tokens": min(len(words), limit) * n,
            "total_tokens": len(last.split()) + min(len(words), limit) * n,
        },
    }


# --------------------------------------------------------------------------- strict mode


def _openai_error(param: str, message: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": param,
                      "code": code}}  # fmt: skip


def _anthropic_error(message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": "invalid_request_error", "message": message}}


def strict_refusal(path: str, request: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(the refused parameter, the provider's error body) for a request the model refuses."""
    model = str(request.get("model", ""))
    if path.endswith("/messages"):
        return _claude_refusal(model, request)
    if re.match(r"(o[1-9]|gpt-5)", model):
        if "max_tokens" in request:
            return "max_tokens", _openai_error(
                "max_tokens",
                "Unsupported parameter: 'max_tokens' is not supported with this model. "
                "Use 'max_completion_tokens' instead.",
                "unsupported_parameter",
            )
        for name in ("temperature", "top_p"):
            if name in request and request[name] != 1:
                return name, _openai_error(
                    name,
                    f"Unsupported value: '{name}' does not support {request[name]} with this "
                    "model. Only the default (1) value is supported.",
                    "unsupported_value",
                )
        if request.get("logprobs"):
            return "logprobs", _openai_error(
                "logprobs", "logprobs are not supported with this model.", "unsupported_parameter"
            )
    return None


def _claude_refusal(model: str, request: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    version = re.match(r"claude-(opus|sonnet|haiku)-(\d+)(?:-(\d)(?:-|$))?", model)
    if version is None:
        return None
    kind, major, minor = version.group(1), int(version.group(2)), int(version.group(3) or 0)
    if (major, minor) >= (4, 6) and request["messages"][-1]["role"] == "assistant":
        return "prefill", _anthropic_error(
            "This model does not support assistant message prefill. "
            "The conversation must end with a user message."
        )
    if major >= 5:
        for name in ("temperature", "top_p", "top_k"):
            if name in request and request[name] != 1:
                return name, _anthropic_error(
                    f"`{name}` is not supported for this model: only the default is accepted."
                )
    if kind == "opus" and (major, minor) >= (4, 7):
        for name in ("temperature", "top_p", "top_k"):
            if name in request:
                return name, _anthropic_error(f"`{name}` is deprecated for this model.")
    if (major, minor) >= (4, 1) and "temperature" in request and "top_p" in request:
        return "temperature", _anthropic_error(
            "`temperature` and `top_p` cannot both be specified for this model. "
            "Please use only one."
        )
    return None
