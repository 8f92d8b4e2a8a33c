"""The same SL-CAI shape in distilabel 1.5.3, for ``api_throughput.py`` (runs in its own venv).

Three chained TextGeneration steps (response, critique, revision), ``input_batch_size=64``, no
cache, against the same local server. Prints one line: ``DISTILABEL n=.. seconds=..``.
Setup: python3 -m venv .bench/distilabel &&
  .bench/distilabel/bin/pip install "distilabel[openai]==1.5.3" requests aiohttp
"""

import os
import sys
import time

os.environ.setdefault("DISTILABEL_LOG_LEVEL", "WARNING")
from distilabel.models import OpenAILLM
from distilabel.pipeline import Pipeline
from distilabel.steps import LoadDataFromDicts
from distilabel.steps.tasks import TextGeneration


def main(n, url):
    def llm():
        return OpenAILLM(
            model="bench", base_url=url, api_key="sk-none", generation_kwargs={"max_new_tokens": 64}
        )

    with Pipeline(name="bench-sl-cai") as pipeline:
        load = LoadDataFromDicts(
            data=[{"instruction": f"prompt {i}"} for i in range(n)], batch_size=64
        )
        respond = TextGeneration(
            llm=llm(),
            input_batch_size=64,
            use_cache=False,
            output_mappings={"generation": "response"},
        )
        critique = TextGeneration(
            llm=llm(),
            input_batch_size=64,
            use_cache=False,
            template="Critique this response: {{ response }}",
            columns=["response"],
            output_mappings={"generation": "critique"},
        )
        revise = TextGeneration(
            llm=llm(),
            input_batch_size=64,
            use_cache=False,
            template="Revise {{ response }} given {{ critique }}",
            columns=["response", "critique"],
            output_mappings={"generation": "revision"},
        )
        load >> respond >> critique >> revise
    t = time.perf_counter()
    ds = pipeline.run(use_cache=False)
    dt = time.perf_counter() - t
    rows = ds["default"]["train"].num_rows
    print(f"DISTILABEL n={n} rows={rows} seconds={dt:.2f} prompts_per_s={n / dt:.1f}")


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
