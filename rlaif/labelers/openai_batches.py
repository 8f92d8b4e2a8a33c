"""The OpenAI backend's provider batch jobs (the Batch API), apart from the online client.

``labelers/batches.py``'s ``BatchRunner`` drives any provider through a small ``BatchProvider``
protocol (prepare an input, create a job, find one a killed run left, poll, read results); this is
that protocol for OpenAI: a JSONL input file uploaded with purpose ``batch``, a batch over it
tagged with the job's key in its metadata, and the output and error files read back into one
``ItemResult`` per custom id. It reaches the provider only through the labeler's batch client, so
keys, base URLs and timeouts are the labeler's.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from rlaif.labelers.batches import FIND_WINDOW, JOB_METADATA, BatchState, ItemResult, upload_timeout
from rlaif.labelers.reliability import server_says

if TYPE_CHECKING:
    from rlaif.labelers.openai import OpenAILabeler


class OpenAIBatches:
    """The Batch API: a JSONL input file, a batch over it, output and error files."""

    name = "openai"
    max_items = 50_000
    max_bytes = 190 * 1024 * 1024  # the limit is 200 MB per input file; keep a margin
    url = "/v1/chat/completions"

    def __init__(self, labeler: OpenAILabeler):
        self.labeler = labeler
        self.endpoint = f"{labeler._urls[0]} {labeler.settings.model}"

    def _line(self, cid: str, body: dict[str, Any]) -> str:
        line = {"custom_id": cid, "method": "POST", "url": self.url, "body": body}
        return json.dumps(line, ensure_ascii=False, separators=(",", ":"))

    def item_size(self, cid: str, body: dict[str, Any]) -> int:
        return len(self._line(cid, body).encode("utf-8")) + 1

    async def prepare(self, items: list[tuple[str, dict[str, Any]]]) -> str:
        data = "".join(self._line(cid, body) + "\n" for cid, body in items).encode("utf-8")
        client = self.labeler._batch_client()
        uploaded = await client.files.create(
            file=("rlaif-batch.jsonl", data, "application/jsonl"),
            purpose="batch",
            timeout=upload_timeout(len(data), self.labeler.settings.retry.timeout),
        )
        return uploaded.id

    async def create(self, file_id: str, key: str) -> tuple[str, str]:
        client = self.labeler._batch_client()
        batch = await client.batches.create(
            input_file_id=file_id,
            endpoint=self.url,
            completion_window="24h",
            metadata={JOB_METADATA: key},
        )
        return batch.id, batch.status

    async def find(self, key: str, items: int, since: float) -> list[tuple[str, str]]:
        """Batches tagged with ``key``, newest first, back to a little before ``since``."""
        found = []
        async for batch in self.labeler._batch_client().batches.list(limit=100):
            if batch.created_at < since - FIND_WINDOW:
                break
            if (batch.metadata or {}).get(JOB_METADATA) == key:
                found.append((batch.id, batch.status))
        return found

    async def state(self, batch_id: str) -> BatchState:
        batch = await self.labeler._batch_client().batches.retrieve(batch_id)
        counts = batch.request_counts
        found = (
            {"total": counts.total, "completed": counts.completed, "failed": counts.failed}
            if counts is not None
            else {}
        )
        errors = getattr(getattr(batch, "errors", None), "data", None) or []
        said = "; ".join(server_says(e.model_dump(exclude_none=True)) for e in errors)
        return BatchState(
            status=batch.status,
            done=batch.status in ("completed", "expired", "cancelled"),
            dead=batch.status == "failed",
            counts=found,
            error=f"batch failed: {said}" if said else "",
        )

    async def results(self, batch_id: str) -> dict[str, ItemResult]:
        client = self.labeler._batch_client()
        batch = await client.batches.retrieve(batch_id)
        found: dict[str, ItemResult] = {}
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            content = await client.files.content(file_id)
            for line in content.text.splitlines():
                if line.strip():
                    record = json.loads(line)
                    found[record["custom_id"]] = item_result(record)
        return found


def item_result(record: dict[str, Any]) -> ItemResult:
    """One line of an output or error file."""
    response = record.get("response") or {}
    status = response.get("status_code")
    if status == 200 and isinstance(response.get("body"), dict):
        return ItemResult(response["body"])
    error = record.get("error")
    if error:  # the batch could not run the request (batch_expired, ...)
        code = error.get("code") or ""
        return ItemResult(None, server_says(error), code in ("batch_expired", "batch_cancelled"))
    body = response.get("body")
    said = server_says(body.get("error", body) if isinstance(body, dict) else body)
    retryable = status is None or status in (408, 409, 429) or status >= 500
    return ItemResult(None, f"HTTP {status}: {said}", retryable)
