"""The engine: pipeline steps over labelers (scheduler, cache and journal come next)."""
