"""The one dispatcher over dataset names: sources register here, :func:`load_data` and
:func:`check_available` look them up here.

Before this registry the names were dispatched twice (an if-chain for checking, a dict for loading), and the
two could drift apart; now a source states both behaviours in one :class:`DataSource` and one
:func:`register_source` call.  :class:`DataBundle` is named here only for type checking, so at run time the
registry depends on neither ``base`` nor any source: sources import it, never the other way round, which
keeps the package free of import cycles.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from suite.config import DatasetConfig

if TYPE_CHECKING:
    from suite.data.base import DataBundle


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are not where the config says; the message lists every path tried."""

    def __init__(self, message: str, *, tried: Sequence[Path | str] = ()) -> None:
        super().__init__(message)
        self.tried: tuple[str, ...] = tuple(str(p) for p in tried)


def _not_found(dataset: str, tried: Sequence[tuple[Path, str]], hint: str) -> DatasetNotFoundError:
    """Build the error with one line per location tried and why it did not qualify."""
    lines = [f"{dataset} not found. Looked in:"]
    lines += [f"  - {path.resolve() if not path.is_absolute() else path}: {why}" for path, why in tried]
    lines.append(hint)
    return DatasetNotFoundError("\n".join(lines), tried=[p for p, _ in tried])


@dataclass(frozen=True)
class DataSource:
    """One dataset source: the names it serves and how to check for and load them.

    ``check(cfg)`` must only test that files/directories exist (nothing read or decoded) and raise
    :class:`DatasetNotFoundError` listing every path tried, so a whole study can be validated up front;
    a downloadable source passes when ``cfg.download`` is true, since loading will fetch it.
    ``load(cfg)`` returns the split, transformed :class:`DataBundle`.  One source may serve several
    names (CIFAR-10 and CIFAR-100 share a reader), and receives ``cfg.name`` to tell them apart.
    """

    names: tuple[str, ...]
    check: Callable[[DatasetConfig], None]
    load: Callable[[DatasetConfig], DataBundle]


_SOURCES: dict[str, DataSource] = {}


def register_source(source: DataSource) -> DataSource:
    """Make ``source`` reachable under each of its names; a name may be claimed only once.

    Refusing duplicates (rather than letting the last import win) keeps which loader runs independent of
    import order.
    """
    if not source.names:
        raise ValueError("a data source must serve at least one dataset name")
    taken = [n for n in source.names if n in _SOURCES and _SOURCES[n] is not source]
    if taken:
        raise ValueError(f"dataset name(s) already registered: {', '.join(taken)}")
    for name in source.names:
        _SOURCES[name] = source
    return source


def names() -> tuple[str, ...]:
    """Every registered dataset name, sorted."""
    return tuple(sorted(_SOURCES))


def get_source(name: str) -> DataSource:
    """The source serving ``name``; an unknown name is a ValueError that lists the known ones."""
    try:
        return _SOURCES[name]
    except KeyError:
        # Reachable only by bypassing config validation (the DatasetName Literal), e.g. model_construct.
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(names())}") from None


def check_available(cfg: DatasetConfig) -> None:
    """Raise :class:`DatasetNotFoundError` if ``load_data(cfg)`` could not find its data.

    Only checks that files/directories exist (nothing is read or decoded), so a whole study can be
    validated up front.  A missing downloadable set passes when ``download`` is true, since loading will
    fetch it.
    """
    get_source(cfg.name).check(cfg)


def load_data(cfg: DatasetConfig) -> DataBundle:
    """Load ``cfg.name`` and return its train/val/test splits with transforms attached.

    Images are float32 ``[C, H, W]``; val is None when ``val_fraction`` is 0.  The same config always
    produces the same split indices.
    """
    return get_source(cfg.name).load(cfg)


_LOADED: dict[str, DataBundle] = {}


def cached_data(cfg: DatasetConfig) -> DataBundle:
    """``load_data(cfg)``, loaded once per process and dataset config: a worker runs many runs (and a search many
    evaluations) on one dataset, and every split is a pure function of the config."""
    key = cfg.model_dump_json()
    if key not in _LOADED:
        _LOADED[key] = load_data(cfg)
    return _LOADED[key]
