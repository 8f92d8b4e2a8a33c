"""An in-process server for both providers' batch APIs (and their online endpoints), for tests.

Real HTTP on 127.0.0.1, so the official SDKs' whole batch stack runs: OpenAI's multipart file
upload, ``/v1/batches`` and file downloads; Anthropic's ``/v1/messages/batches`` and its JSONL
results. Items are answered by the online fake's functions (``completion`` and the Anthropic
message of ``FakeOpenAIServer``), so a batch answers exactly what online requests would.

Knobs for tests: ``delay`` (seconds a batch stays ``in_progress``), ``item_fault(body, seen)``
(return ``"error"``, ``"invalid"`` or ``"expired"`` to fail an item; ``seen`` counts earlier
batches that carried the same request), and counters: ``created`` (one entry per batch created:
provider and item count), ``create_calls`` (creation requests, answered or not) and ``polls``;
``create_faults`` answers the next creations with "429" or "500" instead; ``fail_validation``
makes OpenAI batches end ``failed`` with a validation error; ``create_hang`` seconds makes the
next creation create the batch, then answer only after that long (past the client's timeout, as
a dropped connection would). Both list endpoints answer, newest first, with OpenAI's
``metadata``. With ``caching=True`` batch items are billed with prompt caching exactly as online
requests are (see ``fake_openai_server``).
"""

from __future__ import annotations

import email.parser
import email.policy
import itertools
import json
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from .fake_openai_server import FakeOpenAIServer


