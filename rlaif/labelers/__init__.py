"""Labeler backends behind one protocol; see ``base.py``."""

from rlaif.labelers.base import (
    Completion,
    GenerateParams,
    Labeler,
    create_labeler,
    run_sync,
)

__all__ = ["Completion", "GenerateParams", "Labeler", "create_labeler", "run_sync"]
