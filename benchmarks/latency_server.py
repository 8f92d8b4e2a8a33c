"""A minimal OpenAI-compatible server with a fixed latency, for throughput benchmarks.

Every ``POST /v1/chat/completions`` waits ``--latency`` seconds (asyncio.sleep) and answers with
``--tokens`` words; at most ``--limit`` requests are served at once (the rest queue). Pure asyncio,
HTTP/1.1 keep-alive, one process: the point is a server whose capacity is known exactly
(limit / latency requests per second), so a client's throughput can be read as a share of it.
Run: python benchmarks/latency_server.py --port 18099
"""

from __future__ import annotations

import argparse
import asyncio
import json


async def serve(port: int, latency: float, tokens: int, limit: int) -> None:
    slots = asyncio.Semaphore(limit)
    answer = " ".join(["word"] * tokens)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.decode("latin-1").split("\r\n"):
                    if line.lower().startswith("content-length:"):
                        length = int(line.split(":", 1)[1])
                body = json.loads(await reader.readexactly(length) or b"{}")
                async with slots:
                    await asyncio.sleep(latency)
                n = body.get("n") or 1
                payload = json.dumps({
                    "id": "bench", "object": "chat.completion", "created": 0,
                    "model": body.get("model", "bench"),
                    "choices": [{"index": i, "finish_reason": "length",
                                 "message": {"role": "assistant", "content": answer}}
                                for i in range(n)],
                    "usage": {"prompt_tokens": 10, "completion_tokens": tokens * n,
                              "total_tokens": 10 + tokens * n},
                }).encode()  # fmt: skip
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(payload)}\r\n\r\n".encode()
                    + payload
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=18099)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--limit", type=int, default=64)
    args = ap.parse_args()
    asyncio.run(serve(args.port, args.latency, args.tokens, args.limit))


if __name__ == "__main__":
    main()
