"""Baselines: OASIS ResBlock regressor, VGG16 triplet features + SVR fusions, reference rows."""

from __future__ import annotations

import urllib.error

import numpy as np
import pytest
import torch

from baselines.oasis_resblock.model import OasisResBlockRegressor
from baselines.oasis_resblock.train import DenormalisedAge, ZScoredMSE
from baselines.vgg16_svr.features import VGG16Features, central_positions, source_triplets, standard_triplets
from baselines.vgg16_svr.train import fit_early_fusion, fit_late_fusion
from common.data.preprocess import centred_target_affine
from common.pretrained import WeightsUnavailableError
from common.training import WarmupThenPlateau


def test_oasis_regressor_parameter_count_matches_tutorial():
    assert sum(p.numel() for p in OasisResBlockRegressor().parameters()) == 894_529


def test_oasis_forward_backward_tiny():
    torch.manual_seed(0)
    model = DenormalisedAge(OasisResBlockRegressor(), age_mean=70.0, age_std=8.0).train()
    x = torch.randn(2, 1, 16, 16, 16)
    out = model(x)
    assert out.shape == (2,) and torch.isfinite(out).all()
    loss = ZScoredMSE(70.0, 8.0)(out, torch.tensor([65.0, 80.0]))
    loss.backward()
    assert model.net.stem[0].weight.grad.abs().sum() > 0
    assert {"age_mean", "age_std"} <= set(model.state_dict()), "age statistics travel with the checkpoint"


def test_zscored_mse_is_mse_in_standard_units():
    loss = ZScoredMSE(50.0, 10.0)(torch.tensor([60.0]), torch.tensor([40.0]))
    assert float(loss) == pytest.approx(4.0)


def test_centred_grid_keeps_the_head_in_view():
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = [300.0, -500.0, 80.0]  # a volume far from the world origin
    target = centred_target_affine(affine, (160, 200, 180), (64, 64, 64), (4.0, 4.0, 4.0))
    centre_out = target @ np.array([31.5, 31.5, 31.5, 1.0])
    centre_in = affine @ np.array([79.5, 99.5, 89.5, 1.0])
    np.testing.assert_allclose(centre_out, centre_in)
    assert np.allclose(np.diag(target)[:3], 4.0)


def test_warmup_then_plateau():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = WarmupThenPlateau(opt, warmup_epochs=3, factor=0.5, patience=1, min_lr=1e-6)
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step(1.0)  # never improves
    # the tutorial: lr/3, 2lr/3, lr; its plateau counts from epoch 0, so the first cut comes right after
    assert lrs[:3] == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3])
    assert lrs[3] == pytest.approx(5e-4) and lrs[-1] < lrs[3]
    state = sched.state_dict()
    other = WarmupThenPlateau(torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3), 3, 0.5, 1, 1e-6)
    other.load_state_dict(state)
    assert other.epoch == 8


def test_triplets_count_order_and_channels():
    vol = np.zeros((4, 5, 10), np.float32)
    for z in range(10):
        vol[..., z] = z
    trip = standard_triplets(vol)
    assert trip.shape == (3, 3, 4, 5), "10 slices -> 3 non-overlapping triplets, the last slice dropped"
    np.testing.assert_allclose(trip[1, :, 0, 0], np.array([3, 4, 5]) / 9.0)  # min-max scaled
    # the source: raw voxel axis 2, whatever the orientation, its first 120 slices, raw values / 255
    raw = np.broadcast_to(np.arange(150, dtype=np.float32), (4, 5, 150)).copy()
    src = source_triplets(raw)
    assert src.shape == (40, 3, 4, 5) and src[-1, -1, 0, 0] == pytest.approx(119 / 255)
    assert list(central_positions(40, 12)) == list(range(14, 26)) and len(central_positions(5, None)) == 5


def test_vgg16_feature_size_and_missing_weights(tmp_path, monkeypatch):
    feats = VGG16Features("none")
    out = feats(torch.rand(1, 3, 40, 50))
    assert out.shape == (1, 25088), "block5_pool: 7x7x512"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsUnavailableError, match="vgg16 IMAGENET1K_V1 weights are not available"):
        VGG16Features("IMAGENET1K_V1")


