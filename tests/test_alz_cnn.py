"""alz_cnn: AltzCNN's exact size, every model's forward/backward, the DoRA head, the loader, the
near-duplicate finder and a tiny end-to-end run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from alz_cnn.data import AlzheimerSlices, cached_images, load_alzheimer4, source_augmentation
from alz_cnn.model import AltzCNN, DoRALinear, build_transfer_model, count_parameters, model_size_mb
from alz_cnn.near_duplicates import find_near_duplicates, near_duplicate_figure, thumbnails
from alz_cnn.train import MODELS, build_model
from common.pretrained import WeightsUnavailableError

CLASSES = ["MildDemented", "ModerateDemented", "NonDemented", "VeryMildDemented"]


def test_altzcnn_has_the_source_parameter_count_and_size():
    model = AltzCNN(4)
    assert count_parameters(model) == 6_012_164
    assert round(model_size_mb(model), 2) == 22.93, "the source reports 22.93 MB"


@pytest.mark.parametrize("arch, dora, size_mb", [("resnet50", False, 89.91), ("efficientnet_b0", False, 15.47),
                                                  ("efficientnet_b0", True, 15.49), ("resnet50", True, 89.95)])
def test_transfer_models_match_the_source_sizes(arch, dora, size_mb):
    model, provenance = build_transfer_model(arch, 4, dora=dora)
    assert round(model_size_mb(model), 2) == pytest.approx(size_mb, abs=0.011)
    assert "random initialisation" in provenance


@pytest.mark.parametrize("arch, added", [("efficientnet_b0", 6_416), ("resnet50", 10_256)])
def test_dora_head_adds_the_source_parameter_count(arch, added):
    """The differences of the source's printed parameter counts (notebook cells 33 and 37)."""
    plain, _ = build_transfer_model(arch, 4)
    adapted, _ = build_transfer_model(arch, 4, dora=True)
    assert count_parameters(adapted) - count_parameters(plain) == added


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_forward_backward(name):
    torch.manual_seed(0)
    size = 64 if name == "altzcnn" else 32
    model, _ = build_model(name, 4, image_size=size)
    x = torch.rand(2, 3, size, size)
    out = model(x)
    assert out.shape == (2, 4) and torch.isfinite(out).all()
    torch.nn.functional.cross_entropy(out, torch.tensor([0, 3])).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads), "every parameter (backbone included) is trained"
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_altzcnn_rejects_other_input_sizes():
    with pytest.raises(ValueError, match="64x64"):
        AltzCNN()(torch.rand(1, 3, 96, 96))


def test_imagenet_weights_fail_clearly_without_network(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    import torchvision

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.models.ResNet50_Weights.IMAGENET1K_V1.__class__, "get_state_dict", offline,
                        raising=False)
    with pytest.raises(WeightsUnavailableError, match="--weights=none"):
        build_transfer_model("resnet50", 4, weights="IMAGENET1K_V1")
    with pytest.raises(ValueError, match="from scratch"):
        build_model("altzcnn", 4, weights="IMAGENET1K_V1")


