"""Deterministic volume preprocessing with MONAI, cached on disk.

The result of :func:`preprocess_volume` for one file is stored once as ``.npy`` under
``<cache_root>/<spec.key()>/``, named by a hash of the file's content (and its mask's; see
:mod:`common.data.fingerprint`). A changed file or changed parameters therefore give a new entry; entries are
written to a temporary file and renamed into place, and one that cannot be read back with the
expected shape is rebuilt. Training then reads memory-mapped arrays and never decodes a NIfTI.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from common.data.checks import BadImageError, load_checked, load_mask
from common.data.fingerprint import file_digest
from common.data.manifest import Exclusions
from common.io import atomic_write, write_json
from common.runlog import progress

log = logging.getLogger(__name__)

#: Bump when preprocess_volume changes its output for the same spec. 2: ANTs registration (the shared
#: pipeline's and ``mni``'s) became reproducible (common.data.registration.ants_registration), so the
#: volumes cached from version 1's unseeded, multi-threaded registrations are not reused. 3: the shared
#: pipeline's brain extraction runs without oneDNN (STANDARD_VERSION 3).
PREPROCESS_VERSION = 3


@dataclass(frozen=True)
class VolumeSpec:
    """Preprocessing parameters; stored in checkpoints so prediction repeats them exactly.

    Attributes:
        shape: output grid (D, H, W) in voxels after pad/crop.
        spacing_mm: output voxel spacing in mm.
        orientation: axis codes of the output (MONAI ``Orientation``), e.g. ``"RAS"``.
        intensity: ``"zscore_nonzero"`` (z-score over non-zero voxels, background stays 0)
            or ``"zscore_volume"`` (z-score over the whole volume), or, shared pipeline only,
            ``"scaled_brain"`` (scaled, not shifted: the brain's 99th percentile to 5, background 0,
            as dark as cerebrospinal fluid or darker, so where a mask ends in CSF matters little).
        apply_mask: multiply by the dataset's brain mask (``mask_path``) before resampling.
        pipeline: ``"mni_brain"`` / ``"mni_brain_syn"``: the shared preprocessing of
            :mod:`common.data.standardize` (deepbet brain extraction, N4, affine / affine + SyN
            registration of the brain to the MNI152 brain, then this grid with anti-aliasing;
            ``apply_mask`` is ignored: the brain mask is deepbet's). The sources' own pipelines:
            ``"monai"`` (Orientation + Spacing + centred pad/crop), ``"nilearn_centered"``
            (``nilearn.image.resample_img`` onto a grid of ``shape`` x ``spacing_mm`` whose centre
            is the centre of the input's field of view; no reorientation), or ``"ants_affine_mni"`` /
            ``"ants_syn_mni"`` (ANTsPy registration to the MNI152 template on the FSL 2 mm grid,
            :mod:`common.data.registration`; ``shape`` must be (91, 109, 91) and ``spacing_mm`` 2).
        smooth_fwhm_mm: ``mni_brain*`` only: Gaussian smoothing (FWHM, mm) inside the brain on the
            2 mm MNI grid before the method's grid, so that scans acquired at 1-3 mm reach about the
            same effective resolution (:func:`common.data.standardize.to_method_grid`); 0 = none.
    """

    shape: tuple[int, int, int] = (96, 96, 96)
    spacing_mm: tuple[float, float, float] = (2.0, 2.0, 2.0)
    orientation: str = "RAS"
    intensity: str = "zscore_nonzero"
    apply_mask: bool = False
    pipeline: str = "monai"
    smooth_fwhm_mm: float = 0.0

    def to_dict(self) -> dict:
        d = {**asdict(self), "version": PREPROCESS_VERSION}
        if not self.smooth_fwhm_mm:  # specs without smoothing keep the keys (and caches) they had before it existed
            del d["smooth_fwhm_mm"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> VolumeSpec:
        return cls(shape=tuple(d["shape"]), spacing_mm=tuple(d["spacing_mm"]), orientation=d["orientation"],
                   intensity=d["intensity"], apply_mask=bool(d["apply_mask"]), pipeline=d.get("pipeline", "monai"),
                   smooth_fwhm_mm=float(d.get("smooth_fwhm_mm", 0.0)))

    def key(self) -> str:
        """Short stable hash of the parameters (and the preprocessing code version)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


def centred_target_affine(affine: np.ndarray, shape: tuple[int, ...], out_shape: tuple[int, int, int],
                          spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """Diagonal affine with ``spacing_mm`` voxels whose grid centre is the input volume's centre.

    The OASIS tutorial resampled with a zero translation, which puts the output grid's corner at
    the world origin and can cut the head off; centring the field of view on the volume fixes it.
    """
    centre_in = affine @ np.append((np.asarray(shape[:3], float) - 1) / 2, 1.0)
    target = np.diag([*spacing_mm, 1.0])
    target[:3, 3] = centre_in[:3] - np.asarray(spacing_mm) * (np.asarray(out_shape, float) - 1) / 2
    return target


def _monai_pipeline(data: np.ndarray, affine: np.ndarray, spec: VolumeSpec) -> np.ndarray:
    from monai.data import MetaTensor
    from monai.transforms import Compose, NormalizeIntensity, Orientation, ResizeWithPadOrCrop, Spacing

    image = MetaTensor(torch.from_numpy(np.ascontiguousarray(data))[None], affine=torch.as_tensor(affine))
    steps = [
        Orientation(axcodes=spec.orientation, labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        Spacing(pixdim=spec.spacing_mm, mode="bilinear"),
        ResizeWithPadOrCrop(spatial_size=spec.shape),
    ]
    out = Compose(steps)(image).detach().cpu().numpy().astype(np.float32)
    if spec.intensity == "zscore_nonzero":
        out = np.asarray(NormalizeIntensity(nonzero=True, channel_wise=True)(out), dtype=np.float32)
    return out


def _nilearn_pipeline(data: np.ndarray, affine: np.ndarray, spec: VolumeSpec) -> np.ndarray:
    import nibabel as nib
    from nilearn.image import resample_img

    target = centred_target_affine(affine, data.shape, spec.shape, spec.spacing_mm)
    resampled = resample_img(nib.Nifti1Image(data, affine), target_affine=target, target_shape=spec.shape,
                             interpolation="continuous", force_resample=True, copy_header=True)
    return np.asarray(resampled.get_fdata(dtype=np.float32))[None]


#: Registration pipelines and their ANTs transform type.
ANTS_PIPELINES = {"ants_affine_mni": "Affine", "ants_syn_mni": "SyN"}
#: Intensity normalisations of :class:`VolumeSpec`.
INTENSITIES = ("zscore_nonzero", "zscore_volume", "scaled_brain")
#: The shared preprocessing (:mod:`common.data.standardize`) and its ANTs transform type.
STANDARD_PIPELINES = {"mni_brain": "Affine", "mni_brain_syn": "SyN"}


def _ants_pipeline(data: np.ndarray, affine: np.ndarray, spec: VolumeSpec) -> np.ndarray:
    from common.data.registration import FSL_2MM_SHAPE, register_to_mni

    if tuple(spec.shape) != FSL_2MM_SHAPE or tuple(spec.spacing_mm) != (2.0, 2.0, 2.0):
        raise ValueError(f"{spec.pipeline} produces the FSL 2 mm grid {FSL_2MM_SHAPE}; got shape {spec.shape}, "
                         f"spacing {spec.spacing_mm}")
    out = register_to_mni(data, affine, brain_extracted=spec.apply_mask, transform=ANTS_PIPELINES[spec.pipeline])[None]
    if spec.intensity == "zscore_nonzero":
        brain = out != 0
        out[brain] = (out[brain] - out[brain].mean()) / max(float(out[brain].std()), 1e-6)
    return out


def preprocess_volume(image_path: str | Path, spec: VolumeSpec, mask_path: str | Path = "",
                      standard_root: str | Path | None = None) -> np.ndarray:
    """Check and preprocess one volume.

    ``mni_brain*`` pipelines: the scan's :class:`common.data.standardize.StandardBrain` (from the
    shared cache under ``standard_root`` when given, so one registration serves every method), then
    :func:`common.data.standardize.to_method_grid`. Other pipelines: load and check
    (:func:`common.data.checks.load_checked`), optional brain mask, then ``spec.pipeline``:
    ``"monai"``: channel-first, ``Orientation(spec.orientation)``,
    ``Spacing(spec.spacing_mm)`` (bilinear), ``ResizeWithPadOrCrop(spec.shape)`` (centred);
    ``"nilearn_centered"``: ``nilearn.image.resample_img`` onto a centred grid
    (:func:`centred_target_affine`); ``"ants_*_mni"``: registration to MNI152 on the FSL 2 mm grid,
    zero outside the template brain mask; then the intensity normalisation ``spec.intensity``.

    Returns:
        float32 array (1, D, H, W).

    Raises:
        BadImageError: the file fails a check, its mask is unusable, or nothing is left after
            masking and cropping.
        ValueError: unknown ``spec.pipeline`` or ``spec.intensity``.
    """
    if spec.intensity not in INTENSITIES:
        raise ValueError(f"unknown intensity normalisation {spec.intensity!r}; choose from {INTENSITIES}")
    if (spec.smooth_fwhm_mm or spec.intensity == "scaled_brain") and spec.pipeline not in STANDARD_PIPELINES:
        raise ValueError(f"smooth_fwhm_mm and scaled_brain need a shared pipeline ({', '.join(STANDARD_PIPELINES)}), "
                         f"not {spec.pipeline!r}: pass --smooth_fwhm_mm=0 (and --intensity other than scaled_brain) with it")
    if spec.pipeline in STANDARD_PIPELINES:
        from common.data.standardize import StandardCache, standardize_brain, to_method_grid

        transform = STANDARD_PIPELINES[spec.pipeline]
        if standard_root is not None:
            standard = StandardCache(standard_root, transform).get(image_path)
        else:
            data, affine, _ = load_checked(image_path)
            try:
                standard = standardize_brain(data, affine, transform)
            except BadImageError as err:
                raise BadImageError(image_path, err.problem) from None
        try:
            return to_method_grid(standard, spec.shape, spec.spacing_mm, spec.intensity, spec.smooth_fwhm_mm)
        except BadImageError as err:
            raise BadImageError(image_path, err.problem) from None
    data, affine, _ = load_checked(image_path)
    if spec.apply_mask:
        if not mask_path:
            raise BadImageError(image_path, "spec.apply_mask is set but the image has no brain mask")
        data = data * load_mask(mask_path, data.shape)
    if spec.pipeline == "monai":
        out = _monai_pipeline(data, affine, spec)
    elif spec.pipeline == "nilearn_centered":
        out = _nilearn_pipeline(data, affine, spec)
    elif spec.pipeline in ANTS_PIPELINES:
        out = _ants_pipeline(data, affine, spec)
    else:
        raise ValueError(f"unknown preprocessing pipeline {spec.pipeline!r}")
    if spec.intensity == "zscore_volume":
        std = float(out.std())
        out = ((out - out.mean()) / (std if std > 0 else 1.0)).astype(np.float32)
    if not np.isfinite(out).all() or np.count_nonzero(out) == 0:
        raise BadImageError(image_path, "volume is empty or non-finite after preprocessing")
    return out


class VolumeCache:
    """On-disk cache of :func:`preprocess_volume` results for one :class:`VolumeSpec`."""

    def __init__(self, root: str | Path, spec: VolumeSpec):
        self.spec = spec
        self.root = Path(root)
        self.dir = self.root / f"volumes-{spec.key()}"

    def path_for(self, image_path: str | Path, mask_path: str | Path = "") -> Path:
        """Cache file for this image (keyed by the content of image and mask)."""
        mask = mask_path if self.spec.apply_mask and self.spec.pipeline not in STANDARD_PIPELINES else ""
        digest = hashlib.sha1((file_digest(image_path) + "#" + file_digest(mask)).encode()).hexdigest()
        return self.dir / f"{digest[:20]}.npy"

    def is_valid(self, path: Path) -> bool:
        """True if ``path`` is a readable array of the expected shape."""
        try:
            arr = np.load(path, mmap_mode="r")
            return arr.shape == (1, *self.spec.shape) and arr.dtype == np.float32
        except Exception:
            return False

    def get(self, image_path: str | Path, mask_path: str | Path = "") -> Path:
        """Return the cache file for ``image_path``, building it first if missing or corrupt.

        Raises:
            BadImageError: the image fails its checks.
        """
        path = self.path_for(image_path, mask_path)
        if path.exists() and self.is_valid(path):
            return path
        if path.exists():
            log.warning("cache entry %s for %s is corrupt; rebuilding", path, image_path)
        array = preprocess_volume(image_path, self.spec, mask_path, standard_root=self.root)
        atomic_write(path, lambda fh: np.save(fh, array), mode="wb")
        if not self.dir.joinpath("spec.json").exists():
            write_json(self.dir / "spec.json", self.spec.to_dict())
        return path


def _init_worker() -> None:
    torch.set_num_threads(1)


def _worker(args: tuple) -> tuple[int, str, str]:
    idx, cache_root, spec_dict, image_path, mask_path = args
    cache = VolumeCache(cache_root, VolumeSpec.from_dict(spec_dict))
    try:
        return idx, str(cache.get(image_path, mask_path)), ""
    except BadImageError as err:
        return idx, "", err.problem


#: The shared preprocessing's QC numbers that place a scan among the training scans.
QC_KEYS = ("brain_volume_ml", "template_dice", "similarity")


def qc_records(image_paths, spec: VolumeSpec, cache_root: str | Path) -> list[dict]:
    """The shared preprocessing's QC record (``StandardBrain.qc``: brain volume in ml, template Dice,
    similarity to the template) of each image; ``{}`` where ``spec`` has no shared preprocessing or
    the image was not preprocessed in ``cache_root``."""
    if spec.pipeline not in STANDARD_PIPELINES:
        return [{} for _ in image_paths]
    from common.data.standardize import StandardCache

    cache = StandardCache(cache_root, STANDARD_PIPELINES[spec.pipeline])
    out = []
    for path in image_paths:
        qc_path = cache.path_for(path).with_suffix(".json") if Path(path).is_file() else None
        out.append(json.loads(qc_path.read_text()) if qc_path is not None and qc_path.exists() else {})
    return out


def input_reference(image_paths, spec: VolumeSpec, cache_root: str | Path) -> dict | None:
    """``{key: [min, max]}`` of :data:`QC_KEYS` over ``image_paths`` (a run's training scans), kept in
    the checkpoint so that prediction can flag a scan outside the training input domain; None
    without shared preprocessing."""
    records = [r for r in qc_records(image_paths, spec, cache_root) if r]
    if not records:
        return None
    return {k: [float(min(r[k] for r in records)), float(max(r[k] for r in records))]
            for k in QC_KEYS if all(k in r for r in records)}


def prepare_volumes(manifest: pd.DataFrame, spec: VolumeSpec, cache_root: str | Path,
                    exclusions: Exclusions, workers: int | None = None) -> pd.DataFrame:
    """Preprocess (or find cached) every image of ``manifest``.

    Args:
        manifest: standard manifest rows.
        spec: preprocessing parameters.
        cache_root: cache folder (e.g. ``.cache``).
        exclusions: failing images are added here with their reason.
        workers: processes for cold preprocessing (default: all cores, at most 4).

    Returns:
        The rows that passed, with a ``cache_path`` column (float32 (1, D, H, W) ``.npy`` files).
        Under torchrun the uncached images are split between the ranks (rank ``r`` of ``n`` takes
        every ``n``-th, from the ``r``-th), each image is preprocessed exactly once, and after a barrier
        every rank sees the whole cache and the same exclusions.
    """
    from common.distributed import is_distributed, rank, world_size

    if not is_distributed():
        return _prepare_volumes(manifest, spec, cache_root, exclusions, workers)
    import torch.distributed as dist

    failures = _prepare_volumes(manifest, spec, cache_root, Exclusions(), workers, shard=(rank(), world_size()))
    gathered: list = [None] * world_size()
    dist.all_gather_object(gathered, failures)
    known = {k: v for part in gathered for k, v in part.items()}
    return _prepare_volumes(manifest, spec, cache_root, exclusions, workers, known_failures=known)


def _prepare_volumes(manifest: pd.DataFrame, spec: VolumeSpec, cache_root: str | Path, exclusions: Exclusions,
                     workers: int | None, shard: tuple[int, int] | None = None,
                     known_failures: dict | None = None):
    """The work of :func:`prepare_volumes`. With ``shard=(r, n)`` only this rank's share of the
    uncached images is preprocessed and ``{manifest index: problem}`` of its failures is returned;
    with ``known_failures`` those images are excluded without being tried again."""
    known_failures = known_failures or {}
    cache = VolumeCache(cache_root, spec)
    todo, paths = [], [""] * len(manifest)
    for i, row in enumerate(manifest.itertuples(index=False)):
        try:
            p = cache.path_for(row.image_path, row.mask_path)
        except FileNotFoundError:
            exclusions.add(row.dataset, row.image_path, "file does not exist", "preprocess")
            continue
        if p.exists() and cache.is_valid(p):
            paths[i] = str(p)
        elif i in known_failures:
            exclusions.add(row.dataset, row.image_path, known_failures[i], "preprocess")
        else:
            todo.append((i, str(cache_root), spec.to_dict(), row.image_path, row.mask_path))
    if shard is not None:
        todo = todo[shard[0]::shard[1]]
    if todo:
        workers = workers or min(4, len(os.sched_getaffinity(0)))
        log.info("preprocessing %d volumes (%d cached) with %d workers", len(todo), sum(1 for p in paths if p), workers)
        bar = progress(total=len(todo), desc=f"preprocess {spec.shape}", unit="vol", leave=False,
                       log_every_s=60)
        if workers > 1 and len(todo) > 1:
            with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker) as pool:
                results = []
                for res in pool.map(_worker, todo, chunksize=1):
                    results.append(res)
                    bar.update()
        else:
            results = []
            for item in todo:
                results.append(_worker(item))
                bar.update()
        bar.close()
        for idx, path, problem in results:
            if path:
                paths[idx] = path
            else:
                row = manifest.iloc[idx]
                exclusions.add(row["dataset"], row["image_path"], problem, "preprocess")
        if shard is not None:
            return {idx: problem for idx, path, problem in results if not path}
    if shard is not None:
        return {}
    out = manifest.assign(cache_path=paths)
    return out[out["cache_path"] != ""].reset_index(drop=True)
