"""TSAN building blocks: exact sizes of the public code, tiny forward/backward of both stages, the
asymmetric convolution and SE blocks, discretisation, the age-difference and ranking losses, and a
sorter pretraining smoke run."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tsan import train as tsan_train
from tsan.model import (
    AsymmetricConv3d,
    ScaleDense,
    ScaleDenseBlock,
    SecondStageScaleDense,
    SqueezeExcitation3d,
    discretize_age,
    init_weights,
    sex_one_hot,
)
from tsan.ranking import RankingLoss, SoDeepSorter, age_difference_loss, descending_rank, pretrain_sorter, random_sequences


def _count(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_parameter_counts_match_the_public_code():
    assert _count(ScaleDense(8, 5, True)) == 102_378_307
    assert _count(SecondStageScaleDense(8, 5, True)) == 102_379_411
    assert _count(SoDeepSorter(8)) == 8_474_632
    assert _count(SoDeepSorter(32)) == 9_457_696


def test_scale_dense_channels_double_per_block():
    block = ScaleDenseBlock(8, 16)
    out = block(torch.randn(2, 8, 8, 8, 8))
    assert out.shape == (2, 24, 4, 4, 4), "8 pooled input channels + 16 new ones, half the size"
    assert ScaleDense(8, 5).trunk.out_channels == 1944


def test_asymmetric_conv_is_the_sum_of_its_branches():
    torch.manual_seed(0)
    conv = AsymmetricConv3d(3, 4).eval()
    x = torch.randn(1, 3, 5, 6, 7)
    out = conv(x)
    assert out.shape == (1, 4, 5, 6, 7)
    assert torch.allclose(out, sum(b(x) for b in conv.branches), atol=1e-6)
    assert [tuple(b[0].kernel_size) for b in conv.branches] == [(3, 3, 3), (1, 1, 3), (3, 1, 1), (1, 3, 1)]


def test_squeeze_excitation_rescales_channels():
    se = SqueezeExcitation3d(32, reduction=16)
    assert se.fc1.out_features == 2
    x = torch.rand(2, 32, 3, 3, 3)
    out = se(x)
    ratio = out / x
    assert torch.allclose(ratio, ratio[:, :, :1, :1, :1].expand_as(ratio), atol=1e-6), "one weight per channel"
    assert ((ratio > 0) & (ratio < 1)).all()


@pytest.mark.parametrize("use_sex", [True, False])
def test_tiny_stages_forward_backward(use_sex):
    torch.manual_seed(0)
    x = torch.randn(2, 1, 24, 28, 24)
    sex = sex_one_hot(torch.tensor([0, 1]))
    stage1 = ScaleDense(nb_filter=2, nb_block=2, use_sex=use_sex)
    stage1.apply(init_weights)
    age = stage1(x, sex)
    assert age.shape == (2, 1) and (age >= 0).all(), "stage 1 ends in ReLU"
    age.sum().backward()
    assert stage1.trunk.stem[0].weight.grad is not None
    stage2 = SecondStageScaleDense(nb_filter=2, nb_block=2, use_sex=use_sex)
    d = discretize_age(torch.tensor([[42.4], [57.6]]))
    residual, pred = stage2(x, sex, d)
    assert residual.shape == pred.shape == (2, 1)
    assert torch.allclose(pred, residual + d)
    (residual.pow(2).sum() + pred.sum()).backward()
    assert stage2.discrete_age_fc[0].weight.grad is not None


def test_normalized_d_variant_only_changes_the_d_input():
    torch.manual_seed(0)
    plain = SecondStageScaleDense(2, 2)
    variant = SecondStageScaleDense(2, 2, normalize_discrete_age=True, age_mean=50.0, age_std=10.0)
    variant.load_state_dict(plain.state_dict() | {"age_stats": variant.age_stats})
    x, sex = torch.randn(1, 1, 24, 28, 24), sex_one_hot(torch.tensor([1]))
    plain.eval(), variant.eval()
    r1, _ = plain(x, sex, torch.tensor([[1.0]]))
    r2, p2 = variant(x, sex, torch.tensor([[60.0]]))
    assert torch.allclose(r1, r2, atol=1e-5), "(60 - 50) / 10 = 1 reaches the d branch"
    assert torch.allclose(p2, r2 + 60.0), "the prediction still adds d in years"


def test_discretize_age_halves_and_edges():
    ages = torch.tensor([62.4, 62.5, 65.0, 67.49, 0.0, 2.5, 7.4999, 89.99])
    assert discretize_age(ages).tolist() == [60.0, 65.0, 65.0, 65.0, 0.0, 5.0, 5.0, 90.0]
    assert discretize_age(torch.tensor([11.0]), step=2).tolist() == [12.0], "11 is half way between 10 and 12: up"
    with pytest.raises(ValueError):
        discretize_age(ages, step=0)


def test_sex_one_hot_rejects_unknown_codes():
    assert sex_one_hot(torch.tensor([1, 0])).tolist() == [[0.0, 1.0], [1.0, 0.0]]
    with pytest.raises(ValueError, match="0 \\(female\\) or 1"):
        sex_one_hot(torch.tensor([2]))


def test_age_difference_loss_hand_worked():
    pred = torch.tensor([10.0, 20.0, 40.0])
    true = torch.tensor([12.0, 20.0, 30.0])
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 3, (3,), generator=g)
    b = torch.randint(0, 3, (3,), generator=g)
    # errors e = pred - true = [-2, 0, 10]; each pair contributes (e_a - e_b)^2
    e = [-2.0, 0.0, 10.0]
    expected = sum((e[i] - e[j]) ** 2 for i, j in zip(a.tolist(), b.tolist())) / 3
    loss = age_difference_loss(pred, true, torch.Generator().manual_seed(0))
    assert loss.item() == pytest.approx(expected)
    assert age_difference_loss(true + 5.0, true).item() == 0.0, "a constant offset costs nothing"


def test_descending_rank_convention_and_ties():
    assert descending_rank(torch.tensor([3.0, 1.0, 2.0, 2.0])).tolist() == [0.25, 1.0, 0.625, 0.625]


@pytest.fixture(scope="module")
def small_sorter():
    torch.manual_seed(0)
    sorter, report = pretrain_sorter(seq_len=6, steps=300, batch_size=64, lr=3e-3, lr_step=150, hidden=32, n_val=256)
    return sorter, report


def test_tied_rank_sorter_trains_on_sequences_with_ties():
    """Stage 1's sorter is a tied-rank one (the source's Tied_rank_best_lstmla_slen_32): its training
    sequences hold ties; stage 2's (best_lstmla_slen_32) are continuous."""
    rng = np.random.default_rng(0)
    tied = random_sequences(400, 32, rng, tied=True)
    plain = random_sequences(400, 32, np.random.default_rng(0))
    with_ties = np.mean([len(np.unique(row)) < 32 for row in tied])
    assert 0.3 < with_ties < 0.7 and np.mean([len(np.unique(row)) < 32 for row in plain]) < 0.15
    assert tsan_train.STAGE_SORTER_TIED == {1: True, 2: False}


