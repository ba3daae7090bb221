"""The shared preprocessing (common/data/standardize.py): the same brain gives the same array however
it was acquired (model-free invariance on a real IXI-HH scan), bad scans are excluded with the step
named, and the method grids are what the methods expect."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from common.data.checks import BadImageError, load_checked
from common.data.standardize import SKULL_STRIPPED_BELOW, StandardBrain, standardize_brain, to_method_grid
from common.data.variants import standard_variants

#: The acceptance criteria of the invariance test (inside the brain, against the native scan).
MIN_CORRELATION, MIN_DICE = 0.95, 0.95
SCAN = "IXI012-HH-1211"
#: The grid the correlation is computed on: 4 mm, the resolution at which the main job's 3D models see
#: the brain (resnet3d 48³ at 4 mm, TSAN's 2 mm input pooled to 4 mm, the OASIS ResBlock at 8 mm). At the
#: stored 2 mm the 3 mm and 5 mm-slice variants correlate about 0.92: detail their acquisition never
#: recorded, which no preprocessing can bring back.
GRID = ((48, 48, 48), (4.0, 4.0, 4.0))


def _compare(a: StandardBrain, b: StandardBrain) -> tuple[float, float]:
    """Correlation of the two brains on :data:`GRID` inside both brains; Dice of the 2 mm masks."""
    ga, gb = (to_method_grid(x, *GRID)[0] for x in (a, b))
    inside = (ga != 0) & (gb != 0)
    corr = float(np.corrcoef(ga[inside], gb[inside])[0, 1])
    dice = 2 * int((a.mask & b.mask).sum()) / (int(a.mask.sum()) + int(b.mask.sum()))
    return corr, dice


def _scan_path():
    from pathlib import Path

    from tests.conftest import SHARED_DATA

    return Path(__import__("os").environ.get("DATA_ROOT", SHARED_DATA)) / "ixi_hh"


def _load_native():
    """The real scan and its DLMUSE brain mask: ``(data, affine, mask)``."""
    root = _scan_path()
    data, affine, _ = load_checked(root / "T1" / f"{SCAN}_T1.nii.gz")
    mask = np.asarray(nib.load(root / "DLMUSE" / f"{SCAN}_T1_DLMUSE.nii.gz").dataobj) > 0
    return data, affine, mask


def _standardize_job(job: tuple[str, str]) -> StandardBrain:
    """One pool job: ``("native", transform)`` is the scan itself, ``("variant", name)`` one acquisition variant."""
    kind, name = job
    data, affine, mask = _load_native()
    if kind == "native":
        return standardize_brain(data, affine, name)
    return standardize_brain(*standard_variants(mask)[name](data, affine))


@pytest.fixture(scope="module")
def native():
    """The real scan and its DLMUSE brain mask, ``(data, affine, mask)``; skipped without the data."""
    if not (_scan_path() / "T1" / f"{SCAN}_T1.nii.gz").exists():
        pytest.skip(f"real data not found at {_scan_path()} (set DATA_ROOT); invariance test skipped")
    return _load_native()


@pytest.fixture(scope="module")
def pipeline_runs(native) -> dict:
    """Every whole-pipeline run this module checks, two processes at a time with one torch thread each,
    as ``scripts/preprocess.py`` builds the cache (``common.data.preprocess``): the native scan twice
    (``"native"``, ``"again"``), with SyN (``"SyN"``) and each acquisition variant (by name)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from common.data.preprocess import _init_worker

    jobs = {"native": ("native", "Affine"), "again": ("native", "Affine"), "SyN": ("native", "SyN")}
    jobs.update({name: ("variant", name) for name in standard_variants(np.ones(1))})
    # spawn: a fresh interpreter per worker, whatever thread pools this test process has already started
    with ProcessPoolExecutor(max_workers=2, initializer=_init_worker,
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        return dict(zip(jobs, pool.map(_standardize_job, jobs.values())))


@pytest.mark.parametrize("variant", list(standard_variants(np.ones(1))))
def test_preprocessed_brain_is_invariant_to_acquisition(pipeline_runs, variant):
    reference = pipeline_runs["native"]
    assert reference.qc["template_dice"] > 0.9
    varied = pipeline_runs[variant]
    corr, dice = _compare(reference, varied)
    assert corr >= MIN_CORRELATION and dice >= MIN_DICE, f"{variant}: correlation {corr:.3f}, Dice {dice:.3f}"
    if variant == "reoriented_int16_origin40mm":  # the same voxels: only rounding may differ (0.9916 before RAS order)
        assert corr >= 0.999 and dice >= 0.995, f"header-only change: correlation {corr:.4f}, Dice {dice:.4f}"
    stripped = varied.qc["extracerebral_signal"] < SKULL_STRIPPED_BELOW  # predict warns on such a scan
    assert stripped == (variant == "skull_stripped"), f"{variant}: extracerebral signal {varied.qc['extracerebral_signal']}"


def test_preprocessing_gives_the_same_bits_every_time(pipeline_runs):
    """The same scan twice through the whole pipeline (deepbet, N4, ANTs affine): identical arrays.
    Before the registration was seeded for real and kept to one ITK thread, no two runs were alike
    (template Dice 0.9610-0.9622 on this scan), so a main job on a cold cache could not reproduce the
    committed results (common.data.registration.ants_registration)."""
    reference, again = pipeline_runs["native"], pipeline_runs["again"]
    assert np.array_equal(again.brain, reference.brain) and np.array_equal(again.mask, reference.mask)
    assert again.qc == reference.qc


def test_tsan_paper_pipeline_syn_fits_the_template_closer(pipeline_runs):
    """TSAN's paper preprocessing (deepbet, N4, affine + SyN) on the real scan: a registered brain
    that overlaps the MNI brain more than the affine one does, on the same grid."""
    reference, syn = pipeline_runs["native"], pipeline_runs["SyN"]
    assert syn.qc["transform"] == "SyN" and syn.brain.shape == reference.brain.shape == (91, 109, 91)
    assert syn.qc["template_dice"] > reference.qc["template_dice"] and syn.qc["similarity"] > reference.qc["similarity"]


def test_the_sources_own_pipeline_is_not_invariant(native):
    """The same criterion on the pipeline of the previous main (resnet3d's source pipeline: skull on,
    no registration; its earlier ``cpu`` grid): a head that moves in the field of view, or a field of
    view that ends elsewhere, gives another array (measured: correlation 0.57-0.76), which is why the
    main job's profiles use the shared preprocessing."""
    from common.data.preprocess import VolumeSpec, _monai_pipeline

    data, affine, mask = native
    spec = VolumeSpec(shape=GRID[0], spacing_mm=GRID[1])
    ref = _monai_pipeline(data, affine, spec)[0]
    failing = []
    for name, make in standard_variants(mask).items():
        out = _monai_pipeline(*make(data, affine), spec)[0]
        inside = (ref != 0) & (out != 0)
        if np.corrcoef(ref[inside], out[inside])[0, 1] < MIN_CORRELATION:
            failing.append(name)
    assert {"nodding_10deg", "turned_10deg", "shifted_15mm_forward", "fov_inferior_15pct_missing"} <= set(failing)


def test_a_scan_without_a_brain_is_excluded_with_the_step(tmp_path):
    from tests.conftest import write_volume

    path = write_volume(tmp_path / "blob.nii.gz", shape=(40, 48, 40), kind="ok")
    data, affine, _ = load_checked(path)
    with pytest.raises(BadImageError, match="brain extraction"):
        standardize_brain(data, affine)


def test_method_grid_shapes_and_brain_zscore():
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in (91, 109, 91)], indexing="ij"))
    mask = (grid ** 2).sum(0) < 0.5
    brain = np.where(mask, 100 + 10 * rng.standard_normal(mask.shape), 0).astype(np.float32)
    standard = StandardBrain(brain, mask, {})
    for shape, spacing in (((91, 109, 91), 2.0), ((48, 48, 48), 4.0), ((32, 32, 32), 8.0), ((96, 96, 96), 2.0)):
        out = to_method_grid(standard, shape, (spacing,) * 3)
        inside = out[0] != 0
        assert out.shape == (1, *shape) and out.dtype == np.float32
        assert abs(out[0][inside].mean()) < 1e-3 and out[0][inside].std() == pytest.approx(1.0, abs=1e-3)
    with pytest.raises(ValueError, match="2 mm"):
        to_method_grid(standard, (182, 218, 182), (1.0,) * 3)


