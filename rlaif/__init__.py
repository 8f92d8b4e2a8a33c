"""rlaif: a Constitutional AI / RLAIF data engine."""

__version__ = "0.1.0"
