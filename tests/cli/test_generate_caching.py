"""Prompt caching end to end: a 2-round SL-CAI run of 200 prompts with few-shot examples through
`rlaif generate sl-cai` against fake servers that cache and bill the way the providers do. The
constitution is a test one whose few-shot prefix (about 1,200 tokens) reaches the providers'
minimum cacheable length of 1,024 tokens; the shipped constitutions' few-shot prefixes (about
300 to 450 tokens) do not, so providers cache nothing of them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rlaif.cli import main

from ..labelers.fake_openai_server import FakeOpenAIServer

pytest.importorskip("openai")
pytest.importorskip("anthropic")

CONSTITUTION = Path(__file__).parents[1] / "fixtures" / "long_few_shot" / "constitution.yaml"
BILLED = re.compile(
    r"input tokens ([\d,]+) \(of which cached reads ([\d,]+) = ([\d.]+)%, "
    r"cache writes ([\d,]+)\) · output tokens ([\d,]+)"
)


def numbers(found):
    return [float(x.replace(",", "")) for x in found.groups()]


@pytest.mark.parametrize(
    ("spec", "url"),
    [("anthropic:claude-sonnet-4-5", "root_url"), ("openai:gpt-4o-mini", "url")],
)
def test_two_rounds_of_200_prompts_bill_most_input_tokens_as_cached_reads(
    spec, url, tmp_path, capsys
):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(f"Tell me about topic number {i}." for i in range(200)))
    out = tmp_path / "out"
    with FakeOpenAIServer(caching=True) as server:
        args = ["generate", "sl-cai", "--prompts", str(prompts), "--labeler", spec,
                "--labeler-set", f"base_url={getattr(server, url)}",
                "--labeler-set", "price_input_per_million=3",
                "--labeler-set", "price_cached_input_per_million=0.3",
                "--labeler-set", "price_cache_write_per_million=3.75",
                "--labeler-set", "price_output_per_million=15",
                "--constitution", str(CONSTITUTION), "--rounds", "2", "--max-tokens", "64",
                "--out", str(out)]  # fmt: skip
        assert main(args) == 0
        printed = " ".join(capsys.readouterr().out.split())
        served = server.answered_usage
        assert len(served) == 200 * 5  # a first answer, then 2 critiques and 2 revisions each

        # the server's own bill: cached reads over every input token of the run
        if spec.startswith("anthropic"):
            read = sum(u["cache_read_input_tokens"] for u in served)
            written = sum(u["cache_creation_input_tokens"] for u in served)
            total = sum(u["input_tokens"] for u in served) + read + written
        else:
            read = sum(u["prompt_tokens_details"]["cached_tokens"] for u in served)
            written, total = 0, sum(u["prompt_tokens"] for u in served)
        assert read >= 0.7 * total

        # the summary and the card say the same numbers
        shown = BILLED.search(printed)
        assert shown, printed
        assert numbers(shown)[:2] == [total, read] and numbers(shown)[3] == written
        assert numbers(shown)[2] >= 70.0
        card = " ".join((out / "README.md").read_text().split())
        assert shown.group(0) in card
        cost = float(printed.split("cost by the price table: $")[1].split()[0])
        output = numbers(shown)[4]
        expected = ((total - read - written) * 3 + read * 0.3 + written * 3.75 + output * 15) / 1e6
        assert cost == pytest.approx(expected, abs=1e-4)

        # a rerun is answered from rlaif's own cache: nothing is billed
        assert main(args) == 0
        again = BILLED.search(" ".join(capsys.readouterr().out.split()))
        assert numbers(again)[0] == 0 and len(server.answered_usage) == len(served)
