"""Download the public datasets from their official sources into ``data/``, or link a local copy.

    python scripts/fetch_data.py                       # IXI (T1 + IXI.xls) and ds000228 into data/
    python scripts/fetch_data.py --datasets=ds000228
    python scripts/fetch_data.py --from=/path/to/copy  # link DIR/<dataset> folders into data/

A dataset is downloaded into ``data/.partial-<name>/`` and renamed to ``data/<name>/`` only when
every file has arrived, so an interrupted or offline run never leaves a half-written dataset.
Licences: IXI CC BY-SA 3.0 (brain-development.org); ds000228 PDDL (OpenNeuro). The IXI-HH 2 mm
subset with DLMUSE labels and the 4-class Alzheimer slices are not fetched here (see README).
"""

from __future__ import annotations

import csv
import io
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

from common.cli import run as run_cli

REPO = Path(__file__).resolve().parents[1]

IXI_BASE = "http://biomedic.doc.ic.ac.uk/brain-development/downloads/IXI"
OPENNEURO_BASE = "https://s3.amazonaws.com/openneuro.org/ds000228"
DS000228_FILES = ["participants.tsv", "participants.json", "dataset_description.json"]
DS000228_DERIV = ["{pid}_normed_anat.nii.gz", "{pid}_analysis_mask.nii.gz"]


class FetchError(RuntimeError):
    """A download failed; nothing was left half-written."""


def _download(url: str, dest: Path, timeout: float = 60) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as fh:
            shutil.copyfileobj(resp, fh, length=1 << 20)
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        tmp.unlink(missing_ok=True)
        raise FetchError(f"could not download {url}: {err}. Are you online? Nothing was kept; "
                         "you can also link a local copy with --from=DIR") from None
    tmp.replace(dest)
    return dest


def fetch_ixi(partial: Path, base: str = IXI_BASE) -> None:
    """IXI T1 tarball (unpacked into IXI-T1/) and the demographics sheet IXI.xls."""
    _download(f"{base}/IXI.xls", partial / "IXI.xls")
    tar_path = _download(f"{base}/IXI-T1.tar", partial / "IXI-T1.tar", timeout=600)
    with tarfile.open(tar_path) as tar:
        tar.extractall(partial / "IXI-T1", filter="data")
    tar_path.unlink()


def fetch_ds000228(partial: Path, base: str = OPENNEURO_BASE) -> None:
    """participants.tsv and the SPM-normalised anatomicals + brain masks of every participant."""
    for name in DS000228_FILES:
        _download(f"{base}/{name}", partial / name)
    rows = list(csv.DictReader(io.StringIO((partial / "participants.tsv").read_text()), delimiter="\t"))
    for i, row in enumerate(rows):
        pid = row["participant_id"]
        for pattern in DS000228_DERIV:
            name = pattern.format(pid=pid)
            _download(f"{base}/derivatives/preprocessed_data/{pid}/{name}",
                      partial / "derivatives" / "preprocessed_data" / pid / name)
        print(f"\rds000228: {i + 1}/{len(rows)} participants", end="", flush=True)
    print()


FETCHERS = {"ixi": fetch_ixi, "ds000228": fetch_ds000228}


def main(datasets: str = "ixi,ds000228", dest: str = str(REPO / "data"), from_dir: str | None = None) -> None:
    """Fetch datasets into ``dest``/<name>, or link them from a local copy.

    Args:
        datasets: comma-separated names: ``ixi`` (official IXI T1 + IXI.xls), ``ds000228``.
        dest: target data folder (use it as DATA_ROOT).
        from_dir: (also spelled ``--from=DIR``) link ``DIR/<name>`` for every dataset folder found
            there (e.g. ixi_hh, ds000228, alzheimer4) instead of downloading.
    """
    dest_dir = Path(dest)
    dest_dir.mkdir(parents=True, exist_ok=True)
    if from_dir:
        src = Path(from_dir).expanduser().resolve()
        if not src.is_dir():
            raise FetchError(f"--from={src} is not a folder")
        linked = 0
        for folder in sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith(".")):
            target = dest_dir / folder.name
            if target.exists() or target.is_symlink():
                print(f"{target} exists; left as is")
                continue
            target.symlink_to(folder, target_is_directory=True)
            print(f"linked {target} -> {folder}")
            linked += 1
        if not linked:
            print(f"nothing new linked from {src}")
        return
    names = datasets.split(",") if isinstance(datasets, str) else list(datasets)  # fire turns a,b into a tuple
    for name in names:
        if name not in FETCHERS:
            raise FetchError(f"unknown dataset {name!r}; downloadable: {sorted(FETCHERS)}")
        final = dest_dir / name
        if final.exists():
            print(f"{final} already present; skipped")
            continue
        partial = dest_dir / f".partial-{name}"
        shutil.rmtree(partial, ignore_errors=True)
        try:
            FETCHERS[name](partial)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        partial.rename(final)
        print(f"{name}: complete in {final}")


#: The command-line interface (fire).
CLI = main

if __name__ == "__main__":
    # `from` is a Python keyword, so `--from=DIR` / `--from DIR` is passed on as `--from_dir`.
    sys.argv = [("--from_dir" + a[len("--from"):]) if a == "--from" or a.startswith("--from=") else a for a in sys.argv]
    try:
        run_cli(CLI, name="scripts/fetch_data.py")
    except FetchError as err:
        print(f"fetch_data: {err}", file=sys.stderr)
        sys.exit(1)