def test_sorter_pretraining_smoke(small_sorter, tmp_path):
    sorter, report = small_sorter
    assert report["val_spearman"] > 0.8, report
    _, saved = pretrain_sorter(seq_len=4, steps=3, batch_size=8, hidden=8, n_val=16, out_path=tmp_path / "s.pt")
    from tsan.ranking import load_sorter

    loaded, again = load_sorter(tmp_path / "s.pt")
    assert again == saved and loaded.seq_len == 4
    with pytest.raises(FileNotFoundError, match="pretrain_sorter.sh"):
        load_sorter(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="drop_last"):
        sorter(torch.zeros(1, 5))


def test_ranking_loss_small_for_ordered_batch_and_gradient_for_wrong_one(small_sorter):
    sorter, _ = small_sorter
    loss = RankingLoss(sorter, beta=1.0)
    true = torch.linspace(-0.9, 0.9, 6).reshape(6, 1)
    ordered = loss.ranking(true.clone(), true)
    wrong = true.flip(0).clone().requires_grad_(True)
    reversed_loss = loss.ranking(wrong, true)
    assert ordered.item() < 0.02 and reversed_loss.item() > 5 * ordered.item()
    reversed_loss.backward()
    assert wrong.grad is not None and wrong.grad.abs().sum() > 0
    assert all(p.grad is None for p in sorter.parameters()), "the sorter stays frozen"


