"""Predict brain age on your own T1-weighted scans with a trained 3D ResNet-18 checkpoint.

    python -m resnet3d.predict --checkpoint=runs/resnet3d/ixi_hh/<run>/best.pt --inputs=a.nii.gz,b.nii.gz
    python -m resnet3d.predict --checkpoint=... --inputs=scans.csv      # columns: image_path[, age, participant_id, sex]

The checkpoint carries the preprocessing spec and the validation-fitted bias correction, so the
same steps are applied. Files that fail the input checks are reported one by one (``excluded.csv``);
the others are still predicted.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from common.brain_age import volume_loader
from common.cli import run as run_cli
from common.data.manifest import Exclusions, make_manifest, parse_age, parse_sex
from common.data.preprocess import VolumeSpec, prepare_volumes
from common.device import select_device
from common.io import write_json
from common.metrics import BiasCorrection, regression_metrics
from common.plots import scatter_predicted_vs_age
from common.results import brain_age_predictions, write_predictions
from common.runlog import setup_logging
from common.training import load_checkpoint, predict
from resnet3d.train import METHOD, model_from_checkpoint

log = logging.getLogger("resnet3d.predict")


def _inputs_table(inputs: str | list | tuple) -> pd.DataFrame:
    if isinstance(inputs, (list, tuple)):
        paths = [str(p) for p in inputs]
    elif str(inputs).endswith((".csv", ".tsv")):
        table = pd.read_csv(inputs, sep="\t" if str(inputs).endswith(".tsv") else ",", dtype=str, keep_default_na=False)
        if "image_path" not in table.columns:
            raise ValueError(f"{inputs}: needs an image_path column (optional: participant_id, age, sex)")
        rows = []
        for _, r in table.iterrows():
            rows.append({"dataset": "user", "participant_id": r.get("participant_id") or Path(r["image_path"]).name.split(".")[0],
                         "session_id": r.get("session_id", ""), "image_path": r["image_path"], "mask_path": "",
                         "age": parse_age(r.get("age", "")), "sex": parse_sex(r.get("sex", "")), "site": "", "label": ""})
        return make_manifest(rows)
    else:
        paths = [p for p in str(inputs).split(",") if p]
    if not paths:
        raise ValueError("no inputs given")
    return make_manifest([{"dataset": "user", "participant_id": Path(p).name.split(".")[0], "session_id": "",
                           "image_path": p, "mask_path": "", "age": float("nan"), "sex": "", "site": "", "label": ""}
                          for p in paths])


def main(checkpoint: str, inputs: str, output_dir: str = "predictions", cache_dir: str = ".cache",
         device: str = "auto", batch_size: int = 4) -> str:
    """Predict brain age for each input scan.

    Args:
        checkpoint: ``best.pt`` of a finished resnet3d run (must carry its bias correction).
        inputs: comma-separated NIfTI paths, or a CSV/TSV with ``image_path`` and optional
            ``participant_id``, ``age`` (years), ``sex``.
        output_dir: where ``predictions.csv``, ``excluded.csv`` and (with ages) ``metrics.json``
            and ``scatter.png`` are written.
        cache_dir: preprocessing cache.
        device: ``auto``, ``cpu``, ``cuda``...
        batch_size: inference batch size.

    Returns:
        Path of the predictions CSV.

    Raises:
        common.training.CheckpointMismatchError: the checkpoint belongs to another method.
        ValueError: the checkpoint has no bias correction (its run was never tested), or no
            input passed the checks.
    """
    setup_logging()
    ckpt = load_checkpoint(checkpoint, METHOD)
    if "bias_correction" not in ckpt:
        raise ValueError(f"{checkpoint} has no bias correction; run `bash resnet3d/test.sh` on its run first")
    spec = VolumeSpec.from_dict(ckpt["preprocess"])
    correction = BiasCorrection.from_dict(ckpt["bias_correction"])
    frame = _inputs_table(inputs)
    exclusions = Exclusions()
    usable = prepare_volumes(frame, spec, cache_dir, exclusions)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    exclusions.write(out / "excluded.csv")
    for row in exclusions.rows:
        print(f"EXCLUDED {row['item']}: {row['reason']}")
    if usable.empty:
        raise ValueError(f"none of the {len(frame)} inputs passed the checks; see {out / 'excluded.csv'}")
    dev = select_device(device)
    model = model_from_checkpoint(ckpt).to(dev)
    model.load_state_dict(ckpt["model_state"])
    usable = usable.assign(split="predict")
    idx, _, pred = predict(model, volume_loader(usable, batch_size, False, 0), dev)
    predicted = np.empty(len(usable))
    predicted[idx] = pred
    table = brain_age_predictions(usable, predicted, correction)
    table.insert(1, "image_path", usable["image_path"].to_numpy())
    path = write_predictions(out / "predictions.csv", table)
    labelled = table["age"].notna().to_numpy()
    if labelled.sum() >= 2:
        age = table.loc[labelled, "age"].to_numpy(float)
        metrics = {"raw": regression_metrics(age, predicted[labelled]),
                   "corrected": regression_metrics(age, correction.apply(predicted[labelled], age))}
        write_json(out / "metrics.json", metrics)
        scatter_predicted_vs_age(age, predicted[labelled], out / "scatter.png", f"{METHOD} predictions",
                                 corrected=correction.apply(predicted[labelled], age))
        log.info("MAE %.2f (corrected %.2f) on %d scans with age", metrics["raw"]["mae"], metrics["corrected"]["mae"],
                 int(labelled.sum()))
    log.info("wrote %s (%d predicted, %d excluded)", path, len(table), len(exclusions))
    return str(path)


#: The command-line interface (fire).
CLI = main

if __name__ == "__main__":
    run_cli(CLI, name="resnet3d.predict")
