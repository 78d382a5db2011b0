"""tinyimagenet: 200 classes of 64x64 colour images, file-backed so building the dataset decodes nothing.

With 100k training JPEGs, reading everything into memory up front (as the small sets do) would cost
minutes per run, so items are decoded with PIL on access.  The official test split has no labels, so the
labelled val split serves as test.  torchvision cannot download it (the config refuses ``download``).
"""

from pathlib import Path

from suite.config import DatasetConfig
from suite.config.data import TINYIMAGENET_DEFAULT_ROOT, TINYIMAGENET_HINT
from suite.data.base import DataBundle, _bundle_from_files, list_images
from suite.data.registry import DataSource, _not_found, register_source

# Computing Tiny-ImageNet statistics would mean decoding all 100k training images, so the commonly
# published values are used instead.
_TINYIMAGENET_STATS = ((0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821))

def _tinyimagenet_candidates(cfg: DatasetConfig) -> list[Path]:
    if not cfg.root:
        return [TINYIMAGENET_DEFAULT_ROOT]
    root = Path(cfg.root).expanduser()
    # Accept the extracted directory itself or the directory it was extracted into.
    return [root, root / "tiny-imagenet-200"]


def _tinyimagenet_missing(directory: Path) -> str:
    if not directory.is_dir():
        return "directory does not exist"
    needed = [
        directory / "wnids.txt",
        directory / "train",
        directory / "val" / "images",
        directory / "val" / "val_annotations.txt",
    ]
    missing = [str(p.relative_to(directory)) for p in needed if not p.exists()]
    return "missing " + ", ".join(missing) if missing else ""


def _locate_tinyimagenet(cfg: DatasetConfig) -> tuple[Path | None, list[tuple[Path, str]]]:
    tried: list[tuple[Path, str]] = []
    for directory in _tinyimagenet_candidates(cfg):
        why = _tinyimagenet_missing(directory)
        if not why:
            return directory, tried
        tried.append((directory, why))
    return None, tried


def _check_tinyimagenet(cfg: DatasetConfig) -> None:
    """Raise if no candidate directory has the expected layout; it cannot be downloaded."""
    directory, tried = _locate_tinyimagenet(cfg)
    if directory is None:
        raise _not_found("tinyimagenet", tried, TINYIMAGENET_HINT)


def _load_tinyimagenet(cfg: DatasetConfig) -> DataBundle:
    directory, tried = _locate_tinyimagenet(cfg)
    if directory is None:
        raise _not_found("tinyimagenet", tried, TINYIMAGENET_HINT)

    wnids = [w.strip() for w in (directory / "wnids.txt").read_text().splitlines() if w.strip()]
    if len(set(wnids)) != len(wnids) or not wnids:
        raise ValueError(f"{directory / 'wnids.txt'}: expected a non-empty list of distinct wnids")
    class_of = {w: i for i, w in enumerate(wnids)}

    train_paths: list[Path] = []
    train_labels: list[int] = []
    for wnid in wnids:
        files = list_images(directory / "train" / wnid / "images")
        train_paths += files
        train_labels += [class_of[wnid]] * len(files)
    if not train_paths:
        raise ValueError(f"{directory / 'train'}: no training images found under <wnid>/images/")

    # The official test split has no labels, so the labelled val split serves as test.
    annotations = directory / "val" / "val_annotations.txt"
    test_paths: list[Path] = []
    test_labels: list[int] = []
    for lineno, line in enumerate(annotations.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in class_of:
            raise ValueError(
                f"{annotations}:{lineno}: expected 'filename<TAB>wnid...' with a wnid from wnids.txt"
            )
        test_paths.append(directory / "val" / "images" / fields[0])
        test_labels.append(class_of[fields[1]])

    size = (64, 64) if cfg.image_size is None else (cfg.image_size, cfg.image_size)
    return _bundle_from_files(cfg, (train_paths, train_labels), (test_paths, test_labels), len(wnids), size,
                              _TINYIMAGENET_STATS)


register_source(DataSource(names=("tinyimagenet",), check=_check_tinyimagenet, load=_load_tinyimagenet))
