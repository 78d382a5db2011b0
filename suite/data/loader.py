"""DataLoader construction, kept apart from loading data so training and evaluation share one recipe.

Reproducibility is the point: shuffling and every worker's numpy/``random`` state derive only from the
``seed`` given, so two runs with the same seed see the same batches in the same order.
"""

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; derive numpy/random seeds from it too so
    # any transform using them is reproducible as well.
    import random

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(
    ds: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int,
    num_workers: int = 0,
    pin_memory: bool = False,
    drop_last: bool = False,
) -> DataLoader:
    """DataLoader whose shuffling (and worker seeding) depends only on ``seed``."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=drop_last,
        # Re-spawning workers every epoch is slow; keep them when there are any.
        persistent_workers=num_workers > 0,
        worker_init_fn=_seed_worker if num_workers > 0 else None,
    )
