"""Recorded event-camera sets through spikingjelly.datasets (work in progress)."""

from suite.config import DatasetConfig
from suite.config.data import RECORDED_EVENT_DATASETS
from suite.data.base import DataBundle
from suite.data.dvs_layout import event_available
from suite.data.registry import DataSource, register_source


def _load_dvs(cfg: DatasetConfig) -> DataBundle:
    raise NotImplementedError


register_source(DataSource(names=RECORDED_EVENT_DATASETS, check=event_available, load=_load_dvs))