class FakeBatchServer(FakeOpenAIServer):
    def __init__(self, delay: float = 0.0, **kwargs: Any):
        self.delay = delay
        self.item_fault: Any = None  # (body, seen) -> None | "error" | "invalid" | "expired"
        self.created: list[tuple[str, int]] = []  # (provider, items) per batch created
        self.polls = 0
        self.create_faults: list[str] = []  # "429" or "500" for the next batch creations
        self.create_calls = 0
        self.create_hang = 0.0  # the next creation: create, then answer this many seconds late
        self.fail_validation = False  # OpenAI batches end "failed" with a validation error
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.seen: Counter[str] = Counter()  # batches that carried each request body
        self._ids = itertools.count(1)
        self._batch_lock = threading.Lock()
        super().__init__(**kwargs)

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids):06d}"

    # ------------------------------------------------------------------ batch logic

    def _create(self, provider: str, items: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
        with self._batch_lock:
            batch_id = self._new_id("batch" if provider == "openai" else "msgbatch")
            batch = {
                "id": batch_id,
                "provider": provider,
                "items": items,
                "created": time.time(),
                "results": None,
            }
            self.batches[batch_id] = batch
            self.created.append((provider, len(items)))
            return batch

    def _finish(self, batch: dict[str, Any]) -> bool:
        """Process the batch once its delay has passed; True when it has results."""
        with self._batch_lock:
            if batch["results"] is not None:
                return True
            if time.time() - batch["created"] < self.delay:
                return False
            results = []
            for cid, body in batch["items"]:
                request = json.dumps(body, sort_keys=True)
                fault = self.item_fault(body, self.seen[request]) if self.item_fault else None
                self.seen[request] += 1
                if fault is None:
                    if batch["provider"] == "openai":
                        answer = self.openai_completion(body)  # type: ignore[attr-defined]
                    else:
                        answer = self.anthropic_message(body)  # type: ignore[attr-defined]
                    results.append((cid, "ok", answer))
                else:
                    results.append((cid, fault, None))
            batch["results"] = results
            return True

    def _counts(self, batch: dict[str, Any], done: bool) -> Counter[str]:
        if not done:
            return Counter({"processing": len(batch["items"])})
        return Counter(kind for _, kind, _ in batch["results"])

    # ------------------------------------------------------------------ OpenAI shapes

    def _openai_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        done = not self.fail_validation and self._finish(batch)
        counts = self._counts(batch, done)
        failed = counts["error"] + counts["invalid"] + counts["expired"]
        status = "in_progress"
        out_id = err_id = None
        errors = None
        if self.fail_validation:
            done, status = False, "failed"
            line = {"code": "invalid_request", "message": "model is not allowed in batches"}
            errors = {"object": "list", "data": [{**line, "line": 1}]}
        elif done:
            status = "expired" if counts["expired"] else "completed"
            out_id, err_id = self._openai_files(batch)
        return {
            "id": batch["id"],
            "object": "batch",
            "endpoint": "/v1/chat/completions",
            "errors": errors,
            "input_file_id": batch["input_file_id"],
            "completion_window": "24h",
            "status": status,
            "output_file_id": out_id,
            "error_file_id": err_id,
            "created_at": int(batch["created"]),
            "metadata": batch.get("metadata"),
            "request_counts": {
                "total": len(batch["items"]),
                "completed": counts["ok"],
                "failed": failed,
            },
        }

    def _openai_files(self, batch: dict[str, Any]) -> tuple[str | None, str | None]:
        if "files" in batch:
            return batch["files"]
        good, bad = [], []
        for n, (cid, kind, answer) in enumerate(batch["results"]):
            line: dict[str, Any] = {"id": f"batch_req_{n}", "custom_id": cid, "error": None}
            if kind == "ok":
                line["response"] = {"status_code": 200, "request_id": f"r{n}", "body": answer}
                good.append(line)
                continue
            if kind == "expired":
                line["response"] = None
                line["error"] = {
                    "code": "batch_expired",
                    "message": "This request could not be executed before the window expired.",
                }
            else:
                status, message = (500, "boom") if kind == "error" else (400, "invalid request")
                line["response"] = {
                    "status_code": status,
                    "request_id": f"r{n}",
                    "body": {"error": {"message": message, "type": "server_error"}},
                }
            bad.append(line)
        ids = []
        for lines in (good, bad):
            if lines:
                file_id = self._new_id("file")
                self.files[file_id] = "".join(json.dumps(x) + "\n" for x in lines).encode()
                ids.append(file_id)
            else:
                ids.append(None)
        batch["files"] = (ids[0], ids[1])
        return batch["files"]

    # ------------------------------------------------------------------ Anthropic shapes

    def _anthropic_batch(self, batch: dict[str, Any], root: str) -> dict[str, Any]:
        done = self._finish(batch)
        counts = self._counts(batch, done)
        created = datetime.fromtimestamp(batch["created"], UTC)
        return {
            "id": batch["id"],
            "type": "message_batch",
            "processing_status": "ended" if done else "in_progress",
            "request_counts": {
                "processing": counts["processing"],
                "succeeded": counts["ok"],
                "errored": counts["error"] + counts["invalid"],
                "canceled": 0,
                "expired": counts["expired"],
            },
            "created_at": created.isoformat(),
            "expires_at": (created + timedelta(hours=24)).isoformat(),
            "ended_at": datetime.now(UTC).isoformat() if done else None,
            "archived_at": None,
            "cancel_initiated_at": None,
            "results_url": f"{root}/v1/messages/batches/{batch['id']}/results" if done else None,
        }

    @staticmethod
    def _anthropic_results(batch: dict[str, Any]) -> bytes:
        lines = []
        for cid, kind, answer in batch["results"]:
            if kind == "ok":
                result: dict[str, Any] = {"type": "succeeded", "message": answer}
            elif kind == "expired":
                result = {"type": "expired"}
            else:
                inner = (
                    {"type": "api_error", "message": "boom"}
                    if kind == "error"
                    else {"type": "invalid_request_error", "message": "invalid request"}
                )
                result = {"type": "errored", "error": {"type": "error", "error": inner}}
            lines.append(json.dumps({"custom_id": cid, "result": result}) + "\n")
        return "".join(lines).encode()

    # ------------------------------------------------------------------ HTTP

    def _handler(self) -> type:
        server = self
        Base: Any = super()._handler()

        class Handler(Base):
            def _json(self, obj: Any, status: int = 200) -> None:
                self._send(status, json.dumps(obj).encode())

            def _remember_headers(self) -> None:
                with server._lock:
                    server.headers.append({k.lower(): v for k, v in self.headers.items()})

            def do_POST(self) -> None:
                path = self.path.split("?")[0]
                if path == "/v1/files":
                    return self._upload()
                if path in ("/v1/batches", "/v1/messages/batches"):
                    with server._lock:
                        server.create_calls += 1
                        fault = server.create_faults.pop(0) if server.create_faults else None
                    if fault is not None:
                        self._body()
                        wait = {"Retry-After": "0"} if fault == "429" else {}
                        return self._send(int(fault), b'{"error": {"message": "busy"}}', wait)
                if path == "/v1/batches":
                    return self._openai_create()
                if path == "/v1/messages/batches":
                    return self._anthropic_create()
                return super().do_POST()

            def _body(self) -> bytes:
                self._remember_headers()
                return self.rfile.read(int(self.headers.get("Content-Length", 0)))

            def _upload(self) -> None:
                raw = self._body()
                head = f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode()
                message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
                data, purpose = b"", ""
                for part in message.iter_parts():
                    name = part.get_param("name", header="content-disposition")
                    if name == "file":
                        data = part.get_payload(decode=True)
                    elif name == "purpose":
                        purpose = part.get_payload(decode=True).decode()
                file_id = server._new_id("file")
                server.files[file_id] = data
                obj = {"id": file_id, "object": "file", "bytes": len(data), "created_at": 0}
                obj.update(filename="input.jsonl", purpose=purpose, status="processed")
                self._json(obj)

            def _openai_create(self) -> None:
                request = json.loads(self._body())
                lines = server.files[request["input_file_id"]].decode().splitlines()
                items = []
                for line in lines:
                    item = json.loads(line)
                    assert item["method"] == "POST" and item["url"] == request["endpoint"]
                    items.append((item["custom_id"], item["body"]))
                batch = server._create("openai", items)
                batch["input_file_id"] = request["input_file_id"]
                batch["metadata"] = request.get("metadata")
                self._hang()
                self._json(server._openai_batch(batch))

            def _hang(self) -> None:
                with server._lock:
                    hang, server.create_hang = server.create_hang, 0.0
                if hang:
                    time.sleep(hang)

            def _anthropic_create(self) -> None:
                request = json.loads(self._body())
                items = [(r["custom_id"], r["params"]) for r in request["requests"]]
                batch = server._create("anthropic", items)
                self._hang()
                self._json(server._anthropic_batch(batch, server.root_url))

            def do_GET(self) -> None:
                self._remember_headers()
                parts = self.path.split("?")[0].strip("/").split("/")
                with server._lock:
                    server.polls += 1
                known = parts[3:4] if parts[:3] == ["v1", "messages", "batches"] else parts[2:3]
                if known and known[0] not in server.batches and known[0] not in server.files:
                    err = {"error": {"message": f"No batch found with id '{known[0]}'."}}
                    return self._send(404, json.dumps(err).encode())
                if parts in (["v1", "batches"], ["v1", "messages", "batches"]):
                    return self._list(parts[1] == "batches")
                if parts[:2] == ["v1", "batches"] and len(parts) == 3:
                    return self._json(server._openai_batch(server.batches[parts[2]]))
                if parts[:2] == ["v1", "files"] and len(parts) == 4 and parts[3] == "content":
                    return self._send(200, server.files[parts[2]])
                if parts[:3] == ["v1", "messages", "batches"] and len(parts) == 4:
                    batch = server.batches[parts[3]]
                    return self._json(server._anthropic_batch(batch, server.root_url))
                if parts[:3] == ["v1", "messages", "batches"] and parts[4:] == ["results"]:
                    return self._send(200, server._anthropic_results(server.batches[parts[3]]))
                return self._send(404, b'{"error": {"message": "no such path"}}')

            def _list(self, openai: bool) -> None:
                provider = "openai" if openai else "anthropic"
                with server._batch_lock:
                    mine = [b for b in server.batches.values() if b["provider"] == provider]
                mine.sort(key=lambda b: b["created"], reverse=True)
                if openai:
                    data = [server._openai_batch(b) for b in mine]
                else:
                    data = [server._anthropic_batch(b, server.root_url) for b in mine]
                first = data[0]["id"] if data else None
                last = data[-1]["id"] if data else None
                page = {"data": data, "has_more": False, "first_id": first, "last_id": last}
                self._json({"object": "list", **page} if openai else page)

        return Handler
