"""simulated_events: event streams made offline from a static dataset by a camera-motion model (SIMULATED data).

N-MNIST was recorded by moving an event camera over MNIST digits shown on a monitor, in three saccades along an
isosceles triangle (Orchard et al. 2015, "Converting static image datasets to spiking neuromorphic datasets using
saccades").  This source does the same in simulation over ``digits`` or ``fashion_mnist``
(``dataset.simulated``, :class:`suite.config.data.SimulatedEventsConfig`):

1. each image is placed on a blank canvas with ``pad`` pixels of border;
2. the image moves along ``saccades`` straight strokes between the vertices ``(-A/2, -A/2) -> (A/2, 0) ->
   (-A/2, A/2)`` (dy, dx; an isosceles triangle of height ``A = amplitude`` pixels), starting at a vertex drawn per
   sample from ``simulated.seed``, and is rendered (bilinear) at ``substeps`` positions per stroke;
3. every pixel keeps the log intensity ``log(I + LOG_EPS)`` at its last event; each time the current value rises
   (falls) by ``threshold`` past it, the pixel emits an ON (OFF) event and moves its level by ``threshold``: the
   DVS pixel model without noise, refractory period or latency;
4. ``noise`` adds random events (uniform in pixel, polarity and sub-step; seeded) per pixel and stroke;
5. the events (timestamp = sub-step index x ``SUBSTEP_US``) are binned into ``dataset.frames`` frames ``[T, 2, H,
   W]``: ``split_by: number`` with spikingjelly's ``integrate_events_by_fixed_frames_number`` (equal event counts),
   ``split_by: time`` by sub-step (each frame the same number of sub-steps, so no frame is empty of time).
   Channel 0 holds OFF events and channel 1 ON events (spikingjelly's polarity order).

``representation: static`` gives instead the centred, padded still image (one channel): the same samples and
canvas as a repeated-image arm of a comparison.  Splits are the source's (``split_seed``), so both
representations hold the same images.  The binned frames are deterministic in the config and cached (an atomic
``torch.save``, read back with ``weights_only=True``) under ``dataset.root`` (default
``data/cache/simulated_events``), named by a digest of every setting that shapes them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from suite.config import DatasetConfig
from suite.config.data import SIMULATED_EVENTS_DEFAULT_ROOT
from suite.data.base import DataBundle, TensorImageDataset, _bundle_from_tensors, _to_unit_float
from suite.data.registry import DataSource, check_available, get_source, register_source

LOG_EPS = 0.1  # log(I + eps): a black pixel sits 2.4 log units below white, about 12 events at threshold 0.2
SUBSTEP_US = 1_000  # the timestamp of one sub-step (microseconds), only so event times look like a sensor's
CACHE_VERSION = 1  # bump when the model below changes, so old caches are not read as new
_CHUNK = 2_048  # images rendered at once (bounds memory for Fashion-MNIST's 70 000)


def _source_config(cfg: DatasetConfig) -> DatasetConfig:
    """The static source as loaded here: whole pool and test split, unnormalised, no resize or augmentation."""
    return DatasetConfig(name=cfg.simulated.source, split_seed=cfg.split_seed, val_fraction=0.0, normalize=False)


def _check_simulated(cfg: DatasetConfig) -> None:
    """The static source must be available (the cache can always be rebuilt from it)."""
    check_available(_source_config(cfg))


def triangle_path(amplitude: float, saccades: int, substeps: int, start: int) -> np.ndarray:
    """Displacements ``(dy, dx)`` of the image at every sub-step, ``[saccades * substeps + 1, 2]``, the first row
    being the start vertex (the reference the pixels' levels start from)."""
    a = amplitude
    vertices = np.array([(-a / 2, -a / 2), (a / 2, 0.0), (-a / 2, a / 2)])
    path = [vertices[start % 3]]
    for k in range(saccades):
        v0, v1 = vertices[(start + k) % 3], vertices[(start + k + 1) % 3]
        path += [v0 + (v1 - v0) * j / substeps for j in range(1, substeps + 1)]
    return np.stack(path)


def _render(canvas: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Canvas images ``[N, 1, H, W]`` translated by ``shifts`` ``[N, S, 2]`` (dy, dx pixels; bilinear, blank
    outside) -> ``[N, S, H, W]``."""
    n, _, h, w = canvas.shape
    s = shifts.shape[1]
    theta = torch.zeros(n * s, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    # grid_sample samples the source at (output - shift); in normalised coordinates one pixel is 2 / size.
    theta[:, 0, 2] = -shifts[..., 1].reshape(-1) * 2.0 / w
    theta[:, 1, 2] = -shifts[..., 0].reshape(-1) * 2.0 / h
    grid = F.affine_grid(theta, [n * s, 1, h, w], align_corners=False)
    src = canvas.repeat_interleave(s, dim=0)
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False).view(n, s, h, w)


def dvs_counts(frames: torch.Tensor, threshold: float) -> torch.Tensor:
    """Event counts of the DVS pixel model over rendered intensities ``[N, S + 1, H, W]`` ->
    ``[N, S, 2, H, W]`` (channel 0 OFF, 1 ON): a pixel fires once per ``threshold`` its log intensity moved past
    the level of its last event, and that level moves with each event."""
    log_i = torch.log(frames.clamp_min(0.0) + LOG_EPS)
    level = log_i[:, 0].clone()
    out = torch.zeros(frames.shape[0], frames.shape[1] - 1, 2, *frames.shape[2:])
    for s in range(1, frames.shape[1]):
        diff = log_i[:, s] - level
        on = torch.floor(diff.clamp_min(0.0) / threshold)
        off = torch.floor((-diff).clamp_min(0.0) / threshold)
        level += (on - off) * threshold
        out[:, s - 1, 0], out[:, s - 1, 1] = off, on
    return out


def _add_noise(counts: torch.Tensor, rate: float, substeps: int, gen: torch.Generator) -> None:
    """Add ``rate`` random events per pixel and stroke in place, uniform over sub-step, polarity and pixel."""
    if rate <= 0:
        return
    n, steps, _, h, w = counts.shape
    per_sample = int(round(rate * h * w * steps / substeps))
    flat = counts.view(n, -1)
    idx = torch.randint(0, flat.shape[1], (n, per_sample), generator=gen)
    flat.scatter_add_(1, idx, torch.ones(n, per_sample))


def _bin(counts: torch.Tensor, frames: int, split_by: str) -> torch.Tensor:
    """Per-sub-step counts ``[S, 2, H, W]`` -> ``frames`` frames ``[T, 2, H, W]`` (see the module docstring)."""
    steps, _, h, w = counts.shape
    if split_by == "time":
        which = torch.arange(steps) * frames // steps
        return torch.zeros(frames, 2, h, w).index_add_(0, which, counts)
    from spikingjelly.datasets import utils as sj_utils

    # Expand counts to an event list ordered by time (row-major within a sub-step, like a sensor's readout) and
    # let spikingjelly bin it exactly as it bins the recorded sets.
    c = counts.to(torch.int64)
    s_idx, p, y, x = (v.numpy() for v in torch.nonzero(c, as_tuple=True))
    reps = c[c > 0].numpy()
    if reps.sum() == 0:
        return torch.zeros(frames, 2, h, w)
    events = {"t": np.repeat(s_idx * SUBSTEP_US, reps), "x": np.repeat(x, reps), "y": np.repeat(y, reps),
              "p": np.repeat(p, reps)}
    return torch.as_tensor(sj_utils.integrate_events_by_fixed_frames_number(events, "number", frames, h, w),
                           dtype=torch.float32)


def simulate(images: torch.Tensor, cfg: DatasetConfig, salt: int) -> torch.Tensor:
    """Images ``[N, 1, h, w]`` in [0, 1] -> binned event frames ``[N, T, 2, H, W]`` (H = h + 2 pad); ``salt``
    separates the random streams of the pool and the test split."""
    sc = cfg.simulated
    gen = torch.Generator().manual_seed(sc.seed * 1_000_003 + salt)
    canvas = F.pad(images, (sc.pad,) * 4)
    starts = torch.randint(0, 3, (len(images),), generator=gen)
    paths = {k: torch.as_tensor(triangle_path(sc.amplitude, sc.saccades, sc.substeps, k), dtype=torch.float32)
             for k in range(3)}
    out = []
    for lo in range(0, len(images), _CHUNK):
        chunk = canvas[lo:lo + _CHUNK]
        shifts = torch.stack([paths[int(k)] for k in starts[lo:lo + _CHUNK]])
        counts = dvs_counts(_render(chunk, shifts), sc.threshold)
        _add_noise(counts, sc.noise, sc.substeps, gen)
        out += [_bin(c, int(cfg.frames or 1), cfg.split_by) for c in counts]
    return torch.stack(out)


def cache_key(cfg: DatasetConfig) -> str:
    """16 hex characters naming every setting the cached frames depend on."""
    payload = {"version": CACHE_VERSION, "simulated": cfg.simulated.model_dump(mode="json"), "frames": cfg.frames,
               "split_by": cfg.split_by, "split_seed": cfg.split_seed, "log_eps": LOG_EPS}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _cached(path: Path, build: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The tensors stored at ``path``, built and saved atomically first when absent (parallel workers may race:
    each writes its own temporary file and the rename is atomic)."""
    if path.is_file():
        return torch.load(path, weights_only=True)
    data = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save(data, tmp)
    os.replace(tmp, path)
    return data


def _load_simulated(cfg: DatasetConfig) -> DataBundle:
    """The source's pool and test split, as event frames (cached) or as the padded still image."""
    src = get_source(cfg.simulated.source).load(_source_config(cfg))
    pool, test = src.train, src.test
    assert isinstance(pool, TensorImageDataset) and isinstance(test, TensorImageDataset)
    pool_images, test_images = _to_unit_float(pool.images), _to_unit_float(test.images)
    num_classes = src.num_classes
    if cfg.simulated.representation == "static":
        pad = (cfg.simulated.pad,) * 4
        return _bundle_from_tensors(cfg, F.pad(pool_images, pad), pool.labels, F.pad(test_images, pad), test.labels,
                                    num_classes, stats=None, train_ids=pool.source_indices,
                                    test_ids=test.source_indices)
    root = Path(cfg.root).expanduser() if cfg.root else SIMULATED_EVENTS_DEFAULT_ROOT
    path = root / f"{cfg.simulated.source}_{cache_key(cfg)}.pt"
    frames = _cached(path, lambda: {"pool": simulate(pool_images, cfg, 0), "test": simulate(test_images, cfg, 1)})
    return _bundle_from_tensors(cfg, frames["pool"], pool.labels, frames["test"], test.labels, num_classes,
                                stats=None, train_ids=pool.source_indices, test_ids=test.source_indices)


register_source(DataSource(names=("simulated_events",), check=_check_simulated, load=_load_simulated))