def test_two_stages_end_to_end(tmp_path):
    import json

    import pandas as pd

    from tests.conftest import fold_result, write_study
    from tsan import train as tsan

    sexes = ["n/a" if i == 5 else "MF"[i % 2] for i in range(24)]
    write_study(tmp_path, 24, shape=(24, 28, 24), sexes=sexes, age=lambda i: 20 + 3.5 * i)
    dirs = dict(data_root=str(tmp_path / "data"), runs_dir=str(tmp_path / "runs"), results_dir=str(tmp_path / "results"),
                cache_dir=str(tmp_path / "cache"))
    for tied in (True, False):  # stage 1 loads a tied-rank sorter, stage 2 a non-tied one (as the source)
        pretrain_sorter(seq_len=4, steps=5, batch_size=8, hidden=8, n_val=16, tied=tied,
                        out_path=tsan.sorter_path(4, tsan.PROFILES["cpu"], dirs["cache_dir"], tied=tied))
    run1 = tsan.train_first_stage(dataset="study", profile="cpu", epochs=2, batch_size=4, nb_filter=2, nb_block=2,
                                  downsample=4, fold=0,
                                  registration="monai", smooth_fwhm_mm=0.0, use_dataset_mask=False, run_name="s1", **dirs)
    assert Path(run1) == tmp_path / "runs" / "tsan_stage1" / "study" / "s1" / "fold0"
    doc1 = fold_result(run1, "tsan_stage1__study")
    assert doc1["fold"] == 0 and not (tmp_path / "results" / "tsan_stage1__study.json").exists(), "a fold result is not published"
    assert set(doc1["metrics"]["source_metrics"]) == {"mae", "pearson_r", "spearman_pred_age", "spearman_gap_age",
                                                       "mean_gap", "sd_error"}
    excluded = pd.read_csv(f"{run1}/exclusions.csv")
    assert excluded["reason"].str.contains("sex unknown").sum() == 1
    run2 = tsan.train_second_stage(first_stage=run1, epochs=1, batch_size=4, run_name="s2", fold=0, **dirs)
    doc2 = fold_result(run2, "tsan_stage2__study")
    analysis = doc2["metrics"]["stage2_analysis"]
    assert analysis["n"] == doc2["metrics"]["raw"]["n"] and analysis["stage1_mae"] == pytest.approx(doc1["metrics"]["raw"]["mae"])
    sources = analysis["residual_sources"]
    assert sources["train"]["n"] == doc2["n_subjects"]["train"] and set(sources["test"]["branch_sd"]) == {"trunk", "sex", "d"}
    residuals = pd.read_csv(f"{run2}/residuals_test.csv")
    assert (residuals["d"] % 5 == 0).all()
    assert (tmp_path / "runs" / "tsan_stage2" / "study" / "s2" / "fold0" / "residuals_test.png").exists()
    with pytest.raises(ValueError, match="fold"):  # stage 2 of fold 1 on a stage 1 of fold 0
        tsan.train_second_stage(first_stage=run1, epochs=1, batch_size=4, run_name="s2", fold=1, **dirs)
    run_v = tsan.train_second_stage(first_stage=run1, variant="normalized_d", epochs=1, batch_size=4, run_name="v", fold=0,
                                    **dirs)
    assert fold_result(run_v, "tsan_stage2_normd__study")
    run3 = tsan.train_second_stage(first_stage=run1, variant="out_of_fold", epochs=1, batch_size=4, run_name="o", fold=0, **dirs)
    oof = pd.read_csv(f"{run3}/out_of_fold_stage1.csv")
    config = json.loads((tmp_path / "runs" / "tsan_stage2_oof" / "study" / "o" / "fold0" / "config.json").read_text())
    n_train = config["n_images"]["train"]
    assert len(oof) == n_train and oof["participant_id"].is_unique and sorted(oof["fold"].unique()) == [0, 1]
    for k in (0, 1):  # each inner model trained without the subjects it predicts, inside outer fold 0
        inner = tmp_path / "runs" / "tsan_stage1_fold" / "study" / f"o-inner{k}" / "fold0" / "config.json"
        fold_cfg = json.loads(inner.read_text())
        assert fold_cfg["n_images"]["train"] == n_train - (oof["fold"] == k).sum() and fold_cfg["fold"] == 0
    assert fold_result(run3, "tsan_stage2_oof__study")["metrics"]["stage2_analysis"]
    with pytest.raises(ValueError, match="variant"):
        tsan.train_second_stage(first_stage=run1, variant="other", **dirs)


