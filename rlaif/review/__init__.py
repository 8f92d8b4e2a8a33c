"""``rlaif review``: a local web page to read an output folder's datasets and label a sample.

The pieces: ``folder`` finds the datasets (through ``rlaif.data.outputs``) and opens the label
file; ``rows`` turns rows into what the page lists and shows; ``storage`` keeps the labels in
SQLite; ``agreement`` measures people against the AI and each other; ``export`` writes gold and
human preference files; ``server`` is the Starlette app, with the page in ``static/``.
"""
