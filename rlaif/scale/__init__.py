"""Running the labeler calls of one job on more than one machine (``--ray``); see ``ray.py``."""