def test_fast_stem_gradient_matches_conv3d():
    from tsan.model import StemConv3d

    torch.manual_seed(0)
    fast = StemConv3d(1, 3, 7, padding=1, dilation=2)
    ref = torch.nn.Conv3d(1, 3, 7, padding=1, dilation=2)
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(2, 1, 20, 22, 19)
    for conv in (fast, ref):
        conv(x).square().sum().backward()
    assert torch.allclose(fast.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-3)
    assert torch.allclose(fast.bias.grad, ref.bias.grad, rtol=1e-4)
    xr = torch.randn(1, 1, 16, 16, 16, requires_grad=True)
    (grad_fast,) = torch.autograd.grad(fast(xr).sum(), xr)
    (grad_ref,) = torch.autograd.grad(ref(xr).sum(), xr)
    assert torch.allclose(grad_fast, grad_ref, atol=1e-5), "input gradients too, when asked for"
    # under bf16 autocast (the CPU fast path where bf16 is native) the backward takes a bf16 gradient
    fast.zero_grad(), ref.zero_grad()
    for conv in (fast, ref):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = conv(x)
        assert out.dtype == torch.bfloat16
        out.float().square().sum().backward()
    assert fast.weight.grad.dtype == torch.float32
    assert torch.allclose(fast.weight.grad, ref.weight.grad, rtol=0.05, atol=0.5)


def test_second_stage_takes_a_given_stage1_age():
    import pandas as pd

    from tsan.model import FirstStage, ScaleDense, SecondStage, SecondStageScaleDense
    from tsan.train import attach_stage1_age

    torch.manual_seed(0)
    model = SecondStage(FirstStage(ScaleDense(2, 2, use_sex=True)), SecondStageScaleDense(2, 2), 5.0,
                        given_stage1_age=True).eval()
    assert model.extra_inputs == ("sex", "stage1_age")
    x, sex = torch.randn(2, 1, 20, 20, 20), torch.tensor([0, 1])
    with torch.no_grad():
        d_given, _ = model.components(x, sex, torch.tensor([41.0, 77.6]))
        d_mixed, _ = model.components(x, sex, torch.tensor([41.0, float("nan")]))
        d_own, _ = model.components(x, sex)
    assert d_given.tolist() == [40.0, 80.0]
    assert d_mixed[0] == 40.0 and d_mixed[1] == d_own[1], "NaN: the frozen stage 1 decides"
    frame = pd.DataFrame({"participant_id": ["a", "b", "c"], "session_id": "", "split": ["train", "train", "test"]})
    oof = pd.DataFrame({"participant_id": ["a", "b"], "session_id": "", "stage1_age": [30.0, 50.0]})
    assert attach_stage1_age(oof, frame)["stage1_age"].iloc[:2].tolist() == [30.0, 50.0]
    assert attach_stage1_age(oof, frame)["stage1_age"].isna().iloc[2]
    with pytest.raises(ValueError, match="no out-of-fold"):
        attach_stage1_age(oof.iloc[:1], frame)


def test_stage1_with_a_dead_output_is_retrained_with_the_next_seed(monkeypatch, tmp_path):

    import pandas as pd

    from tsan import train as tsan

    calls, verdicts = [], iter([True, False])
    frame = pd.DataFrame({"split": ["train", "val"]})

    def fake_train(**kwargs):
        calls.append((kwargs["run_name"], kwargs["seed"]))
        run_dir = tmp_path / kwargs["run_name"] / "fold0"
        run_dir.mkdir(parents=True)
        return run_dir, frame, {}, 100.0 + len(calls)

    monkeypatch.setattr(tsan, "train_brain_age", fake_train)
    monkeypatch.setattr(tsan, "_stage1_build", lambda hp, cache_dir: None)  # no sorter pretraining here
    monkeypatch.setattr(tsan, "constant_output", lambda run_dir, rows, device: next(verdicts))
    args = dict(method="m", dataset="d", profile="cpu", hp=tsan.PROFILES["cpu"], seed=42, device="cpu", run_name="r",
                runs_dir="runs", results_dir="results", cache_dir=str(tmp_path), data_root=None, max_per_split=None,
                resume=False)
    run_dir, _, _, t0 = tsan.train_stage1_alive(**args)
    assert calls == [("r", 42), ("r", 42 + tsan.RETRY_SEED_STRIDE)] and run_dir == tmp_path / "r" / "fold0" and t0 == 101.0
    assert (tmp_path / "r" / "fold0.dead-seed42").is_dir(), "the dead run is kept beside, the same folder retrained"
    shutil.rmtree(tmp_path / "r")
    monkeypatch.setattr(tsan, "constant_output", lambda run_dir, rows, device: True)
    with pytest.raises(RuntimeError, match="died"):
        tsan.train_stage1_alive(**args)
