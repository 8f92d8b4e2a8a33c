"""Prompt data: readers for prompt files and the small red-team set rlaif ships for its demo."""