def test_smoothing_inside_the_brain_keeps_its_edge_and_equalises_resolution():
    from common.data.standardize import smooth_inside_brain

    rng = np.random.default_rng(1)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in (40, 40, 40)], indexing="ij"))
    mask = (grid ** 2).sum(0) < 0.6
    flat = np.where(mask, 100.0, 0.0).astype(np.float32)
    smoothed = smooth_inside_brain(flat, mask, 6.0)
    assert np.allclose(smoothed[mask], 100.0, rtol=1e-4), "normalised convolution: no darkened brain edge"
    assert (smoothed[~mask] == 0).all() and smoothed.dtype == np.float32
    assert smooth_inside_brain(flat, mask, 0.0) is not flat and np.array_equal(smooth_inside_brain(flat, mask, 0.0), flat)
    # the same texture at two resolutions differs much less after a kernel wider than both
    texture = np.where(mask, 100 + 20 * rng.standard_normal(mask.shape), 0).astype(np.float32)
    sharp, blurred = texture, smooth_inside_brain(texture, mask, 4.0)  # as acquired at about 4 mm

    def gap(a, b):
        return float(np.abs(a[mask] - b[mask]).mean())

    assert gap(smooth_inside_brain(sharp, mask, 8.0), smooth_inside_brain(blurred, mask, 8.0)) < 0.3 * gap(sharp, blurred)
    with pytest.raises(ValueError, match="negative"):
        smooth_inside_brain(flat, mask, -1.0)