def test_svr_fusions_use_training_rows_only():
    rng = np.random.default_rng(0)
    n, t, f = 30, 4, 6
    ages = rng.uniform(20, 80, n)
    feats = [rng.standard_normal((t, f)) + a / 20 for a in ages]
    train = np.arange(n) < 20
    early, _ = fit_early_fusion(feats, ages, train, C=98, epsilon=0.064)
    late, _ = fit_late_fusion(feats, ages, train, C=1, epsilon=0.1)
    poisoned = [x if keep else x * 100 for x, keep in zip(feats, train)]
    ages_poisoned = np.where(train, ages, 0.0)
    early2, _ = fit_early_fusion(poisoned, ages_poisoned, train, C=98, epsilon=0.064)
    late2, _ = fit_late_fusion(poisoned, ages_poisoned, train, C=1, epsilon=0.1)
    np.testing.assert_allclose(early[train], early2[train])
    np.testing.assert_allclose(late[train], late2[train])
    assert np.corrcoef(early[~train], ages[~train])[0, 1] > 0.5
    with pytest.raises(ValueError, match="same triplet positions"):
        fit_late_fusion(feats[:-1] + [feats[-1][:2]], ages, train, C=1, epsilon=0.1)


def test_early_fusion_holds_a_held_out_feature_inside_its_training_range():
    """A feature all but constant in training (one subject's tiny value) that a held-out scan lights up
    gave -1,043 years through the source's StandardScaler + SVR; the training fit must stay the source's."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVR

    rng = np.random.default_rng(1)
    n, f = 40, 8
    ages = rng.uniform(20, 80, n)
    x = (rng.standard_normal((n, f)) + ages[:, None] / 20).astype(np.float32)  # cached features are float32
    x[:, 0] = 0.0
    x[3, 0] = 4e-8  # one training subject, a rounding-level value: training SD ~7e-9
    train = np.arange(n) < 30
    x[35, 0] = 1e-3  # a held-out scan lights the feature up: 150,000 training SDs
    feats = [row[None, :] for row in x]  # one triplet position per subject
    guarded, _ = fit_early_fusion(feats, ages, train, C=98, epsilon=0.064)
    source = make_pipeline(StandardScaler(), SVR(kernel="linear", C=98, epsilon=0.064)).fit(x[train], ages[train])
    np.testing.assert_allclose(guarded[train], source.predict(x[train]), atol=1e-3)
    assert abs(source.predict(x[35:36])[0] - ages[35]) > 100, "the trap this guards against"
    assert abs(guarded[35] - ages[35]) < 30


def test_random_init_vgg16_is_seeded():
    a, b, c = VGG16Features("none", seed=0), VGG16Features("none", seed=0), VGG16Features("none", seed=1)
    assert torch.equal(a.features[0].weight, b.features[0].weight), "same seed, same random weights"
    assert not torch.equal(a.features[0].weight, c.features[0].weight)


def test_vgg16_svr_predicts_a_brain_that_is_not_a_file(tmp_path):
    """The invariance benchmark's path: features of an MNI brain in memory, through a saved fusion."""
    import types

    from baselines.vgg16_svr.features import FeatureCache
    from baselines.vgg16_svr.train import feature_cache, predict_fitted, save_fitted
    from scripts.bench import _predict_brains

    rng = np.random.default_rng(0)
    brains = [rng.random((12, 14, 18)).astype(np.float32) for _ in range(4)]  # 6 triplets each
    card = {"method": "vgg16_svr_early_randinit", "features": {"weights": "none", "seed": 0, "keep_triplets": 2,
                                                                "slicing": "mni_axial"}}
    cache = feature_cache(card, tmp_path)
    feats = [cache.from_brain(b) for b in brains]
    assert feats[0].shape == (2, 25088) and feats[0].dtype == np.float32
    central = standard_triplets(brains[0])[central_positions(6, 2)]
    np.testing.assert_array_equal(feats[0], cache.extractor(torch.from_numpy(central)).numpy())
    _, model = fit_early_fusion(feats, np.array([20.0, 40.0, 60.0, 80.0]), np.ones(4, bool), C=1.0, epsilon=0.1)
    save_fitted(tmp_path / "early", "early", model, card)
    wrapped = [types.SimpleNamespace(brain=b) for b in brains]
    predicted = _predict_brains(str(tmp_path / "early"), wrapped, None)
    np.testing.assert_allclose(predicted, predict_fitted("early", model, feats))
    # With a memo (the benchmark's, shared by early and late fusion) each brain's features are extracted once.
    memo: dict = {}
    np.testing.assert_allclose(_predict_brains(str(tmp_path / "early"), wrapped, None, memo), predicted)
    assert len(memo) == 4
    memo[next(iter(memo))] = np.zeros_like(feats[0])  # a second run reads the memo, not the extractor
    again = _predict_brains(str(tmp_path / "early"), wrapped, None, memo)
    np.testing.assert_allclose(again[1:], predicted[1:])
    np.testing.assert_allclose(again[0], predict_fitted("early", model, [np.zeros_like(feats[0])]))
    with pytest.raises(ValueError, match="need slicing 'mni_axial'"):
        FeatureCache(tmp_path, cache.extractor, "none", 2, slicing="voxel_axis2").from_brain(brains[0])
