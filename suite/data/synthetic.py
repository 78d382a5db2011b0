"""synthetic: class prototypes plus gaussian noise, generated in memory (no files at all).

Fast tests need a dataset that is trivially learnable, any size or shape (``cfg.synthetic``), and
deterministic in ``split_seed``; there is nothing to locate, so checking always passes.
"""

import torch

from suite.config import DatasetConfig
from suite.data.base import DataBundle, _bundle_from_tensors
from suite.data.registry import DataSource, register_source


def _check_synthetic(cfg: DatasetConfig) -> None:
    """Generated data is always available."""


def _load_synthetic(cfg: DatasetConfig) -> DataBundle:
    """Class prototypes plus gaussian noise: trivially learnable, deterministic in ``split_seed``."""
    sc = cfg.synthetic
    gen = torch.Generator().manual_seed(cfg.split_seed)
    shape = (sc.channels, sc.image_size, sc.image_size)
    prototypes = torch.rand((sc.num_classes, *shape), generator=gen)

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        # Balanced labels in a seeded order, so every class is present even for small n.
        labels = (torch.arange(n) % sc.num_classes)[torch.randperm(n, generator=gen)]
        noise = torch.randn((n, *shape), generator=gen) * sc.noise
        return (prototypes[labels] + noise).clamp_(0.0, 1.0), labels

    train_images, train_labels = sample(sc.train_size)
    test_images, test_labels = sample(sc.test_size)
    return _bundle_from_tensors(
        cfg, train_images, train_labels, test_images, test_labels, sc.num_classes, stats=None
    )


register_source(DataSource(names=("synthetic",), check=_check_synthetic, load=_load_synthetic))