def test_dora_starts_as_the_linear_head_and_trains():
    torch.manual_seed(0)
    base = torch.nn.Linear(16, 4)
    dora = DoRALinear(base, rank=4, alpha=8)
    x = torch.randn(8, 16)
    assert torch.allclose(dora(x), base(x), atol=1e-6), "DoRA equals the wrapped layer at initialisation"
    assert dora.alpha == 8.0 and dora.magnitude.shape == (1, 16), "the source: one magnitude per input feature"
    assert count_parameters(dora) == count_parameters(base) + 16 * 4 + 4 * 4 + 16
    y = torch.randint(0, 4, (8,))
    opt = torch.optim.SGD(dora.parameters(), lr=0.5)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(dora(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert dora.lora_b.abs().sum() > 0, "the low-rank factor moved away from zero"
    with pytest.raises(ValueError, match="rank"):
        DoRALinear(base, rank=0)


def _write_folder(root: Path, per_class: int = 6, seed: int = 0) -> Path:
    """A tiny alzheimer4-like folder: 4 classes with distinct shapes, plus a corrupt file."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:40, :36]
    for split, n in (("train", per_class), ("test", 2)):
        for c, cls in enumerate(CLASSES):
            d = root / split / cls
            d.mkdir(parents=True)
            for k in range(n):
                img = 60 + 40 * np.sin(xx / (2 + c)) + 30 * np.cos(yy / (3 + k)) + rng.normal(0, 5, xx.shape)
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(d / f"{split}_{k}.jpg")
    (root / "train" / "NonDemented" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    return root


def test_loader_splits_classes_and_excludes_bad_files(tmp_path):
    root = _write_folder(tmp_path / "alzheimer4")
    frame, classes, exclusions = load_alzheimer4(root, val_fraction=0.25, seed=1)
    assert classes == CLASSES, "class names come from the folder names, sorted"
    assert frame["split"].value_counts().to_dict() == {"train": 18, "val": 6, "test": 8}
    val = frame[frame["split"] == "val"]
    assert sorted(val["label"].unique()) == CLASSES, "validation is stratified by class"
    assert not val["image"].str.startswith("test/").any(), "validation comes from train/ only"
    assert [Path(e["item"]).name for e in exclusions.rows] == ["broken.jpg"]
    again, _, _ = load_alzheimer4(root, val_fraction=0.25, seed=1)
    assert again["split"].tolist() == frame["split"].tolist(), "the validation split is seeded"
    with pytest.raises(ValueError, match="val_fraction"):
        load_alzheimer4(root, val_fraction=1.5)


def test_image_cache_is_grayscale_replicated_and_reused(tmp_path):
    root = _write_folder(tmp_path / "alzheimer4")
    frame, _, _ = load_alzheimer4(root)
    rgb = root / "test" / "MildDemented" / "colour.png"
    Image.new("RGB", (30, 30), (200, 10, 10)).save(rgb)  # a colour file is converted to luminance
    frame = pd.concat([frame, pd.DataFrame([{"image": "test/MildDemented/colour.png", "image_path": str(rgb),
                                             "split": "test", "label": "MildDemented", "label_index": 0}])],
                      ignore_index=True)
    images = cached_images(frame, 16, tmp_path / "cache")
    assert images.shape == (len(frame), 3, 16, 16) and images.dtype == np.uint8
    assert (images[:, 0] == images[:, 1]).all() and (images[:, 1] == images[:, 2]).all()
    assert abs(int(images[-1, 0, 8, 8]) - round(0.299 * 200 + 0.587 * 10 + 0.114 * 10)) <= 1
    files = list((tmp_path / "cache" / "alzheimer4").glob("*.npy"))
    assert len(files) == 1
    assert isinstance(cached_images(frame, 16, tmp_path / "cache"), np.memmap), "second call reads the cache"
    ds = AlzheimerSlices(images, frame["label_index"].to_numpy(), np.arange(4), source_augmentation(), normalize=True)
    item = ds[0]
    assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.float32


def test_near_duplicate_finder_on_constructed_duplicates():
    rng = np.random.default_rng(0)
    train = np.stack([np.clip(np.kron(rng.normal(128, 60, (8, 8)), np.ones((8, 8))), 0, 255)[None].repeat(3, 0)
                      for _ in range(20)]).astype(np.uint8)
    test = np.stack([
        train[3],                                                              # exact copy
        np.clip(train[7].astype(float) * 0.8 + 20 + rng.normal(0, 3, train[7].shape), 0, 255),  # re-encoded copy
        np.clip(np.kron(rng.normal(128, 60, (8, 8)), np.ones((8, 8))), 0, 255)[None].repeat(3, 0),  # new image
    ]).astype(np.uint8)
    tf = pd.DataFrame({"image": [f"t{i}" for i in range(20)], "label": ["A"] * 20})
    qf = pd.DataFrame({"image": ["q0", "q1", "q2"], "label": ["A", "B", "A"]})
    out = find_near_duplicates(qf, test, tf, train, threshold=0.98)
    assert out["nearest_image"].tolist()[:2] == ["t3", "t7"]
    assert out["near_duplicate"].tolist() == [True, True, False]
    assert out.loc[0, "correlation"] == pytest.approx(1.0, abs=1e-4)
    assert np.allclose(np.linalg.norm(thumbnails(test), axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="N, C, H, W"):
        thumbnails(test[0])


def test_near_duplicate_figure(tmp_path):
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 255, (3, 3, 16, 16)).astype(np.uint8)
    pairs = pd.DataFrame({"image": ["a", "b"], "label": ["X", "Y"], "nearest_image": ["r0", "r2"],
                          "nearest_label": ["X", "Y"], "correlation": [0.99, 0.97], "near_duplicate": [True, False]})
    path = near_duplicate_figure(pairs, imgs[:2], imgs, {"r0": 0, "r1": 1, "r2": 2}, tmp_path / "f.png")
    assert path.stat().st_size > 1000


def test_tiny_end_to_end_run(tmp_path):
    from alz_cnn import train as alz

    _write_folder(tmp_path / "data" / "alzheimer4", per_class=4)
    run_dir = alz.train(model="altzcnn", profile="cpu", epochs=1, data_root=str(tmp_path / "data"), run_name="t",
                        runs_dir=str(tmp_path / "runs"), results_dir=str(tmp_path / "results"),
                        cache_dir=str(tmp_path / "cache"), val_fraction=0.25)
    doc = json.loads((tmp_path / "results" / "alz_altzcnn__alzheimer4.json").read_text())
    assert doc["subject_split"] is False and doc["n_parameters"] == 6_012_164
    assert doc["n_subjects"] == {"train": 12, "val": 4, "test": 8, "unit": "images"}
    assert doc["metrics"]["n"] == 8, "every test image is predicted exactly once"
    assert 0 <= doc["metrics"]["no_near_duplicate"]["n"] <= 8
    assert doc["parameters"]["peak_memory_mb"] > 0 and doc["parameters"]["train_seconds"] > 0
    preds = pd.read_csv(Path(run_dir) / "predictions_test.csv")
    assert preds["image"].str.startswith("test/").all() and len(preds) == 8
    assert doc["predictions"] == "predictions/alz_altzcnn__alzheimer4.csv", "published for the leaderboard's McNemar tests"
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "results" / doc["predictions"]), preds)
    again = alz.evaluate(run_dir)  # a finished run tested again: same numbers, the training time still counted
    redoc = json.loads((tmp_path / "results" / "alz_altzcnn__alzheimer4.json").read_text())
    assert again["accuracy"] == doc["metrics"]["accuracy"] and again["confusion_matrix"] == doc["metrics"]["confusion_matrix"]
    assert redoc["wall_time_s"] >= round(doc["parameters"]["train_seconds"], 1)
    readme = tmp_path / "README.md"
    blocks = ("x\n<!-- comparison:start -->\n<!-- comparison:end -->\n"
              "<!-- near-duplicates:start -->\nkept\n<!-- near-duplicates:end -->\n")
    readme.write_text(blocks)
    alz.summarize(results_dir=str(tmp_path / "results"), figures_dir=str(tmp_path / "fig"), readme=str(readme))
    text = readme.read_text()
    assert "| AltzCNN | cpu: 64 px, 1 ep | 6,012,164 | 22.93 |" in text and "Near-duplicates: " in text
    assert (tmp_path / "fig" / "confusion_altzcnn.png").exists() and (tmp_path / "fig" / "near_duplicates.png").exists()
    shutil.rmtree(run_dir)  # a checkout without the runs: the near-duplicate paragraph is kept as it was
    readme.write_text(blocks)
    alz.summarize(results_dir=str(tmp_path / "results"), figures_dir=str(tmp_path / "fig"), readme=str(readme))
    assert "| AltzCNN | cpu: 64 px, 1 ep |" in readme.read_text() and "\nkept\n" in readme.read_text()


def test_paper_profile_is_the_notebook():
    """Settings read from the source notebook (cells 11-13, 21, 25, 31-39; alz_cnn/README.md)."""
    from alz_cnn.train import HYPERPARAMETERS

    paper = {name: HYPERPARAMETERS[name]["paper"] for name in HYPERPARAMETERS}
    expected = {"altzcnn": (3e-4, 21), "efficientnet_b0": (1e-3, 16), "efficientnet_b0_dora": (2e-4, 11),
                "resnet50": (1e-4, 11), "resnet50_dora": (2e-4, 11), "vit_b_16": (1e-4, 11)}
    for name, (lr, epochs) in expected.items():
        assert (paper[name]["lr"], paper[name]["epochs"]) == (lr, epochs), name
        assert paper[name]["checkpoint"] == "last", "the source tests the model after its last epoch"
        assert paper[name]["augment"] is (name != "altzcnn"), "AltzCNN trains without augmentation"
    for name in ("altzcnn", "efficientnet_b0", "resnet50_dora"):
        assert (paper[name]["image_size"], paper[name]["batch_size"], paper[name]["normalize"]) == (64, 128, False)
    assert (paper["vit_b_16"]["image_size"], paper["vit_b_16"]["batch_size"], paper["vit_b_16"]["normalize"]) == (224, 64, True)


def test_source_augmentation_probabilities():
    """Each step of the notebook's kornia pipeline (cell 21) with its own probability."""
    from torchvision.transforms import v2

    from alz_cnn.data import RandomSoftening, source_augmentation

    steps = source_augmentation().transforms
    probs = [t.p for t in steps]
    assert probs == [0.1, 0.1, 0.1, 0.1, 0.4, 0.1]
    assert isinstance(steps[0].transforms[0], v2.RandomAffine) and steps[0].transforms[0].degrees == [-5.0, 5.0]
    assert steps[1].distortion_scale == 0.1 and list(steps[4].transforms[0].kernel_size) == [5, 9]
    soft = RandomSoftening(0.5)
    torch.manual_seed(0)
    x = (torch.rand(3, 16, 16) * 255).to(torch.uint8)
    y = soft(x)
    assert y.shape == x.shape and y.dtype == torch.uint8 and not torch.equal(x, y), "factor < 1 always softens"


def test_paper_profile_tests_the_last_epoch(tmp_path, monkeypatch):
    from alz_cnn import train as alz
    from common.training import load_checkpoint

    loaded = []
    monkeypatch.setattr(alz, "load_checkpoint",
                        lambda path, method: loaded.append(Path(path).name) or load_checkpoint(path, method))
    _write_folder(tmp_path / "data" / "alzheimer4", per_class=4)
    run_dir = Path(alz.train(model="altzcnn", profile="paper", epochs=2, data_root=str(tmp_path / "data"), run_name="p",
                             runs_dir=str(tmp_path / "runs"), results_dir=str(tmp_path / "results"),
                             cache_dir=str(tmp_path / "cache"), val_fraction=0.25, publish=False, device="cpu"))
    assert json.loads((run_dir / "usage.json").read_text())["checkpoint_tested"] == "last"
    last = load_checkpoint(run_dir / "last.pt", "alz_altzcnn")
    assert last["epoch"] == 1, "both epochs ran and last.pt is the final one"
    assert loaded == ["last.pt"], "the test split is predicted by the last epoch's model"


def test_leaky_pool_balances_classes_and_splits_copies_at_image_level():
    from alz_cnn.leaky import augmented_pool, image_level_split

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (20, 3, 16, 16), dtype=np.uint8)
    labels = np.array([0] * 10 + [1] * 6 + [2] * 3 + [3] * 1)
    pool, table = augmented_pool(images, labels, 80, seed=1)
    assert len(pool) == len(table) == 80 and (table["label_index"].value_counts() == 20).all()
    originals = table[table["copy"] == 0]
    assert sorted(originals["original"]) == list(range(20)), "every original is in the pool once"
    assert all(np.array_equal(pool[i], images[o]) for i, o in zip(originals.index, originals["original"]))
    copies = table[table["copy"] > 0]
    assert (table.loc[copies.index, "label_index"].to_numpy() == labels[copies["original"]]).all()
    assert not all(np.array_equal(pool[i], images[o]) for i, o in zip(copies.index, copies["original"]))
    again, _ = augmented_pool(images, labels, 80, seed=1)
    assert np.array_equal(pool, again), "seeded"
    split = image_level_split(table, seed=2)
    assert split["split"].value_counts().to_dict() == {"train": 56, "val": 12, "test": 12}
    test = split[split["split"] == "test"]
    seen = set(split.loc[split["split"] == "train", "original"])
    assert (test["original_in_train"] == test["original"].isin(seen)).all() and test["original_in_train"].any()
    with pytest.raises(ValueError, match="originals"):
        augmented_pool(images, labels, 10, seed=1)


def test_leaky_emulation_runs_end_to_end_resumes_and_is_labelled(tmp_path):
    """The leaky run is labelled as such; an interrupted one continues from last.pt with --resume (never
    silently restarted), and a run folder whose image pool other settings made is refused."""
    from alz_cnn import train as alz

    _write_folder(tmp_path / "data" / "alzheimer4", per_class=8)
    kw = dict(profile="cpu", data_root=str(tmp_path / "data"), run_name="l", runs_dir=str(tmp_path / "runs"),
              results_dir=str(tmp_path / "results"), cache_dir=str(tmp_path / "cache"), device="cpu")
    alz.leaky(n_images=64, epochs=1, publish=False, **kw)
    with pytest.raises(FileExistsError, match="--resume=True"):
        alz.leaky(n_images=64, epochs=2, **kw)
    with pytest.raises(ValueError, match="not the image pool"):
        alz.leaky(n_images=72, epochs=2, resume=True, **kw)
    metrics = alz.leaky(n_images=64, epochs=2, resume=True, **kw)
    run = tmp_path / "runs" / "alz_altzcnn_leaky_emulation" / "alzheimer4" / "l"
    assert sorted(pd.read_csv(run / "metrics.csv")["epoch"].dropna().unique()) == [0, 1]
    doc = json.loads((tmp_path / "results" / "alz_altzcnn_leaky_emulation__alzheimer4.json").read_text())
    assert doc["metrics"]["n"] == 64 - round(0.7 * 64) - round(0.15 * 64)
    assert "LEAKY" in doc["notes"][0] and "leaky" in doc["method_label"]
    best = doc["parameters"]["best_epoch"] + 1
    assert doc["parameters"]["tested"] == "best" and f"best validation accuracy tested (epoch {best})" in doc["notes"][2]
    assert 0 <= metrics["test_images_with_original_in_train"] <= 1 and doc["subject_split"] is False
    assert metrics["original_in_train"]["n"] + metrics["original_not_in_train"]["n"] == metrics["n"]
    pool = pd.read_csv(run / "pool.csv")
    assert len(pool) == 64 and pool["image"].str.contains("#copy").any()
    readme = tmp_path / "README.md"
    readme.write_text("x\n<!-- comparison:start -->\n<!-- comparison:end -->\n")
    alz.summarize(results_dir=str(tmp_path / "results"), figures_dir=str(tmp_path / "fig"), readme=str(readme))
    text = readme.read_text()
    assert "The source's protocol, emulated (leaky; not a generalisation result)" in text
    assert f"epoch {best}, the best on validation, tested" in text


def test_class_weights_are_inverse_frequency_and_need_every_class():
    from alz_cnn.train import class_weights, method_name

    w = class_weights(np.array([0, 0, 0, 1, 2, 2, 3, 3]), 4)
    assert torch.allclose(w, torch.tensor([8 / 12, 8 / 4, 8 / 8, 8 / 8]))
    with pytest.raises(ValueError, match="no training image"):
        class_weights(np.array([0, 1, 1]), 3)
    assert method_name("resnet18", class_weighted=True) == "alz_resnet18_class_weighted"
