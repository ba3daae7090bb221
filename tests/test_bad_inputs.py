"""Every entry point over the bad-input corpus: each case is reported with a message naming the
file and the problem (asserted on the message), and the rest of the work goes on."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from common.data.checks import BadImageError, load_checked
from common.data.image_folder import scan_image_folder
from common.data.manifest import Exclusions
from common.data.preprocess import VolumeSpec, prepare_volumes
from common.data.sources import load_bids
from common.experiment import labelled_split_frame
from common.io import save_torch
from common.metrics import BiasCorrection
from common.paths import DataRootNotFound
from common.splits import make_age_stratified_folds
from resnet3d.model import BrainAgeResNet3D
from tests.bad_inputs import IMAGE_CASES, TABLE_CASES, VOLUME_CASES, write_bad_bids, write_bad_image_folder, write_volume_corpus
from tests.conftest import write_folds

SPEC = VolumeSpec(shape=(16, 16, 16), spacing_mm=(3.0, 3.0, 3.0))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_volume_corpus(tmp_path_factory.mktemp("volumes"))


@pytest.mark.parametrize("case", sorted(VOLUME_CASES))
def test_checks_entry_point(corpus, case):
    with pytest.raises(BadImageError) as err:
        load_checked(corpus[case])
    assert VOLUME_CASES[case] in str(err.value) and str(corpus[case]) in str(err.value)


def test_preprocessing_entry_point(corpus, tmp_path):
    from common.data.manifest import make_manifest

    manifest = make_manifest([{"dataset": "corpus", "participant_id": k, "image_path": str(p), "age": 40.0}
                              for k, p in corpus.items()])
    exclusions = Exclusions()
    out = prepare_volumes(manifest, SPEC, tmp_path / "cache", exclusions, workers=2)
    assert list(out["participant_id"]) == ["ok"], "the good file is still preprocessed"
    reasons = {r["item"]: r["reason"] for r in exclusions.rows}
    for case, phrase in VOLUME_CASES.items():
        assert phrase in reasons[str(corpus[case])], case


def test_data_source_entry_point(tmp_path):
    manifest, exclusions = load_bids(write_bad_bids(tmp_path / "study"))
    text = "\n".join(f"{r['item']}: {r['reason']}" for r in exclusions.rows)
    for pid, phrase in TABLE_CASES.items():
        assert any(pid in line and phrase in line for line in text.splitlines()), (pid, phrase)
    ages = manifest.set_index("participant_id")["age"]
    assert ages["sub-00"] == pytest.approx(20.5), "decimal comma"
    assert pd.isna(ages["sub-na"]) and pd.isna(ages["sub-empty"]) and pd.isna(ages["sub-text"])
    assert pd.isna(ages["sub-noid"]), "an image without a participants row has no age (kept for prediction only)"
    assert "sub-dup" in set(manifest["participant_id"]) and pd.isna(ages["sub-dup"]), "duplicated IDs give no age"


def test_image_folder_entry_point(tmp_path):
    frame, classes, exclusions = scan_image_folder(write_bad_image_folder(tmp_path / "alz"))
    assert classes == ["ClassA", "ClassB"]
    assert len(frame) == 8 and set(frame["split"]) == {"train", "test"}
    reasons = {r["item"].split("/")[-1]: r["reason"] for r in exclusions.rows}
    for name, phrase in IMAGE_CASES.items():
        assert phrase in reasons[name], name
    assert "unknown class folder 'ClassZ'" in reasons["img.jpg"]


def test_missing_data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("DATA_ROOT", str(tmp_path / "nowhere"))
    with pytest.raises(DataRootNotFound, match="nowhere does not exist.*fetch_data.py"):
        labelled_split_frame("ixi_hh", None, tmp_path)


def _tiny_checkpoint(path, spec: VolumeSpec):
    model = BrainAgeResNet3D(widths=(4, 8, 8, 8), init_age_bias=40.0)
    save_torch(path, {"method": "resnet3d", "model_state": model.state_dict(), "preprocess": spec.to_dict(),
                      "model_args": {"dropout": 0.3, "widths": [4, 8, 8, 8]},
                      "bias_correction": BiasCorrection(slope=0.8, intercept=8.0).to_dict()})
    return path


def test_prediction_entry_point(corpus, tmp_path):
    from common import predict

    ckpt = _tiny_checkpoint(tmp_path / "best.pt", SPEC)
    inputs = ",".join(str(p) for p in corpus.values())
    out = predict.main(model_path=str(ckpt), inputs=inputs, output_dir=str(tmp_path / "pred"),
                       cache_dir=str(tmp_path / "cache"))
    table = pd.read_csv(out)
    assert list(table["participant_id"]) == ["ok"]
    excluded = pd.read_csv(tmp_path / "pred" / "excluded.csv")
    for case, phrase in VOLUME_CASES.items():
        row = excluded[excluded["item"] == str(corpus[case])]
        assert len(row) == 1 and phrase in row["reason"].iloc[0], case
    torch.save({"method": "resnet3d", "model_state": {}}, tmp_path / "untested.pt")
    with pytest.raises(ValueError, match="no bias correction"):
        predict.main(model_path=str(tmp_path / "untested.pt"), inputs=inputs, output_dir=str(tmp_path / "p1"))
    with pytest.raises(ValueError, match="none of the 1 inputs"):
        predict.main(model_path=str(ckpt), inputs=str(corpus["nan"]), output_dir=str(tmp_path / "p2"),
                     cache_dir=str(tmp_path / "cache"))


def test_training_entry_point(tmp_path):
    from resnet3d import train

    study = write_bad_bids(tmp_path / "data" / "study")
    manifest, _ = load_bids(study)
    subjects = manifest.dropna(subset=["age"]).groupby("participant_id", as_index=False)["age"].mean()
    folds = tmp_path / "results" / "splits" / "study.csv"
    ids = sorted(subjects["participant_id"])
    bad = [p for p in ids if p.startswith("sub-bad")]
    # every fold of the age-stratified folds draws a broken scan into validation: too few usable
    folds.parent.mkdir(parents=True)
    make_age_stratified_folds(subjects, seed=0).to_csv(folds, index=False)
    with pytest.raises(ValueError, match="too few usable subjects"):
        train.train(dataset="study", data_root=str(tmp_path / "data"), profile="cpu", epochs=1, batch_size=2,
                    image_size=40, spacing_mm=3.0, widths="4,8,8,8", pipeline="monai", run_name="few", fold=0,
                    runs_dir=str(tmp_path / "runs"), results_dir=str(tmp_path / "results"), cache_dir=str(tmp_path / "cache"))
    assert not (tmp_path / "runs" / "resnet3d" / "study" / "few" / "fold0" / "last.pt").exists(), "refused before training"
    write_folds(folds, ids, bad + ["sub-00", "sub-07"])  # the broken scans in the test fold: validation stays usable
    run = train.train(dataset="study", data_root=str(tmp_path / "data"), profile="cpu", epochs=1, batch_size=2,
                      image_size=40, spacing_mm=3.0, widths="4,8,8,8", pipeline="monai", run_name="bad", fold=0,
                      runs_dir=str(tmp_path / "runs"),
                      results_dir=str(tmp_path / "results"), cache_dir=str(tmp_path / "cache"), publish=False)
    excluded = pd.read_csv(f"{run}/exclusions.csv")
    text = "\n".join(excluded["item"] + ": " + excluded["reason"])
    for kind, phrase in VOLUME_CASES.items():
        assert any(f"sub-bad{kind.replace('_', '')}" in line and phrase in line for line in text.splitlines()), kind
    assert pd.read_csv(f"{run}/predictions_test.csv")["predicted_age"].notna().all()
