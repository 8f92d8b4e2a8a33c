"""An output folder opened for review: its datasets, its rows (or a seeded sample of them) and
its label file, loaded once and shared by the server and ``rlaif review export``.

The label file sits in the output folder itself (``OUT_DIR/review.sqlite``), so the labels travel
with the data they are about; for a run folder that is the run's root, beside its stage folders.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rlaif.data.outputs import DatasetFile, find_datasets
from rlaif.review.rows import Item, load_items, sample
from rlaif.review.storage import FILE_NAME, LabelStore


@dataclass
class ReviewFolder:
    folder: Path
    datasets: list[DatasetFile]
    items: list[Item]  # what the page lists (the sample, when one was asked for)
    by_key: dict[tuple[str, str], Item]  # every row, sampled or not (labels and exports)
    store: LabelStore
    total: int
    sample_size: int | None = None
    seed: int = 0

    @property
    def dataset_paths(self) -> list[Path]:
        return [p for d in self.datasets for p in (d.path, *(s for _, s in d.side_files))]


def open_folder(
    folder: str | Path, sample_size: int | None = None, seed: int = 0, db: str | Path | None = None
) -> ReviewFolder:
    folder = Path(folder)
    datasets = find_datasets(folder)  # NoDatasetError before any file is created
    everything = load_items(datasets)
    store = LabelStore(db or folder / FILE_NAME)
    return ReviewFolder(
        folder, datasets, sample(everything, sample_size, seed),
        {it.key: it for it in everything}, store, len(everything), sample_size, seed,
    )  # fmt: skip
