"""What rows and cards say of the labelers: nothing a user would not publish."""

from __future__ import annotations

import json

from rlaif.engine.jobs import public_description
from rlaif.labelers.reliability import redact
from rlaif.models import weights_fingerprint


def test_urls_lose_credentials_and_key_like_query_values():
    assert redact("http://me:hunter2@10.0.0.5:8000/v1?api-key=abc&api-version=2024-06") == (
        "http://10.0.0.5:8000/v1?api-key=[redacted]&api-version=2024-06"
    )
    assert redact("https://api.example.com/v1?key=s3cret&token=t") == (
        "https://api.example.com/v1?key=[redacted]&token=[redacted]"
    )
    assert redact("http://127.0.0.1:8080/v1") == "http://127.0.0.1:8080/v1"


def test_a_local_model_is_named_by_its_folder_and_weights(tmp_path):
    folder = tmp_path / "checkpoints" / "my-sft"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"weights")
    desc = {"backend": "transformers", "model": str(folder), "batch_size": 8,
            "base_url": ["http://u:p@h:1/v1", "http://h:2/v1"]}  # fmt: skip
    public = public_description(desc)
    assert public["model"] == "my-sft"
    assert public["weights_fingerprint"] == weights_fingerprint(str(folder)) != ""
    assert public["base_url"] == ["http://h:1/v1", "http://h:2/v1"]
    assert str(tmp_path) not in json.dumps(public) and "u:p" not in json.dumps(public)
    # a name that is no local path (a Hub id, an API model) stays as it is
    assert public_description({"model": "org/name"})["model"] == "org/name"


def test_redact_catches_keys_in_query_strings():
    said = redact("GET https://h/v1?api_key=abc123&x=1 and https://h/v1?api-key=def456")
    assert "abc123" not in said and "def456" not in said and "x=1" in said
