"""Evaluation: how far to trust a labeler, and how a trained policy behaves."""
