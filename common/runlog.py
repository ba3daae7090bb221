"""Run folders: ``config.json``, ``metrics.csv`` (one row per epoch), ``train.log`` and TensorBoard events.

Layout: ``runs/<method>/<dataset>/<run_name>/`` (DESIGN.md "Runs and results").
"""

from __future__ import annotations

import csv
import functools
import logging
import platform
import subprocess
import sys
from pathlib import Path

import torch

from common.distributed import is_main_process, world_size
from common.io import write_json

#: What runs write into the tree (result files, generated README blocks and figures): not code, so a
#: change there does not make the code "dirty" (the main job publishes results as it goes).
OUTPUT_PATHSPECS = (":(exclude)results", ":(exclude)benchmarks", ":(exclude,glob)**/*.md", ":(exclude,glob)**/figures/**")


def setup_logging(level: int = logging.INFO) -> None:
    """The console log format of every command (time, level, logger: message). A no-op when the
    root logger already has a handler, so the first caller (the CLI entry point) decides."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_config(run_dir: str | Path) -> dict:
    """The ``config.json`` of one run folder (one fold of a cross-validated run, or a single-split run).

    Raises:
        FileNotFoundError: ``run_dir`` holds no ``config.json``; when it is a cross-validated run
            (``fold<k>/`` sub-folders), the message names its folds, since a fold is what to pass.
    """
    import json

    path = Path(run_dir) / "config.json"
    if not path.is_file():
        folds = [p.name for p in fold_dirs(run_dir) if (p / "config.json").is_file()]
        hint = (f"; it is a cross-validated run: pass one of its folds ({', '.join(folds)}), e.g. "
                f"{Path(run_dir) / folds[0]}" if folds else "")
        raise FileNotFoundError(f"{run_dir} is not a finished run folder (no config.json){hint}")
    return json.loads(path.read_text())


def fold_dirs(run_root: str | Path) -> list[Path]:
    """The ``fold<k>`` folders of a cross-validated run (``runs/<method>/<dataset>/<run_name>``), sorted by
    name; folders moved aside beside them (``fold<k>.stale-*`` by :mod:`common.cv`, TSAN's dead-output
    retry ``fold<k>.dead-seed<s>``) are not folds. Empty when there is none."""
    return sorted(p for p in Path(run_root).glob("fold*") if p.name.removeprefix("fold").isdigit())


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """The last commit that changed the code this process runs (``-dirty`` if tracked code differs),
    or ``"unknown"``. Result files, Markdown and figures (:data:`OUTPUT_PATHSPECS`) are not code:
    a commit that only publishes results keeps the code commit, so the folds of a main job that
    spans several sessions, with results committed in between, still come from one commit.

    Taken once per process, at the first call (run start), so edits made to the tree while a long
    run is going do not change what that run records.
    """
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "log", "-1", "--format=%H", "HEAD", "--", ".", *OUTPUT_PATHSPECS], cwd=root,
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *OUTPUT_PATHSPECS],
                               cwd=root, capture_output=True, text=True).stdout.strip()
        return (sha or "unknown") + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class _LogLines:
    """A file for tqdm that turns each refresh into one log record (control codes dropped)."""

    def __init__(self, logger: logging.Logger):
        self.logger = logger

    def write(self, text: str) -> None:
        text = text.replace("\x1b[A", "").strip("\r\n ")
        if text:
            self.logger.info(text)

    def flush(self) -> None:
        pass


def progress(iterable=None, *, log_every_s: float | None = None, **kwargs):
    """A tqdm progress bar on the main process: drawn when stderr is a terminal; otherwise off, so
    that log files hold log lines, not cursor codes (the epoch summaries are logged instead).

    Args:
        iterable: what to iterate over (or ``None`` with ``total=`` and manual ``update()``).
        log_every_s: where stderr is not a terminal (the main job's log files), log one line
            ``<desc>: <n>/<total> done, <elapsed> elapsed, <remaining> to go`` at most this often,
            plus the first and the last, for long loops that log nothing else (feature extraction,
            preprocessing). ``None``: no such lines.
        **kwargs: tqdm's own (``desc``, ``total``, ``unit``, ``leave``, ...).
    """
    from tqdm import tqdm
    from tqdm.auto import tqdm as tqdm_auto

    if not is_main_process():
        kwargs["disable"] = True
    elif sys.stderr.isatty() or not log_every_s:
        kwargs.setdefault("disable", not sys.stderr.isatty())
    else:
        kwargs.update(file=_LogLines(logging.getLogger("progress")), mininterval=float(log_every_s),
                      maxinterval=float(log_every_s), leave=True, ascii=True,
                      bar_format="{desc}: {n_fmt}/{total_fmt} done, {elapsed} elapsed, {remaining} to go")
        return tqdm(iterable, **kwargs)
    return tqdm_auto(iterable, **kwargs)


def environment_info(device: torch.device) -> dict:
    """Versions and machine facts recorded with every run and result: CPU model and flags, the
    instruction set its kernels use, threads, torch build (:func:`common.device.numerics_info`)."""
    import monai
    import numpy
    import sklearn

    from common.device import numerics_info

    cpu = numerics_info()
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        kind = "native bf16" if cpu["cpu_flags"]["avx512_bf16"] or cpu["cpu_flags"]["amx_bf16"] else (
            "AVX-512" if cpu["cpu_flags"]["avx512f"] else "AVX2")
        device_name = f"{cpu['cpu_model']} ({kind}; {cpu['cpu_capability']} kernels, {cpu['threads']} threads)"
    return {
        "device": str(device), "device_name": device_name, "python": sys.version.split()[0],
        "torch": torch.__version__, "monai": monai.__version__, "numpy": numpy.__version__,
        "sklearn": sklearn.__version__, "platform": platform.platform(), "cpu": cpu,
    }


class RunLogger:
    """Writes a run's config, per-epoch metrics CSV and TensorBoard scalars.

    Args:
        run_dir: the run folder (created).
        config: every resolved argument; written to ``config.json`` with commit and versions.
        device: compute device, recorded in the config.
        resume: append to an existing ``metrics.csv`` instead of starting a new one.

    Under torchrun only rank 0 writes; on the other processes every method is a no-op.
    """

    def __init__(self, run_dir: str | Path, config: dict, device: torch.device, resume: bool = False):
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = Path(run_dir)
        self.config = {**config, "git_commit": git_commit(), "environment": environment_info(device),
                       "world_size": world_size()}
        self.active = is_main_process()
        self._fields: list[str] | None = None
        self.metrics_path = self.run_dir / "metrics.csv"
        if not self.active:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.run_dir / "config.json", self.config)
        self.log_handler = logging.FileHandler(self.run_dir / "train.log")  # every log line of the run
        self.log_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(self.log_handler)
        if logging.getLogger().level > logging.INFO:
            logging.getLogger().setLevel(logging.INFO)
        if not resume and self.metrics_path.exists():
            self.metrics_path.unlink()
        self.writer = SummaryWriter(log_dir=str(self.run_dir))

    def truncate(self, before_epoch: int) -> None:
        """Keep only ``metrics.csv`` rows of epochs before ``before_epoch`` (on resume: rows written
        after the last checkpoint, or a half-written last line from a killed run, are dropped)."""
        if not self.active or not self.metrics_path.exists():
            return
        import pandas as pd

        from common.io import write_csv

        try:
            rows = pd.read_csv(self.metrics_path, on_bad_lines="skip")
        except pd.errors.EmptyDataError:
            self.metrics_path.unlink()
            return
        rows = rows[pd.to_numeric(rows["epoch"], errors="coerce") < before_epoch]
        write_csv(self.metrics_path, rows)
        self._fields = list(rows.columns)

    def log_epoch(self, epoch: int, scalars: dict[str, float]) -> None:
        """Append one row to ``metrics.csv`` and write ``scalars`` (names like ``loss/train``)
        to TensorBoard with the epoch as step."""
        if not self.active:
            return
        row = {"epoch": epoch, **scalars}
        new = not self.metrics_path.exists()
        if self._fields is None:
            self._fields = list(row)
        with open(self.metrics_path, "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self._fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, epoch)
        self.writer.flush()

    def log_hparams(self, metrics: dict[str, float]) -> None:
        """The run's scalar settings with its final ``metrics`` in TensorBoard's HPARAMS tab."""
        if not self.active:
            return
        hparams = {k: v for k, v in self.config.items() if isinstance(v, (int, float, str, bool)) and k not in
                   ("run_dir", "data_root", "results_dir", "cache_dir", "git_commit")}
        self.writer.add_hparams(hparams, {f"hparam/{k}": v for k, v in metrics.items()}, run_name="hparams")
        self.writer.flush()

    def close(self) -> None:
        if self.active:
            self.writer.close()
            logging.getLogger().removeHandler(self.log_handler)
            self.log_handler.close()
