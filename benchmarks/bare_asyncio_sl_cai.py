"""The SL-CAI shape as a bare asyncio + openai loop: the floor an engine is measured against.

For every prompt, three sequential chat completions (response, critique of it, revision given
both), all prompts at once under one ``asyncio.Semaphore(64)`` around each call, one
``AsyncOpenAI`` client with the SDK's retries off. No cache, no journal, no templates, no
progress: the rows are written to a JSONL file once at the end. ``api_throughput.py`` runs it as
its own process and times the whole command, like the other two tools.
Run: python benchmarks/bare_asyncio_sl_cai.py N URL OUT.jsonl
"""

from __future__ import annotations

import asyncio
import json
import sys

from openai import AsyncOpenAI


async def main(n: int, url: str, out: str, concurrency: int = 64) -> None:
    client = AsyncOpenAI(api_key="sk-local", base_url=url, max_retries=0)
    slots = asyncio.Semaphore(concurrency)

    async def ask(text: str) -> str:
        async with slots:
            r = await client.chat.completions.create(
                model="bench",
                messages=[{"role": "user", "content": text}],
                max_tokens=64,
                temperature=0.7,
            )
        return r.choices[0].message.content or ""

    async def row(i: int) -> dict[str, str]:
        prompt = f"prompt {i}"
        response = await ask(prompt)
        critique = await ask(f"Critique this response to {prompt!r}: {response}")
        revision = await ask(f"Revise {response!r} given the critique: {critique}")
        return {"id": str(i), "prompt": prompt, "response": response, "revision": revision}

    rows = await asyncio.gather(*(row(i) for i in range(n)))
    await client.close()
    with open(out, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3]))