def test_smoothing_is_part_of_the_spec_and_only_for_the_shared_pipeline(tmp_path):
    from common.data.preprocess import VolumeSpec, preprocess_volume

    plain = VolumeSpec(shape=(48,) * 3, spacing_mm=(4.0,) * 3, pipeline="mni_brain")
    smooth = VolumeSpec(shape=(48,) * 3, spacing_mm=(4.0,) * 3, pipeline="mni_brain", smooth_fwhm_mm=6.0)
    assert "smooth_fwhm_mm" not in plain.to_dict(), "specs without smoothing keep their earlier cache keys"
    assert plain.key() != smooth.key() and VolumeSpec.from_dict(smooth.to_dict()) == smooth
    assert VolumeSpec.from_dict(plain.to_dict()) == plain
    with pytest.raises(ValueError, match="shared pipeline"):
        preprocess_volume(str(tmp_path / "x.nii.gz"), VolumeSpec(pipeline="monai", smooth_fwhm_mm=6.0))


def test_scaled_brain_intensity_keeps_a_dark_background():
    rng = np.random.default_rng(2)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in (91, 109, 91)], indexing="ij"))
    mask = (grid ** 2).sum(0) < 0.5
    brain = np.where(mask, 100 + 10 * rng.standard_normal(mask.shape), 0).astype(np.float32)
    out = to_method_grid(StandardBrain(brain, mask, {}), (48, 48, 48), (4.0,) * 3, "scaled_brain")[0]
    inside = out != 0
    assert (out >= 0).all() and np.percentile(out[inside], 99) == pytest.approx(5.0, abs=0.1)
    assert np.percentile(out[inside], 50) > 3.5, "the background (0) is darker than every brain intensity"
    scaled = to_method_grid(StandardBrain(3 * brain, mask, {}), (48, 48, 48), (4.0,) * 3, "scaled_brain")[0]
    assert np.allclose(scaled, out, atol=1e-5), "scanner units do not matter"
