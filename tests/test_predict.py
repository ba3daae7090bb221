"""common/predict.py: every input kind, the fold ensemble, the model card, warnings, QC and saliency,
and every refusal (synthetic volumes, tiny models; the real-data check is in the closing note)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from common import predict
from common.data.preprocess import VolumeSpec, input_reference, qc_records
from common.data.standardize import StandardCache
from common.io import save_torch
from common.metrics import BiasCorrection
from resnet3d.model import BrainAgeResNet3D
from tests.conftest import write_volume

SPEC = VolumeSpec(shape=(16, 16, 16), spacing_mm=(3.0, 3.0, 3.0))


def _resnet_fold(folder, fold: int, bias: float, formula: str = "age_on_pred", method: str = "resnet3d"):
    torch.manual_seed(fold)
    model = BrainAgeResNet3D(widths=(4, 8, 8, 8), init_age_bias=bias)
    folder.mkdir(parents=True, exist_ok=True)
    save_torch(folder / "best.pt", {
        "method": method, "model_state": model.state_dict(), "preprocess": SPEC.to_dict(), "fold": fold,
        "dataset": "ixi_hh", "train_age_range": [20.0, 80.0], "commit": "abc", "val_score": 7.5, "best_epoch": 3,
        "model_args": {"dropout": 0.3, "widths": [4, 8, 8, 8]},
        "bias_correction": BiasCorrection(slope=0.9, intercept=4.0, formula=formula).to_dict()})
    (folder / "config.json").write_text(json.dumps({"profile": "cpu", "precision": "fp32"}))
    return folder / "best.pt"


@pytest.fixture
def run_root(tmp_path):
    root = tmp_path / "runs" / "resnet3d" / "ixi_hh" / "main-cpu"
    for k in range(2):
        _resnet_fold(root / f"fold{k}", k, 40.0 + 10 * k)
    _resnet_fold(root / "fold1.stale-20260101-000000", 1, 99.0, method="oasis_resblock")  # moved aside: ignored
    return root


def test_bids_entities_from_file_name_then_folders():
    assert predict.bids_entities("sub-01_ses-2_T1w.nii.gz") == ("sub-01", "ses-2")
    assert predict.bids_entities("study/sub-07/ses-b/anat/scan.nii.gz") == ("sub-07", "ses-b")
    assert predict.bids_entities("subjX/mri/T1.nii.gz") == ("", "")


def test_inputs_files_folders_and_tables(tmp_path):
    a = write_volume(tmp_path / "scans" / "a.nii.gz", seed=1)
    b = write_volume(tmp_path / "scans" / "nested" / "sub-01_ses-2_T1w.nii", seed=2)
    listed = predict.input_table(f"{a},{b}")
    assert listed[["participant_id", "session_id"]].values.tolist() == [["a", ""], ["sub-01", "ses-2"]]
    assert len(predict.input_table(str(tmp_path / "scans"))) == 2, "a folder is searched recursively"
    assert len(predict.input_table([str(a), str(a)])) == 1, "the same file named twice is one row"
    pd.DataFrame({"image_path": ["scans/a.nii.gz", str(b)], "age": ["41,5", "n/a"], "sex": ["female", ""],
                  "participant_id": ["p1", ""]}).to_csv(tmp_path / "in.tsv", sep="\t", index=False)
    table = predict.input_table(str(tmp_path / "in.tsv")).set_index("participant_id")
    assert table.loc["p1", "image_path"] == str(a), "relative to the table's folder"
    assert table.loc["p1", "age"] == pytest.approx(41.5) and table.loc["p1", "sex"] == "F"
    assert np.isnan(table.loc["sub-01", "age"]), "an ID from BIDS entities when the table gives none"
    missing = predict.input_table(str(tmp_path / "nowhere.nii.gz"))
    assert missing["participant_id"].tolist() == ["nowhere"], "kept: the input checks exclude it with its reason"


def test_distinct_files_never_share_an_id(tmp_path):
    for subject in ("subjA", "subjB"):
        write_volume(tmp_path / "fs" / subject / "mri" / "T1.nii.gz")
    ids = predict.input_table(str(tmp_path / "fs"))["participant_id"].tolist()
    assert ids == ["subjA_mri_T1", "subjB_mri_T1"]


def test_bids_dataset_with_and_without_participant_table(tmp_path):
    root = tmp_path / "bids"
    write_volume(root / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_T1w.nii.gz", seed=1)
    write_volume(root / "sub-01" / "ses-2" / "anat" / "sub-01_ses-2_T1w.nii.gz", seed=2)
    write_volume(root / "sub-02" / "anat" / "sub-02_T1w.nii.gz", seed=3)
    no_table = predict.input_table(str(root))
    assert no_table[["participant_id", "session_id"]].values.tolist() == [["sub-01", "ses-1"], ["sub-01", "ses-2"],
                                                                           ["sub-02", ""]]
    (root / "participants.tsv").write_text("participant_id\tage\tsex\nsub-01\t30\tM\nsub-02\t61.5\tF\n")
    (root / "sub-01" / "sub-01_sessions.tsv").write_text("session_id\tage\nses-1\t30\nses-2\t33.5\n")
    table = predict.input_table(str(root))
    assert table["age"].tolist() == [30.0, 33.5, 61.5] and table["sex"].tolist() == ["M", "M", "F"]


@pytest.mark.parametrize("bad, message", [
    ("", "no inputs given"), ("empty_folder", "no NIfTI files"), ("no_column.csv", "needs an image_path column")])
def test_input_refusals(tmp_path, bad, message):
    (tmp_path / "empty_folder").mkdir()
    (tmp_path / "no_column.csv").write_text("path\na.nii.gz\n")
    with pytest.raises(ValueError, match=message):
        predict.input_table(str(tmp_path / bad) if bad else "")


def test_load_models_finds_folds_and_refuses_what_cannot_predict(run_root, tmp_path):
    models = predict.load_models(run_root)
    assert [m.checkpoint["fold"] for m in models] == [0, 1], "fold<k>.stale-* folders are not models"
    assert [m.checkpoint["fold"] for m in predict.load_models(run_root, fold=1)] == [1]
    assert len(predict.load_models(run_root / "fold0")) == len(predict.load_models(run_root / "fold0" / "best.pt")) == 1
    card = models[0].card()
    assert card["method"] == "resnet3d" and "brain-age-estimation" in card["source"]
    assert card["bias_correction"]["formula"] == "age_on_pred" and card["train_age_range"] == [20.0, 80.0]
    with pytest.raises(FileNotFoundError, match="no model of fold 3"):
        predict.load_models(run_root, fold=3)
    with pytest.raises(FileNotFoundError, match="no best.pt"):
        predict.load_models(tmp_path)
    permuted = _resnet_fold(tmp_path / "permuted", 0, 40.0, method="resnet3d_permuted_ages")
    with pytest.raises(ValueError, match="has no predict"):
        predict.load_models(permuted)
    untested = tmp_path / "untested" / "best.pt"
    untested.parent.mkdir()
    torch.save({"method": "resnet3d", "model_state": {}, "preprocess": SPEC.to_dict()}, untested)
    with pytest.raises(ValueError, match="no bias correction"):
        predict.load_models(untested)
    _resnet_fold(tmp_path / "mixed" / "fold0", 0, 40.0)
    _resnet_fold(tmp_path / "mixed" / "fold1", 1, 40.0, method="oasis_resblock")
    with pytest.raises(ValueError, match="several methods"):
        predict.load_models(tmp_path / "mixed")


def test_ensemble_predictions_card_qc_and_exclusions(run_root, tmp_path):
    good = [write_volume(tmp_path / "in" / f"s{i}.nii.gz", seed=i) for i in range(3)]
    broken = write_volume(tmp_path / "in" / "broken.nii.gz", kind="truncated")
    pd.DataFrame({"image_path": [*map(str, good), str(broken)], "age": [30, 90, "", 40]}).to_csv(tmp_path / "in.csv",
                                                                                                 index=False)
    out = tmp_path / "out"
    table = pd.read_csv(predict.main(model_path=str(run_root), inputs=str(tmp_path / "in.csv"), output_dir=str(out),
                                     cache_dir=str(tmp_path / "cache")), keep_default_na=False)
    assert table["participant_id"].tolist() == ["s0", "s1", "s2"] and (table["n_models"] == 2).all()
    single = [pd.read_csv(predict.main(model_path=str(run_root), inputs=str(tmp_path / "in.csv"), fold=k,
                                       output_dir=str(tmp_path / f"f{k}"), cache_dir=str(tmp_path / "cache")))
              for k in (0, 1)]
    both = np.stack([s["predicted_age"].to_numpy(float) for s in single])
    assert np.allclose(table["predicted_age"].astype(float), both.mean(0), atol=1e-3), "ensemble mean of the fold models"
    assert np.allclose(table["predicted_age_sd"].astype(float), both.std(0, ddof=1), atol=1e-3)
    assert np.allclose(table["predicted_age_corrected"].astype(float), (0.9 * both + 4.0).mean(0), atol=1e-3)
    assert (table["correction_formula"] == "age_on_pred").all()
    assert "age 90 outside the training ages 20-80" in table.loc[1, "warnings"] and table.loc[0, "warnings"] == ""
    excluded = pd.read_csv(out / "excluded.csv")
    assert excluded["item"].tolist() == [str(broken)] and "truncated" in excluded["reason"].iloc[0]
    assert len(json.loads((out / "model_card.json").read_text())["models"]) == 2
    assert sorted(p.name for p in (out / "qc").iterdir()) == ["s0.png", "s1.png", "s2.png"]
    assert (out / "predict.log").read_text().count("wrote") == 1
    assert json.loads((out / "metrics.json").read_text())["n"] == 2 and (out / "scatter.png").exists()
    with pytest.raises(ValueError, match="none of the 1 inputs"):
        predict.main(model_path=str(run_root), inputs=str(broken), output_dir=str(tmp_path / "o2"),
                     cache_dir=str(tmp_path / "cache"))


def test_a_correction_that_needs_the_age_is_left_empty_without_it(tmp_path):
    _resnet_fold(tmp_path / "run" / "fold0", 0, 40.0, formula="gap_on_age")
    scans = [write_volume(tmp_path / f"s{i}.nii.gz", seed=i) for i in range(2)]
    pd.DataFrame({"image_path": [str(p) for p in scans], "age": ["50", ""]}).to_csv(tmp_path / "in.csv", index=False)
    table = pd.read_csv(predict.main(model_path=str(tmp_path / "run"), inputs=str(tmp_path / "in.csv"),
                                     output_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache")))
    assert table["correction_formula"].iloc[0] == "gap_on_age (needs the age)"
    assert np.isfinite(table.loc[0, "predicted_age_corrected"]) and np.isnan(table.loc[1, "predicted_age_corrected"])


def test_tsan_without_sex_is_predicted_as_both_and_says_so(tmp_path):
    from tsan.train import build_first_stage

    args = {"nb_filter": 2, "nb_block": 1, "downsample": 1}
    torch.manual_seed(0)
    model = build_first_stage(args)
    spec = VolumeSpec(shape=(24, 28, 24), spacing_mm=(3.0, 3.0, 3.0))
    folder = tmp_path / "tsan" / "fold0"
    folder.mkdir(parents=True)
    save_torch(folder / "best.pt", {"method": "tsan_stage1", "model_state": model.state_dict(), "preprocess": spec.to_dict(),
                                    "model_args": args, "fold": 0, "train_age_range": [20.0, 80.0],
                                    "bias_correction": BiasCorrection(slope=1.0, intercept=0.0, formula="identity").to_dict()})
    scans = [write_volume(tmp_path / f"s{i}.nii.gz", seed=i) for i in range(2)]
    pd.DataFrame({"image_path": [str(p) for p in scans], "sex": ["M", ""]}).to_csv(tmp_path / "in.csv", index=False)
    table = pd.read_csv(predict.main(model_path=str(folder), inputs=str(tmp_path / "in.csv"), output_dir=str(tmp_path / "o"),
                                     cache_dir=str(tmp_path / "cache")), keep_default_na=False)
    unknown = table.iloc[1]
    assert float(unknown["predicted_age"]) == pytest.approx(
        (float(unknown["predicted_age_as_male"]) + float(unknown["predicted_age_as_female"])) / 2, abs=1e-3)
    assert "sex unknown" in unknown["warnings"] and table.iloc[0]["warnings"] == ""
    assert table.iloc[0]["predicted_age_as_male"] == "", "a given sex is used as it is"


def test_saliency_maps_are_written(run_root, tmp_path):
    scan = write_volume(tmp_path / "s.nii.gz")
    predict.main(model_path=str(run_root / "fold0"), inputs=str(scan), output_dir=str(tmp_path / "o"), saliency=True,
                 cache_dir=str(tmp_path / "cache"))
    import nibabel as nib

    assert nib.load(tmp_path / "o" / "saliency" / "s.nii.gz").shape == SPEC.shape
    assert (tmp_path / "o" / "saliency" / "s.png").exists()


def test_scans_outside_the_training_input_domain_are_flagged(tmp_path):
    scans = [write_volume(tmp_path / f"s{i}.nii.gz", seed=i) for i in range(3)]
    spec = VolumeSpec(shape=(16, 16, 16), spacing_mm=(4.0, 4.0, 4.0), pipeline="mni_brain")
    cache = StandardCache(tmp_path / "cache", "Affine")
    cache.dir.mkdir(parents=True)
    for scan, similarity in zip(scans, (0.60, 0.65, 0.20)):
        cache.path_for(scan).with_suffix(".json").write_text(json.dumps({"similarity": similarity, "template_dice": 0.95,
                                                                         "brain_volume_ml": 1200.0}))
    extra = [write_volume(tmp_path / f"e{i}.nii.gz", seed=10 + i) for i in range(2)]  # a better registration; a big brain
    for scan, (similarity, volume) in zip(extra, ((0.90, 1200.0), (0.62, 1900.0))):
        cache.path_for(scan).with_suffix(".json").write_text(json.dumps({"similarity": similarity, "template_dice": 0.95,
                                                                         "brain_volume_ml": volume}))
    reference = input_reference([str(s) for s in scans[:2]], spec, tmp_path / "cache")
    assert reference == {"brain_volume_ml": [1200.0, 1200.0], "template_dice": [0.95, 0.95], "similarity": [0.6, 0.65]}
    assert input_reference([str(s) for s in scans], VolumeSpec(), tmp_path / "cache") is None, "no shared preprocessing"
    frame = predict.input_table([str(s) for s in scans + extra])
    fold = predict.FoldModel(tmp_path / "best.pt", {"method": "resnet3d", "train_age_range": [20, 80],
                                                    "input_reference": reference}, {})
    notes = predict.scan_warnings(frame, [fold], qc_records(frame["image_path"], spec, tmp_path / "cache"))
    by_id = dict(zip(frame["participant_id"], notes))
    assert by_id["s0"] == by_id["s1"] == by_id["e0"] == "", "inside the range, or registered better than any training scan"
    assert "similarity 0.2 below every training scan's (0.6-0.65)" in by_id["s2"]
    assert "brain_volume_ml 1900 outside the training scans' 1200-1200: another input domain" in by_id["e1"]
    stripped = write_volume(tmp_path / "stripped.nii.gz", seed=20)
    cache.path_for(stripped).with_suffix(".json").write_text(json.dumps({"similarity": 0.62, "template_dice": 0.95,
                                                                         "brain_volume_ml": 1200.0,
                                                                         "extracerebral_signal": 0.0}))
    frame = predict.input_table([str(stripped)])
    (note,) = predict.scan_warnings(frame, [fold], qc_records(frame["image_path"], spec, tmp_path / "cache"))
    assert "arrived skull-stripped" in note


def test_vgg16_svr_keeps_its_fitted_models_safely_and_predicts(tmp_path, monkeypatch):
    import skops.io as sio
    from sklearn.linear_model import Ridge

    from baselines.vgg16_svr import train as vgg

    rng = np.random.default_rng(0)
    scans = [write_volume(tmp_path / "in" / f"s{i}.nii.gz", seed=i) for i in range(8)]
    features = {str(p): rng.normal(size=(3, 5)).astype(np.float32) for p in scans}
    feats, ages = list(features.values()), np.linspace(20, 80, len(scans))
    train = np.arange(len(scans)) < 6
    card = {"dataset": "ixi_hh", "fold": 0, "profile": "cpu", "train_age_range": [20.0, 62.9],
            "features": {"weights": "none", "seed": 42, "keep_triplets": 3, "slicing": "voxel_axis2"},
            "bias_correction": BiasCorrection(slope=1.0, intercept=0.0, formula="identity").to_dict()}
    fitted = {"early": vgg.fit_early_fusion(feats, ages, train, C=98, epsilon=0.064),
              "late": vgg.fit_late_fusion(feats, ages, train, C=1, epsilon=0.1)}
    for fusion, (pred, model) in fitted.items():
        vgg.save_fitted(tmp_path / "run" / "fold0" / fusion, fusion, model, {**card, "method": f"vgg16_svr_{fusion}_randinit"})
        loaded, saved_card = vgg.load_fitted(tmp_path / "run" / "fold0" / fusion)
        assert np.allclose(vgg.predict_fitted(fusion, loaded, feats), pred) and saved_card["fusion"] == fusion
    (tmp_path / "evil").mkdir()
    (tmp_path / "evil" / vgg.MODEL_FILE).write_bytes(sio.dumps(Ridge().fit([[0.0], [1.0]], [0.0, 1.0])))
    with pytest.raises(ValueError, match="types this project never saves.*Ridge"):
        vgg.load_fitted(tmp_path / "evil")
    with pytest.raises(FileNotFoundError, match="no model.skops"):
        vgg.load_fitted(tmp_path)

    class StubCache:  # the VGG16 features of each file, without a VGG16
        def get(self, path):
            return features[str(path)]

    monkeypatch.setattr(vgg, "feature_cache", lambda card, cache_dir: StubCache())
    predict._cached_feature_cache.cache_clear()
    with pytest.raises(ValueError, match="several methods.*--method"):
        predict.main(model_path=str(tmp_path / "run"), inputs=str(tmp_path / "in"), output_dir=str(tmp_path / "o"))
    late = "vgg16_svr_late_randinit"
    table = pd.read_csv(predict.main(model_path=str(tmp_path / "run"), inputs=str(tmp_path / "in"), method=late,
                                     output_dir=str(tmp_path / "o"), cache_dir=str(tmp_path / "cache"), saliency=True))
    assert np.allclose(table["predicted_age"], fitted["late"][0], atol=1e-3) and (table["method"] == late).all()
    assert len(list((tmp_path / "o" / "qc").glob("*.png"))) == 8 and not (tmp_path / "o" / "saliency").exists()
    assert json.loads((tmp_path / "o" / "model_card.json").read_text())["models"][0]["features"]["slicing"] == "voxel_axis2"
    predict._cached_feature_cache.cache_clear()
