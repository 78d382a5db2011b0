"""Tests for baselines/published.{yaml,py}: the shipped reference numbers and the loader's validation."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

try:
    from baselines.published import (
        CONFIDENCE_LEVELS,
        DEFAULT_PATH,
        FRAME_COLUMNS,
        PublishedDataError,
        PublishedResult,
        load_published,
        published_frame,
    )
# Plain `pytest` without the project installed puts tests/ on sys.path, not the repository root.
except ModuleNotFoundError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from baselines.published import (
        CONFIDENCE_LEVELS,
        DEFAULT_PATH,
        FRAME_COLUMNS,
        PublishedDataError,
        PublishedResult,
        load_published,
        published_frame,
    )


@pytest.fixture(scope="module")
def shipped() -> list[PublishedResult]:
    return load_published()


@pytest.fixture(scope="module")
def by_id(shipped: list[PublishedResult]) -> dict[str, PublishedResult]:
    return {r.id: r for r in shipped}


# ------------------------------------------------------------------------------------------------
# The shipped file
# ------------------------------------------------------------------------------------------------


def test_shipped_file_loads_and_validates(shipped: list[PublishedResult]) -> None:
    assert DEFAULT_PATH.name == "published.yaml" and DEFAULT_PATH.is_file()
    assert len(shipped) >= 40
    ids = [r.id for r in shipped]
    assert len(ids) == len(set(ids))
    assert {r.confidence for r in shipped} <= set(CONFIDENCE_LEVELS)
    assert all(r.source and r.paper for r in shipped)


def test_explicit_path_matches_default(shipped: list[PublishedResult]) -> None:
    assert load_published(str(DEFAULT_PATH)) == shipped
    assert load_published(DEFAULT_PATH) == shipped


def test_key_numbers(by_id: dict[str, PublishedResult]) -> None:
    spikformer = by_id["spikformer-4-384-cifar10"]
    assert (spikformer.method, spikformer.dataset, spikformer.backbone) == (
        "Spikformer",
        "cifar10",
        "Spikformer-4-384",
    )
    assert spikformer.accuracy == pytest.approx(95.19)
    assert spikformer.timesteps == 4
    assert spikformer.confidence == "read"

    datta = by_id["datta-dynamic-timesteps-cifar10"]
    assert datta.dataset == "cifar10"
    assert datta.accuracy == pytest.approx(95.97)
    assert datta.timesteps == pytest.approx(4.97)
    assert "2311.16456" in datta.paper

    seenn = by_id["seenn-ii-resnet19-cifar10"]
    assert (seenn.dataset, seenn.backbone) == ("cifar10", "ResNet-19")
    assert seenn.accuracy == pytest.approx(96.1)
    assert seenn.timesteps == pytest.approx(1.08)


def test_conflicts_and_tags_are_recorded(by_id: dict[str, PublishedResult]) -> None:
    # Spikformer 4-384 400E on CIFAR-10: remembered 95.51 vs 95.41 listed in the STEP README.
    remembered = by_id["spikformer-4-384-400e-cifar10"]
    listed = by_id["spikformer-4-384-400e-cifar10-step-listing"]
    assert (remembered.accuracy, remembered.confidence) == (pytest.approx(95.51), "memory")
    assert (listed.accuracy, listed.confidence) == (pytest.approx(95.41), "read")
    assert "95.41" in (remembered.note or "") and "95.51" in (listed.note or "")

    # The two energy conventions for Spikformer ImageNet are separate entries with their own tags.
    recomputed = by_id["spikformer-8-384-imagenet-energy-spikingformer"]
    original = by_id["spikformer-8-384-imagenet-energy-paper"]
    assert (recomputed.energy_mj, recomputed.confidence) == (pytest.approx(12.43), "read")
    assert (original.energy_mj, original.confidence) == (pytest.approx(7.73), "memory")
    assert recomputed.other["energy_script"] != original.other["energy_script"]

    # AT-SNN: a relative claim only, with no absolute numbers.
    at_snn = by_id["at-snn-token-reduction-cifar100"]
    assert at_snn.token_reduction == pytest.approx(0.424)
    assert at_snn.accuracy is None and at_snn.energy_mj is None and at_snn.timesteps is None
    assert "best" in at_snn.other["relative_to"]


def test_spike_driven_transformer_and_stas_entries(by_id: dict[str, PublishedResult]) -> None:
    # the second backbone's published CIFAR numbers (model.backbone: sdt), with the official recipe
    for dataset, accuracy, params in (("cifar10", 95.6, 10.23), ("cifar100", 78.4, 10.28)):
        sdt = by_id[f"sdt-2-512-{dataset}"]
        assert (sdt.dataset, sdt.backbone, sdt.timesteps, sdt.confidence) == (dataset, "SDT-2-512", 4, "read")
        assert sdt.accuracy == pytest.approx(accuracy) and "NeurIPS 2023" in sdt.paper
        assert sdt.other["params_m"] == pytest.approx(params)
        assert (sdt.other["epochs"], sdt.other["batch_size"]) == (300, 64)
        assert f"conf/{dataset}/2_512_300E_t4.yml" in sdt.other["config"] and "STEP" in sdt.source
    # STAS: energy savings only (the schema's other.energy_reduction), from the abstract alone
    for dataset, saving in (("cifar10", 0.459), ("cifar100", 0.438), ("imagenet", 0.301)):
        stas = by_id[f"stas-energy-reduction-{dataset}"]
        assert stas.dataset == dataset and stas.other["energy_reduction"] == pytest.approx(saving)
        assert stas.other["qualifier"] == "up to" and "2508.14138" in stas.paper + stas.source
        assert stas.accuracy is None and stas.energy_mj is None and stas.token_reduction is None
        assert "ONLY THE ABSTRACT IS PUBLIC" in (stas.note or "")
    # an energy-saving-only entry carries no number on any report axis: it is never drawn
    from suite.report.published import published_points

    frame = published_frame([by_id["stas-energy-reduction-cifar10"]])
    for metric in ("energy_exact_uj", "timesteps_mean"):
        assert published_points(frame, metric, pd.DataFrame()).empty


def test_event_camera_entries(by_id: dict[str, PublishedResult]) -> None:
    # wave3.md "Event datasets": the QKFormer log is read there, the Spikformer numbers are marked unverified
    qk = by_id["qkformer-cifar10_dvs"]
    assert (qk.dataset, qk.timesteps, qk.accuracy, qk.confidence) == ("cifar10_dvs", 16, 84.1, "read")
    assert qk.other["params_m"] == pytest.approx(1.50)
    for key, dataset, steps, accuracy in (("spikformer-cifar10_dvs-t10", "cifar10_dvs", 10, 78.9),
                                          ("spikformer-2-256-cifar10_dvs", "cifar10_dvs", 16, 80.9),
                                          ("spikformer-dvs128_gesture-t10", "dvs128_gesture", 10, 96.9),
                                          ("spikformer-dvs128_gesture-t16", "dvs128_gesture", 16, 98.3)):
        entry = by_id[key]
        assert (entry.dataset, entry.timesteps, entry.accuracy, entry.confidence) == (dataset, steps, accuracy, "memory")


def test_every_energy_names_its_script(shipped: list[PublishedResult]) -> None:
    for r in shipped:
        if r.energy_mj is not None:
            assert r.other and r.other.get("energy_script"), r.id


# ------------------------------------------------------------------------------------------------
# Validation errors (bad files written into tmp_path)
# ------------------------------------------------------------------------------------------------

GOOD_ENTRY = {
    "id": "toy-entry",
    "method": "Toy",
    "paper": "Nobody, nowhere, 2099",
    "dataset": "cifar10",
    "backbone": "Spikformer-4-384",
    "timesteps": 4,
    "accuracy": 95.0,
    "source": "nowhere",
    "confidence": "read",
}


def _write(tmp_path: Path, entries: list[dict]) -> Path:
    path = tmp_path / "published.yaml"
    path.write_text(
        yaml.safe_dump({"schema_version": 1, "results": entries}, sort_keys=False), encoding="utf-8"
    )
    return path


def _entry(**changes: object) -> dict:
    entry = copy.deepcopy(GOOD_ENTRY)
    entry.update(changes)
    return entry


def test_good_toy_file_loads(tmp_path: Path) -> None:
    (result,) = load_published(_write(tmp_path, [_entry()]))
    assert result.accuracy == 95.0 and result.timesteps == 4.0


def test_duplicate_id_is_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path, [_entry(), _entry(accuracy=90.0)])
    with pytest.raises(PublishedDataError, match=r"entry 1 \(id 'toy-entry'\): field 'id': duplicate id"):
        load_published(path)


def test_bad_confidence_is_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path, [_entry(confidence="certain")])
    with pytest.raises(PublishedDataError, match=r"id 'toy-entry'\): field 'confidence'") as info:
        load_published(path)
    assert "certain" in str(info.value) and "memory" in str(info.value)


def test_accuracy_above_100_is_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path, [_entry(accuracy=120)])
    with pytest.raises(PublishedDataError, match=r"id 'toy-entry'\): field 'accuracy': .*100"):
        load_published(path)


def test_unknown_key_is_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path, [_entry(top5=99.0)])
    with pytest.raises(PublishedDataError, match=r"id 'toy-entry'\): unknown key 'top5'"):
        load_published(path)


def test_python_yaml_tag_is_rejected_and_not_executed(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text(
        "schema_version: 1\n"
        "results:\n"
        "  - id: evil\n"
        '    method: !!python/object/apply:os.system ["echo hi"]\n',
        encoding="utf-8",
    )
    with pytest.raises(PublishedDataError, match=r"safe_load.*python"):
        load_published(path)
    assert "hi" not in capfd.readouterr().out


@pytest.mark.parametrize(
    ("changes", "pattern"),
    [
        ({"timesteps": 0}, r"field 'timesteps'"),
        ({"energy_mj": -1.0}, r"field 'energy_mj'"),
        ({"accuracy": 0}, r"field 'accuracy'"),
        ({"accuracy": float("nan")}, r"field 'accuracy'"),
        ({"accuracy": "95.0"}, r"field 'accuracy'"),
        ({"token_reduction": 1.5, "other": {"relative_to": "dense"}}, r"field 'token_reduction'"),
        ({"token_reduction": 0.3}, r"token_reduction needs other.relative_to"),
        ({"dataset": "cifar-10"}, r"field 'dataset'"),
        ({"id": "Has Spaces"}, r"field 'id'"),
        ({"accuracy": None, "timesteps": None}, r"at least one of accuracy"),
    ],
)
def test_field_constraints(tmp_path: Path, changes: dict, pattern: str) -> None:
    with pytest.raises(PublishedDataError, match=pattern):
        load_published(_write(tmp_path, [_entry(**changes)]))


def test_missing_field_and_entry_without_id_name_the_index(tmp_path: Path) -> None:
    entry = _entry()
    del entry["id"]
    with pytest.raises(PublishedDataError, match=r"entry 1: field 'id': required field is missing"):
        load_published(_write(tmp_path, [_entry(id="fine"), entry]))


def test_all_problems_are_reported_together(tmp_path: Path) -> None:
    path = _write(tmp_path, [_entry(id="a", accuracy=120), _entry(id="b", confidence="sure")])
    with pytest.raises(PublishedDataError) as info:
        load_published(path)
    message = str(info.value)
    assert "2 problem(s)" in message and "id 'a'" in message and "id 'b'" in message


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("- just: a list\n", r"top level must be a mapping"),
        ("schema_version: 2\nresults: []\n", r"schema_version"),
        ("schema_version: 1\nresults: []\n", r"non-empty list"),
        ("schema_version: 1\nextra: 1\nresults: []\n", r"unknown top-level key"),
        ("schema_version: 1\nresults:\n  - 42\n", r"entry 0: must be a mapping"),
    ],
)
def test_bad_top_level(tmp_path: Path, text: str, pattern: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(PublishedDataError, match=pattern):
        load_published(path)


# ------------------------------------------------------------------------------------------------
# published_frame
# ------------------------------------------------------------------------------------------------


def test_published_frame_all_rows(shipped: list[PublishedResult]) -> None:
    frame = published_frame(shipped)
    assert list(frame.columns) == list(FRAME_COLUMNS)
    assert len(frame) == len(shipped)
    assert frame["id"].tolist() == [r.id for r in shipped]
    assert (frame["kind"] == "published").all()
    assert frame["accuracy"].dtype == float


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100", "imagenet"])
def test_published_frame_filters_by_dataset(shipped: list[PublishedResult], dataset: str) -> None:
    frame = published_frame(shipped, dataset=dataset)
    expected = [r.id for r in shipped if r.dataset == dataset]
    assert expected, dataset
    assert frame["id"].tolist() == expected
    assert set(frame["dataset"]) == {dataset}


def test_published_frame_values_and_edge_cases(shipped: list[PublishedResult]) -> None:
    cifar10 = published_frame(shipped, "cifar10").set_index("id")
    assert cifar10.loc["spikformer-4-384-cifar10", "accuracy"] == pytest.approx(95.19)
    assert cifar10.loc["seenn-ii-resnet19-cifar10", "timesteps"] == pytest.approx(1.08)

    empty = published_frame(shipped, "tinyimagenet")
    assert empty.empty and list(empty.columns) == list(FRAME_COLUMNS)

    with pytest.raises(ValueError, match="unknown dataset"):
        published_frame(shipped, "cifar-10")
