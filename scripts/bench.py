"""Speed benchmark: cached vs naive data path, fp32 vs the CPU fast path, and the main job's wall time.

    python scripts/bench.py                       # everything; writes benchmarks/BENCHMARKS.md (+ .json)
    python scripts/bench.py --sections=loading,models --repeats=5
    bash scripts/bench.sh                         # the same, with set-up

Sections (all measured in this run, on this machine, with nothing asserted about the numbers):

- ``preprocess``: volumes/s of the source preprocessing of resnet3d (MONAI, at the ``cpu`` grid) cold
  (empty cache) vs cached (the memory-mapped ``.npy`` read by the training loaders).
- ``loading``: one training epoch of the OASIS ResBlock regressor (``cpu`` profile) with the OASIS
  tutorial's naive loading (every NIfTI decoded and resampled with nilearn at every epoch) vs the
  cached path, same model, same batches.
- ``models``: for each deep method at its ``cpu`` profile's input size and batch: training and
  inference samples/s and the peak resident memory of a fresh process, in fp32, with
  channels_last(_3d) and with bf16 autocast (on CPUs without native bf16 it is emulated and very
  slow, so it is skipped unless ``--bf16_repeats`` asks for it). A measuring process that fails
  gives a "failed" row, not a hang.
- ``precision`` (not in the default): bf16 against fp32 training on real data, validation only.
- ``numerics``: fp32 training fingerprints per CPU kind and kernel setting (kept across machines).
- ``mainjob``: wall time of each method in the main job (``wall_time_s`` of the committed result
  files, i.e. the runs that produced the leaderboard).
- ``standardize`` (not in the default): the shared preprocessing per step on IXI-HH scans: deepbet's
  brain mask against the DLMUSE mask (Dice), seconds per step, cached read time.
- ``invariance`` (not in the default): for each trained run given by ``--invariance_runs`` (resnet3d,
  TSAN stage 1, OASIS ResBlock, VGG16 + SVR), the change
  of the predicted age when the same scans arrive as acquisition variants (resampled, reoriented,
  moved, cropped, bias field, noise, skull off; :mod:`common.data.variants`), mean / max |change| over
  ``--invariance_scans`` IXI-HH test-split scans, beside the model-free agreement of the preprocessed
  arrays (correlation inside the brain, brain-mask Dice).

Timings are medians over ``--repeats`` timed repetitions after one warm-up. The report goes to
``benchmarks/``, not ``results/``: it holds bf16 trials, and ``results/`` holds only the result files
of runs (fp32 in every ``cpu`` profile, so any CPU reproduces them).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from queue import Empty

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import common  # noqa: E402,F401  (first: pins the CPU code paths, common/numerics.py)
from common import numerics  # noqa: E402
from common.cli import run as run_cli  # noqa: E402
from common.data.datasets import VolumeDataset  # noqa: E402
from common.data.manifest import Exclusions  # noqa: E402
from common.data.preprocess import VolumeSpec, prepare_volumes, preprocess_volume  # noqa: E402
from common.data.sources import load_dataset  # noqa: E402
from common.device import apply_onednn_policy, configure_cpu_threads, cpu_has_fast_bf16  # noqa: E402
from common.io import atomic_write, write_json, write_text  # noqa: E402
from common.paths import find_data_root  # noqa: E402
from common.training import adam  # noqa: E402

SECTIONS = ("preprocess", "loading", "models", "precision", "numerics", "mainjob", "standardize", "invariance")


def machine() -> dict:
    """CPU model, cores, SIMD flags relevant to the fast path, kernel instruction set, torch version and
    threads (from :func:`common.device.numerics_info`, what every result records)."""
    from common.device import numerics_info

    cpu = numerics_info()
    return {"cpu": cpu["cpu_model"], "cores": len(os.sched_getaffinity(0)),
            "simd": [flag for flag, present in cpu["cpu_flags"].items() if present], "torch": torch.__version__,
            "threads": cpu["threads"], "python": platform.python_version(), "native_bf16": cpu_has_fast_bf16(),
            "cpu_capability": cpu["cpu_capability"]}


def _timed(fn: Callable[[], object], repeats: int) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def _frame(dataset: str, n: int, data_root: str | None, split: str | None = None):
    """The first ``n`` labelled rows of ``dataset`` by participant_id (of ``split`` of outer fold 0 of
    the shared folds, if given)."""
    manifest, _ = load_dataset(dataset, find_data_root(data_root))
    if split:
        from common.data.manifest import subjects_table
        from common.splits import load_split

        fold0 = load_split(dataset, subjects_table(manifest.dropna(subset=["age"])), fold=0)
        manifest = manifest[manifest["participant_id"].isin(fold0.query("split == @split")["participant_id"])]
    frame = manifest[manifest["age"].notna()].sort_values("participant_id").head(n).reset_index(drop=True)
    if frame.empty:
        raise FileNotFoundError(f"no labelled images in {dataset}")
    return frame


def bench_preprocess(n: int, repeats: int, data_root: str | None) -> dict:
    """Cold (empty cache, one worker) vs cached volumes/s for resnet3d's cpu-profile preprocessing."""
    frame = _frame("ixi_hh", n, data_root)
    spec = VolumeSpec(shape=(48, 48, 48), spacing_mm=(4.0, 4.0, 4.0))
    cold = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            prepare_volumes(frame, spec, tmp, Exclusions(), workers=1)
            cold.append(time.perf_counter() - t)
    with tempfile.TemporaryDirectory() as tmp:
        prepare_volumes(frame, spec, tmp, Exclusions(), workers=1)

        def cached():
            ready = prepare_volumes(frame, spec, tmp, Exclusions(), workers=1)
            for i in range(len(ready)):
                VolumeDataset(ready)[i]

        warm = _timed(cached, repeats)
    cold_s, warm_s = statistics.median(cold), statistics.median(warm)
    return {"volumes": len(frame), "spec": spec.to_dict(), "cold_s": cold, "cached_s": warm,
            "cold_vol_per_s": len(frame) / cold_s, "cached_vol_per_s": len(frame) / warm_s, "ratio": cold_s / warm_s}


class NaiveVolumes(torch.utils.data.Dataset):
    """The OASIS tutorial's loading: decode and resample (nilearn) every NIfTI each time it is read."""

    def __init__(self, frame, spec: VolumeSpec):
        self.frame, self.spec = frame.reset_index(drop=True), spec

    def __len__(self) -> int:
        return len(self.frame)

    def __getitem__(self, i: int) -> dict:
        row = self.frame.iloc[i]
        image = torch.from_numpy(preprocess_volume(row["image_path"], self.spec))
        return {"image": image, "target": torch.tensor(float(row["age"])), "index": torch.tensor(i)}


def _oasis_epoch(loader, model, optimizer) -> None:
    model.train()
    for batch in loader:
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(batch["image"]), (batch["target"] - 50) / 20)
        loss.backward()
        optimizer.step()


def bench_loading(n: int, repeats: int, data_root: str | None) -> dict:
    """One OASIS ResBlock training epoch: naive nilearn loading vs the memory-mapped cache."""
    from baselines.oasis_resblock.model import OasisResBlockRegressor
    from baselines.oasis_resblock.train import PROFILES

    hp = PROFILES["cpu"]
    spec = VolumeSpec(shape=(hp["image_size"],) * 3, spacing_mm=(float(hp["spacing_mm"]),) * 3,
                      intensity="zscore_volume", pipeline="nilearn_centered")
    frame = _frame("ixi_hh", n, data_root)
    torch.manual_seed(0)
    model = OasisResBlockRegressor()
    optimizer = adam(model.parameters(), lr=hp["lr"], weight_decay=0.01, decoupled=True)
    with tempfile.TemporaryDirectory() as tmp:
        ready = prepare_volumes(frame, spec, tmp, Exclusions(), workers=1)
        loaders = {
            "naive": torch.utils.data.DataLoader(NaiveVolumes(frame, spec), batch_size=hp["batch_size"]),
            "cached": torch.utils.data.DataLoader(VolumeDataset(ready), batch_size=hp["batch_size"]),
        }
        times = {k: _timed(lambda loader=loader: _oasis_epoch(loader, model, optimizer), repeats)
                 for k, loader in loaders.items()}
    naive, cached = statistics.median(times["naive"]), statistics.median(times["cached"])
    return {"subjects": len(frame), "batch_size": hp["batch_size"], "spec": spec.to_dict(), "naive_s": times["naive"],
            "cached_s": times["cached"], "naive_epoch_s": naive, "cached_epoch_s": cached, "ratio": naive / cached}


def _model_specs() -> dict[str, dict]:
    """Each deep method at its cpu profile: builder, input shape (without batch), batch, extra inputs."""
    return {
        "resnet3d": dict(build="resnet3d", shape=(1, 48, 48, 48), batch=4),
        "oasis_resblock": dict(build="oasis_resblock", shape=(1, 32, 32, 32), batch=8),
        "tsan_stage1": dict(build="tsan_stage1", shape=(1, 91, 109, 91), batch=8),
        "midslice_resnet18": dict(build="midslice_resnet18", shape=(3, 112, 112), batch=24),
        "alz_altzcnn": dict(build="alz_altzcnn", shape=(3, 64, 64), batch=128),
    }


def _build(name: str) -> torch.nn.Module:
    if name == "resnet3d":
        from resnet3d.model import BrainAgeResNet3D
        return BrainAgeResNet3D()
    if name == "oasis_resblock":
        from baselines.oasis_resblock.model import OasisResBlockRegressor
        return OasisResBlockRegressor()
    if name == "tsan_stage1":
        from tsan.model import init_weights
        from tsan.train import PROFILES, build_first_stage
        return build_first_stage(PROFILES["cpu"]).apply(init_weights)
    if name == "midslice_resnet18":
        from midslice_classifier.model import build_resnet18_classifier
        return build_resnet18_classifier(3, "none")[0]
    if name == "alz_altzcnn":
        from alz_cnn.model import AltzCNN
        return AltzCNN()
    raise KeyError(name)


def _measure_model(name: str, mode: str, repeats: int, queue) -> None:
    """In a fresh process: training and inference samples/s and peak RSS for one model and mode."""
    if mode == "bf16":  # the fast bf16 kernels need oneDNN, with its native instruction set
        numerics.release_onednn_pin()
        apply_onednn_policy("bf16")
    configure_cpu_threads()
    spec = _model_specs()[name]
    torch.manual_seed(0)
    model = _build(spec["build"])
    x = torch.randn(spec["batch"], *spec["shape"])
    extras = [torch.randint(0, 2, (spec["batch"],))] if getattr(model, "extra_inputs", ()) else []
    if mode == "channels_last":
        fmt = torch.channels_last_3d if x.ndim == 5 else torch.channels_last
        model = model.to(memory_format=fmt)
        x = x.contiguous(memory_format=fmt)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=(mode == "bf16"))
    optimizer = adam(model.parameters(), lr=1e-4)

    def train_step():
        model.train()
        optimizer.zero_grad()
        with autocast:
            out = model(x, *extras)
        out.float().square().mean().backward()
        optimizer.step()

    @torch.no_grad()
    def infer_step():
        model.eval()
        with autocast:
            model(x, *extras)

    train = _timed(train_step, repeats)
    infer = _timed(infer_step, repeats)
    queue.put({"model": name, "mode": mode, "batch": spec["batch"], "input": list(spec["shape"]),
               "train_step_s": train, "infer_step_s": infer,
               "train_samples_per_s": spec["batch"] / statistics.median(train),
               "infer_samples_per_s": spec["batch"] / statistics.median(infer),
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def bench_models(repeats: int, models: tuple[str, ...], bf16_repeats: int) -> list[dict]:
    """fp32 vs channels_last vs bf16 autocast for every deep method, each in a fresh process."""
    ctx = mp.get_context("spawn")
    rows = []
    for name in models:
        for mode in ("fp32", "channels_last", "bf16"):
            queue = ctx.Queue()
            n = bf16_repeats if (mode == "bf16" and not cpu_has_fast_bf16()) else repeats
            if n <= 0:
                continue
            proc = ctx.Process(target=_measure_model, args=(name, mode, n, queue))
            proc.start()
            row = None
            while row is None and (proc.is_alive() or not queue.empty()):
                try:
                    row = queue.get(timeout=5)
                except Empty:
                    pass
            proc.join()
            if row is None:  # the measuring process failed: its traceback is above; the row says so
                print(f"[bench] {name} {mode}: FAILED (exit code {proc.exitcode})", flush=True)
                rows.append({"model": name, "mode": mode, "error": f"measuring process exited with {proc.exitcode}"})
                continue
            print(f"[bench] {name} {mode}: train {row['train_samples_per_s']:.2f} samples/s, "
                  f"inference {row['infer_samples_per_s']:.2f} samples/s, peak RSS {row['peak_rss_mb']:.0f} MB", flush=True)
            rows.append(row)
    return rows


#: Train CLIs of the methods the ``precision`` section can run.
PRECISION_MODULES = {"resnet3d": "resnet3d.train", "oasis_resblock": "baselines.oasis_resblock.train"}


def _run_summary(run_dir: Path) -> dict:
    """Best validation score, its epoch, skipped steps and seconds per epoch of a finished run."""
    metrics = __import__("pandas").read_csv(run_dir / "metrics.csv")
    score = next(c for c in ("mae/val", "mse/val", "acc/val", "bacc/val") if c in metrics.columns)
    best = metrics[score].idxmin() if score.endswith(("mae/val", "mse/val")) else metrics[score].idxmax()
    return {"selection": score, "best_val": float(metrics.loc[best, score]), "best_epoch": int(metrics.loc[best, "epoch"]),
            "epochs": len(metrics), "nonfinite_steps": int(metrics.get("train/nonfinite_steps", [0]).sum()),
            "s_per_epoch": float(metrics["time/elapsed_s"].iloc[-1]) / len(metrics)}


def _same_weights(a: Path, b: Path) -> bool:
    sa, sb = (torch.load(p / "best.pt", weights_only=True)["model_state"] for p in (a, b))
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


#: Kernel settings compared by the ``numerics`` section, as environment variables of a fresh process.
NUMERICS_CONFIGS = {
    "avx2-pinned (default)": {},
    # oneDNN as before 2026-12-05 (now off by default: its bits differed between a Zen 3 and a Zen 4)
    "avx2-pinned, oneDNN on": {numerics.ONEDNN_ENV: "1"},
    "native ISA": {numerics.ISA_ENV: "native"},
    # MKL's AVX2 branch, the pin's MKL setting before MKL_CBWR=COMPATIBLE became the default (its sgemm
    # differs between an Intel Xeon and an AMD EPYC; COMPATIBLE's does not)
    "avx2-pinned, MKL_CBWR=AVX2": {"MKL_CBWR": "AVX2"},
}


def _digest(*tensors, digits: int = 8) -> str:
    """First ``digits`` hex digits of the SHA-256 of the tensors' (or arrays') bytes."""
    import hashlib

    arrays = [t.detach().contiguous().numpy() if isinstance(t, torch.Tensor) else t for t in tensors]
    return hashlib.sha256(b"".join(a.tobytes() for a in arrays)).hexdigest()[:digits]


def op_fingerprints() -> dict[str, str]:
    """Fingerprints of the single kernels fp32 training and preprocessing rest on, each on seeded
    data, so that two CPU kinds whose training fingerprints differ show which kernel differs (the
    first op whose digest differs is where the weights part). Same process settings as the training
    fingerprint. Returns ``{op: 8 hex digits}``."""
    import numpy as np
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(7)
    a, b = torch.randn(257, 259, generator=gen), torch.randn(259, 263, generator=gen)
    x = torch.randn(2, 8, 20, 20, 20, generator=gen, requires_grad=True)
    w = torch.randn(16, 8, 3, 3, 3, generator=gen, requires_grad=True)
    y = F.conv3d(x, w, padding=1)
    grad_x, grad_w = torch.autograd.grad(y, (x, w), torch.randn(y.shape, generator=gen))
    # two of the 3D ResNet-18's own layers at 48^3, batch 4 (where oneDNN picks other implementations:
    # a strided convolution, and the last stage's 512 channels on a 2^3 grid)
    layers, gen_layers = {}, torch.Generator().manual_seed(11)  # own generator: the ops below keep their data
    for name, (c_in, c_out, size, stride) in {"strided": (64, 128, 12, 2), "512": (512, 512, 2, 1)}.items():
        xi = torch.randn(4, c_in, size, size, size, generator=gen_layers, requires_grad=True)
        wi = (torch.randn(c_out, c_in, 3, 3, 3, generator=gen_layers) / (c_in * 27) ** 0.5).requires_grad_()
        yi = F.conv3d(xi, wi, stride=stride, padding=1)
        layers[name] = (yi, *torch.autograd.grad(yi, (xi, wi), torch.randn(yi.shape, generator=gen_layers)))
    v = torch.rand(100_003, generator=gen) + 0.5
    p = torch.nn.Parameter(torch.randn(1000, generator=gen))
    p.grad = torch.randn(1000, generator=gen)
    opt = adam([p], lr=3e-4, weight_decay=0.01, decoupled=True)
    opt.step()
    opt.step()
    rng = np.random.default_rng(7)
    na, nb = rng.standard_normal((257, 259)), rng.standard_normal((259, 263))
    return {"matmul": _digest(a @ b),
            "linear": _digest(F.linear(a, b.T[:64].contiguous())),
            "conv3d forward": _digest(y),
            "conv3d backward": _digest(grad_x, grad_w),
            "conv3d 64->128 stride 2 at 12³, forward + backward": _digest(*layers["strided"]),
            "conv3d 512->512 at 2³, forward + backward": _digest(*layers["512"]),
            "batch norm (train)": _digest(F.batch_norm(y, None, None, training=True)),
            "max pool 3d": _digest(F.max_pool3d(y, 3, 2, 1)),
            "exp, log, sqrt": _digest(v.exp(), v.log(), v.sqrt()),
            "sum, mean": _digest(v.sum(), v.mean(), y.sum((2, 3, 4))),
            "AdamW step": _digest(p),
            "numpy matmul": _digest(na @ nb),
            "numpy exp, log": _digest(np.exp(na), np.log(np.abs(na) + 1))}


def _fingerprint_worker() -> None:
    """In a fresh process: 5 AdamW steps of the 3D ResNet-18 (48^3, batch 4, seeded synthetic data,
    fp32, 2 threads); prints the SHA-256 of the resulting weights, the median time of steps 2-5 and
    :func:`op_fingerprints`."""
    from common.device import configure_numerics
    from resnet3d.model import BrainAgeResNet3D

    configure_numerics(torch.device("cpu"), "fp32")
    torch.manual_seed(0)
    model = BrainAgeResNet3D(init_age_bias=40.0)
    opt = adam(model.parameters(), lr=3e-4, weight_decay=0.01, decoupled=True)
    gen = torch.Generator().manual_seed(1)
    times = []
    for _ in range(5):  # the first step (kernel set-up) is not timed
        start = time.perf_counter()
        x = torch.randn(4, 1, 48, 48, 48, generator=gen)
        y = torch.rand(4, generator=gen) * 60 + 20
        opt.zero_grad()
        torch.nn.functional.huber_loss(model(x), y).backward()
        opt.step()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times[1:])
    print(json.dumps({"sha256": _digest(*model.state_dict().values(), digits=16), "step_s": seconds,
                      "cpu_capability": torch.backends.cpu.get_cpu_capability(), "ops": op_fingerprints()}))


def preprocessing_fingerprint(data_root: str | None) -> dict:
    """SHA-256 (16 hex digits) of the shared preprocessing's output (:func:`standardize_brain`: brain
    and mask on the MNI grid) for the first IXI-HH scan, so that two CPU kinds can be compared for the
    brain extraction, N4 and ANTs registration too. ``{"error": ...}`` where the data is absent."""
    import nibabel as nib
    import numpy as np

    from common.data.standardize import standardize_brain

    try:
        row = _frame("ixi_hh", 1, data_root).iloc[0]
    except (FileNotFoundError, KeyError, ValueError) as err:
        return {"error": f"no IXI-HH scan ({err})"}
    img = nib.load(row["image_path"])
    start = time.perf_counter()
    out = standardize_brain(np.asarray(img.dataobj, np.float32), img.affine)
    return {"participant_id": row["participant_id"], "sha256": _digest(out.brain, out.mask, digits=16),
            "seconds": time.perf_counter() - start}


def bench_numerics(previous: dict | None, data_root: str | None = None) -> dict:
    """Fingerprints of fp32 training under each kernel setting, and of the shared preprocessing of one
    real scan (:func:`preprocessing_fingerprint`), kept per CPU kind across runs (the section merges
    with earlier machines' rows): the same fingerprint on two CPU kinds means bit-identical results
    there."""
    import subprocess

    kind = machine()
    key = f"{kind['cpu']} ({', '.join(kind['simd'])})"
    rows = dict((previous or {}).get("machines", {}))
    mine = {}
    for name, extra in NUMERICS_CONFIGS.items():
        env = {k: v for k, v in os.environ.items()
               if k not in numerics.AVX2_PIN and k not in (numerics.PINNED_ENV, numerics.ONEDNN_ENV)}
        env.update({"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2", **extra})
        out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--fingerprint_worker"], env=env,
                             capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            mine[name] = {"error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
            continue
        mine[name] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"[bench] numerics {name}: {mine[name]['sha256']} ({mine[name]['cpu_capability']}, "
              f"{mine[name]['step_s']:.2f} s/step)", flush=True)
    from common.runlog import git_commit

    preprocessing = preprocessing_fingerprint(data_root)
    print(f"[bench] numerics preprocessing: {preprocessing}", flush=True)
    rows[key] = {"commit": git_commit()[:12],
                 "date": time.strftime("%Y-%m-%d"), "configs": mine, "preprocessing": preprocessing}
    return {"machines": rows}


def bench_precision(methods: tuple[str, ...], dataset: str, data_root: str | None, runs_dir: str,
                    results_dir: str) -> dict:
    """bf16 autocast against fp32 on real data: each method's ``cpu`` profile trained on ``dataset``
    once in fp32 and twice in bf16 (same command: is bf16 deterministic?), validation score and
    seconds per epoch from each run's ``metrics.csv``. Only on a CPU with native bf16; elsewhere the
    section says so. The test split is not read (``--publish=False`` runs still test at the end,
    but only validation numbers are reported here)."""
    if not cpu_has_fast_bf16():
        return {"skipped": "this CPU has no native bf16 (avx512_bf16/amx_bf16): bf16 autocast is emulated here, "
                           "20-70x slower than fp32; run this section on a CPU that has it"}
    import subprocess

    from common.runlog import git_commit

    tag = git_commit()[:8]
    rows = []
    for method in methods:
        runs = {}
        for precision, repeat in (("fp32", 0), ("bf16", 0), ("bf16", 1)):
            name = f"bench-{precision}-{repeat}-{tag}"
            cmd = [sys.executable, "-m", PRECISION_MODULES[method], "train", f"--dataset={dataset}", "--profile=cpu",
                   f"--amp_dtype={precision}", "--publish=False", f"--run_name={name}", f"--runs_dir={runs_dir}",
                   f"--results_dir={results_dir}"] + ([f"--data_root={data_root}"] if data_root else [])
            log_path = Path(runs_dir) / "logs" / f"bench_precision_{method}_{name}.log"
            log_path.parent.mkdir(parents=True, exist_ok=True)
            print(f"[bench] precision: {method} {precision} run {repeat} (log {log_path})", flush=True)
            with open(log_path, "w") as fh:
                rc = subprocess.run(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT).returncode
            run_dir = Path(runs_dir) / method / dataset / name
            row = {"method": method, "precision": precision, "repeat": repeat, "returncode": rc, "run_dir": str(run_dir)}
            if rc == 0:
                row.update(_run_summary(run_dir))
                runs[(precision, repeat)] = run_dir
            else:
                lines = log_path.read_text().strip().splitlines()
                row["error"] = next((ln for ln in reversed(lines) if "Error" in ln), lines[-1] if lines else "failed")
            rows.append(row)
        if ("bf16", 0) in runs and ("bf16", 1) in runs:
            rows[-1]["identical_to_first_bf16"] = _same_weights(runs[("bf16", 0)], runs[("bf16", 1)])
    return {"dataset": dataset, "rows": rows}


from scripts.mainjob import MAINJOB_METHODS, ONE_RUN_PER_DATASET  # noqa: E402


def mainjob_minutes(rows: list[dict]) -> dict[str, float]:
    """Minutes per method: the sum over its runs (the maximum over one run's files where a single
    process writes several results, :data:`ONE_RUN_PER_DATASET`)."""
    per_run: dict[tuple[str, str, str], float] = {}
    for r in rows:
        key = (r["method"], r["dataset"], "" if r["method"] in ONE_RUN_PER_DATASET else r["result"])
        per_run[key] = max(per_run.get(key, 0.0), r["wall_time_s"])
    minutes: dict[str, float] = {}
    for (method, _, _), seconds in per_run.items():
        minutes[method] = minutes.get(method, 0.0) + seconds / 60
    return minutes


def bench_mainjob(results_dir: str) -> list[dict]:
    """Wall time per main-job method and dataset, from the committed result files."""
    rows = []
    for path in sorted(Path(results_dir).glob("*.json")):
        stem = path.stem
        method = next((m for m, prefixes in MAINJOB_METHODS.items() if stem.startswith(prefixes)), None)
        if method is None:
            continue
        result = json.loads(path.read_text())
        rows.append({"method": method, "result": stem, "dataset": result.get("dataset", stem.split("__")[-1]),
                     "wall_time_s": float(result.get("wall_time_s") or 0.0), "commit": result.get("commit", "")[:10],
                     "profile": result.get("profile", "")})
    return rows


def bench_standardize(n: int, data_root: str | None) -> dict:
    """Each step of the shared preprocessing on ``n`` IXI-HH scans: seconds, deepbet Dice vs DLMUSE."""
    import nibabel as nib
    import numpy as np

    from common.data.checks import load_checked
    from common.data.standardize import StandardCache, extract_brain, n4_in_brain, standardize_brain

    rows = []
    extract_brain(*load_checked(_frame("ixi_hh", 1, data_root)["image_path"][0])[:2])  # load deepbet once, not timed
    for row in _frame("ixi_hh", n, data_root).itertuples():
        data, affine, _ = load_checked(row.image_path)
        t0 = time.perf_counter()
        mask = extract_brain(data, affine)
        t1 = time.perf_counter()
        n4_in_brain(data, affine, mask)
        t2 = time.perf_counter()
        standardize_brain(data, affine)
        t3 = time.perf_counter()
        ref = np.asarray(nib.load(row.mask_path).dataobj) > 0
        dice = 2 * float((mask & ref).sum()) / float(mask.sum() + ref.sum())
        rows.append({"participant_id": row.participant_id, "dice_vs_dlmuse": round(dice, 4),
                     "extract_s": round(t1 - t0, 2), "n4_s": round(t2 - t1, 2), "total_s": round(t3 - t2, 2)})
    with tempfile.TemporaryDirectory() as tmp:
        cache = StandardCache(tmp)
        path = _frame("ixi_hh", 1, data_root)["image_path"][0]
        cache.get(path)
        cached_s = statistics.median(_timed(lambda: cache.get(path), 5))
    return {"scans": rows, "cached_read_s": round(cached_s, 4),
            "registration_s_median": round(statistics.median(r["total_s"] - r["extract_s"] - r["n4_s"] for r in rows), 2)}


def _predict_brains(run_dir: str, brains: list, frame, features_memo: dict | None = None) -> list[float]:
    """Predicted ages (years) of standardised brains (:class:`common.data.standardize.StandardBrain`,
    on the shared MNI grid) by one trained run: a torch run's ``best.pt`` on its own grid
    (:func:`common.data.standardize.to_method_grid`), or VGG16 + SVR's fitted fusion on the brains'
    slice features. ``features_memo`` (the caller's dict, kept while the brains live) holds each
    brain's VGG16 features per feature cache, so early and late fusion extract them once (3-4 s a
    brain on 2 cores)."""
    import importlib

    import numpy as np

    from common.brain_age import volume_loader
    from common.data.preprocess import VolumeSpec
    from common.data.standardize import to_method_grid
    from common.predict import MODEL_MODULES, SKLEARN_MODEL
    from common.training import load_checkpoint, predict

    run_dir = Path(run_dir)
    if (run_dir / SKLEARN_MODEL).is_file():  # VGG16 + SVR
        from baselines.vgg16_svr.train import feature_cache, load_fitted, predict_fitted

        model, card = load_fitted(run_dir)
        cache = feature_cache(card, ".cache")
        memo = {} if features_memo is None else features_memo
        keys = [(str(cache.dir), id(b)) for b in brains]
        for key, b in zip(keys, brains):
            if key not in memo:
                memo[key] = cache.from_brain(b.brain)
        return predict_fitted(card["fusion"], model, [memo[key] for key in keys]).tolist()
    cfg = json.loads((run_dir / "config.json").read_text())
    module = importlib.import_module(MODEL_MODULES[cfg["method"]])
    ckpt = load_checkpoint(run_dir / "best.pt", cfg["method"])
    spec = VolumeSpec.from_dict(ckpt["preprocess"])
    model = module.model_from_checkpoint(ckpt)
    model.load_state_dict(ckpt["model_state"])
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, brain in enumerate(brains):
            paths.append(str(Path(tmp) / f"{i}.npy"))
            np.save(paths[-1], to_method_grid(brain, spec.shape, spec.spacing_mm, spec.intensity, spec.smooth_fwhm_mm))
        rows = frame.assign(cache_path=paths, age=0.0).reset_index(drop=True)
        idx, _, pred = predict(model, volume_loader(rows, 8, False, 0), torch.device("cpu"))
    out = np.empty(len(rows))
    out[idx] = pred
    return out.tolist()


def _cached_variant(cache, row, variant: str, compute):
    """The standardised brain of one acquisition variant of a scan, kept beside the shared cache (the
    variants are deterministic, so a second benchmark of other runs skips their preprocessing)."""
    import numpy as np

    from common.data.standardize import StandardBrain

    path = cache.dir.parent / f"invariance-{cache.dir.name}" / f"{cache.path_for(row.image_path).stem}-{variant}.npz"
    if path.exists():
        with np.load(path) as stored:
            return StandardBrain(stored["brain"], stored["mask"], json.loads(str(stored["qc"])))
    result = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda fh: np.savez_compressed(fh, brain=result.brain, mask=result.mask,
                                                      qc=json.dumps(result.qc)), mode="wb")
    return result


def bench_invariance(runs: dict[str, str], n: int, data_root: str | None) -> dict:
    """Prediction change per variant and run; model-free agreement of the preprocessed arrays."""
    import nibabel as nib
    import numpy as np

    from common.data.checks import BadImageError, load_checked
    from common.data.standardize import StandardCache, standardize_brain
    from common.data.variants import standard_variants

    scans = _frame("ixi_hh", n, data_root, split="test")
    cache = StandardCache(".cache")
    brains: dict[str, list] = {"native": []}
    agreement: dict[str, list] = {}
    for row in scans.itertuples():
        native = cache.get(row.image_path)
        brains["native"].append(native)
        data, affine, _ = load_checked(row.image_path)
        mask = np.asarray(nib.load(row.mask_path).dataobj) > 0
        for variant, make in standard_variants(mask).items():
            try:
                varied = _cached_variant(cache, row, variant, lambda m=make, d=data, a=affine: standardize_brain(*m(d, a)))
            except BadImageError as err:
                varied = None
                print(f"[bench] invariance: {row.participant_id} {variant} excluded: {err.problem}", flush=True)
            brains.setdefault(variant, []).append(varied)
            if varied is not None:
                both = native.mask & varied.mask
                agreement.setdefault(variant, []).append(
                    (float(np.corrcoef(native.brain[both], varied.brain[both])[0, 1]),
                     2 * float(both.sum()) / float(native.mask.sum() + varied.mask.sum())))
        print(f"[bench] invariance: {row.participant_id} done", flush=True)
    out = {"scans": scans["participant_id"].tolist(), "runs": runs, "variants": {}}
    frame = scans[["participant_id", "session_id", "sex"]] if "sex" in scans else scans[["participant_id", "session_id"]]
    memo: dict = {}  # VGG16 features per brain, shared by the runs of one feature cache
    reference = {name: _predict_brains(run, brains["native"], frame, memo) for name, run in runs.items()}
    for variant, items in brains.items():
        if variant == "native":
            continue
        keep = [i for i, b in enumerate(items) if b is not None]
        entry = {"excluded": len(items) - len(keep)}
        if agreement.get(variant):
            corr, dice = np.array(agreement[variant]).T
            entry |= {"min_correlation": round(float(corr.min()), 4), "min_dice": round(float(dice.min()), 4)}
        for name, run in runs.items():
            pred = _predict_brains(run, [items[i] for i in keep], frame.iloc[keep], memo)
            delta = np.abs(np.asarray(pred) - np.asarray(reference[name])[keep])
            entry[name] = {"mean_abs_change": round(float(delta.mean()), 3), "max_abs_change": round(float(delta.max()), 3)}
        out["variants"][variant] = entry
    return out


def _md(report: dict) -> str:
    m = report["machine"]
    out = ["# Benchmarks", "",
           f"Last written by `python scripts/bench.py` on {report['date']} (commit {report['commit']}), on "
           f"{m['cpu']}, {m['cores']} cores, SIMD {', '.join(m['simd']) or 'none'}, native bf16: "
           f"{'yes' if m['native_bf16'] else 'no'}; torch {m['torch']}, {m['threads']} threads. Each section names the "
           f"machine and commit it was measured on. Timings are medians over the timed repetitions after one warm-up.", ""]
    if "preprocess" in report:
        p = report["preprocess"]
        out += ["## Preprocessing: cold vs cached", "", _stamp(report, "preprocess"), "",
                f"{p['volumes']} IXI-HH volumes, MONAI pipeline {tuple(p['spec']['shape'])} at "
                f"{p['spec']['spacing_mm'][0]:g} mm, one worker.", "", "| path | volumes/s | ratio |", "|---|---|---|",
                f"| cold (decode, reorient, resample, normalise, write) | {p['cold_vol_per_s']:.2f} | 1 |",
                f"| cached (memory-mapped `.npy`) | {p['cached_vol_per_s']:.1f} | {p['ratio']:.0f}x |", ""]
    if "loading" in report:
        lo = report["loading"]
        out += ["## One training epoch: naive loading vs cached", "", _stamp(report, "loading"), "",
                f"OASIS ResBlock regressor (`cpu` profile: {tuple(lo['spec']['shape'])} at {lo['spec']['spacing_mm'][0]:g} mm, "
                f"batch {lo['batch_size']}), {lo['subjects']} IXI-HH subjects. Naive = the OASIS tutorial's loading: every NIfTI "
                "decoded and resampled with nilearn at every epoch.", "",
                "| loading | epoch (s) | speed-up |", "|---|---|---|",
                f"| naive (nilearn every epoch) | {lo['naive_epoch_s']:.2f} | 1 |",
                f"| cached (this repository) | {lo['cached_epoch_s']:.2f} | **{lo['ratio']:.1f}x** |", ""]
    if "models" in report:
        out += ["## Deep methods: fp32 vs the fast-path candidates", "", _stamp(report, "models"), "",
                "Synthetic inputs of each method's `cpu` profile shape and batch; one fresh process per row (peak "
                "resident memory of that process, including Python and torch).", "",
                "| model | input x batch | mode | train samples/s | vs fp32 | inference samples/s | vs fp32 | peak RSS (MB) |",
                "|---|---|---|---|---|---|---|---|"]
        base = {r["model"]: r for r in report["models"] if r["mode"] == "fp32" and "error" not in r}
        for r in report["models"]:
            if "error" in r:
                out.append(f"| {r['model']} | | {r['mode']} | failed: {r['error']} | | | | |")
                continue
            b = base.get(r["model"], r)
            out.append(f"| {r['model']} | {'x'.join(map(str, r['input']))} x {r['batch']} | {r['mode']} | "
                       f"{r['train_samples_per_s']:.2f} | {r['train_samples_per_s'] / b['train_samples_per_s']:.2f}x | "
                       f"{r['infer_samples_per_s']:.2f} | {r['infer_samples_per_s'] / b['infer_samples_per_s']:.2f}x | "
                       f"{r['peak_rss_mb']:.0f} |")
        out += ["", report.get("fast_path_verdict", ""), ""]
    if "numerics" in report:
        machines = report["numerics"]["machines"]
        configs = list(NUMERICS_CONFIGS) + [n for row in machines.values() for n in row["configs"]
                                            if n not in NUMERICS_CONFIGS]
        configs = list(dict.fromkeys(configs))
        out += ["## fp32 numerics fingerprint per CPU kind", "", _stamp(report, "numerics"), "",
                "SHA-256 (first 16 hex digits) of the 3D ResNet-18's weights after 5 seeded fp32 AdamW steps at 48³ "
                "(batch 4, 2 threads) in a fresh process, per kernel setting, and the median time of steps 2-5. "
                "Rows of other machines are kept from "
                "earlier runs: the same fingerprint on two CPU kinds means bit-identical fp32 training there.", "",
                "Settings are named as at their row's commit: until 2026-12-04 the default pin put MKL on its AVX2 "
                "branch (`MKL_CBWR=AVX2`) and AdamW took the unfused step (square root from MKL's VML); since then it "
                "is `MKL_CBWR=COMPATIBLE` and the fused step (`common.training.adam`); since 2026-12-05 the default "
                "runs without oneDNN (the setting called `avx2-pinned, oneDNN off` before; `oneDNN on` is the "
                "earlier default).", "",
                "The last column is the shared preprocessing (deepbet, N4, ANTs affine registration to MNI) of the "
                "first IXI-HH scan, default setting (`preprocessing_fingerprint`).", "",
                "| CPU (flags) | commit | " + " | ".join(configs) + " | preprocessing of one scan |",
                "|---|---|" + "---|" * (len(configs) + 1)]
        for key, row in machines.items():
            cells = []
            for name in configs:
                c = row["configs"].get(name, {})
                cells.append(f"`{c['sha256']}` ({c['cpu_capability']}, {c['step_s']:.2f} s/step)" if "sha256" in c
                             else c.get("error", "–"))
            pre = row.get("preprocessing", {})
            cells.append(f"`{pre['sha256']}` ({pre['participant_id']}, {pre['seconds']:.0f} s)" if "sha256" in pre
                         else pre.get("error", "–"))
            out.append(f"| {key} | {row['commit']} | " + " | ".join(cells) + " |")
        rows = [(key, name, row["commit"], c["ops"]) for key, row in machines.items()
                for name, c in row["configs"].items() if c.get("ops")]
        if rows:
            default = next(iter(NUMERICS_CONFIGS))
            newest = max(machines, key=lambda k: machines[k].get("date", ""))
            ref = next((r for r in rows if r[0] == newest and r[1] == default), rows[0])
            names = list(ref[3])
            out += ["", "Per kernel: the first 8 hex digits of the SHA-256 of each op's output on seeded data "
                    "(`op_fingerprints`), per CPU kind and setting. Where two training fingerprints differ, the ops "
                    f"whose digests differ are the cause (* marks a digest that differs from the row of {newest}, "
                    f"{default}, commit {ref[2]}).", "",
                    "| CPU | setting | commit | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(names)]
            for key, name, commit, ops in rows:
                out.append(f"| {key} | {name} | {commit} | " + " | ".join(
                    f"`{ops.get(n, '–')}`" + ("*" if ops.get(n) != ref[3].get(n) else "") for n in names) + " |")
        out.append("")
    if "precision" in report:
        pr = report["precision"]
        out += ["## bf16 autocast vs fp32 on real data", "", _stamp(report, "precision"), ""]
        if "skipped" in pr:
            out += [f"Not measured: {pr['skipped']}.", ""]
        else:
            out += [f"`cpu` profile of each method on {pr['dataset']}, trained to the end (`--amp_dtype=fp32|bf16 "
                    "--publish=False`); bf16 twice with the same command. Validation numbers only.", "",
                    "| method | precision | run | best validation | at epoch | skipped steps | s/epoch "
                    "| same weights as bf16 run 0 |",
                    "|---|---|---|---|---|---|---|---|"]
            for r in pr["rows"]:
                if "error" in r:
                    out.append(f"| {r['method']} | {r['precision']} | {r['repeat']} | refused or failed: {r['error']} | | | | |")
                    continue
                same = {True: "yes", False: "no"}.get(r.get("identical_to_first_bf16"), "")
                out.append(f"| {r['method']} | {r['precision']} | {r['repeat']} | {r['selection']} {r['best_val']:.3f} | "
                           f"{r['best_epoch']} | {r['nonfinite_steps']} | {r['s_per_epoch']:.1f} | {same} |")
            out.append("")
    if "standardize" in report:
        st = report["standardize"]
        rows = st["scans"]
        dice = [r["dice_vs_dlmuse"] for r in rows]
        out += ["## Shared preprocessing: brain extraction and cost per scan", "", _stamp(report, "standardize"), "",
                f"{len(rows)} IXI-HH scans (2 mm), one process. deepbet's mask against the dataset's DLMUSE mask: Dice "
                f"{min(dice):.3f}-{max(dice):.3f}. Median seconds: brain extraction "
                f"{statistics.median(r['extract_s'] for r in rows):.1f}, N4 {statistics.median(r['n4_s'] for r in rows):.1f}, "
                f"registration {st['registration_s_median']:.1f}, whole pipeline "
                f"{statistics.median(r['total_s'] for r in rows):.1f}; a cached scan reads in "
                f"{st['cached_read_s'] * 1000:.0f} ms.",
                "", "| scan | Dice vs DLMUSE | extraction (s) | N4 (s) | whole pipeline (s) |", "|---|---|---|---|---|"]
        out += [f"| {r['participant_id']} | {r['dice_vs_dlmuse']:.3f} | {r['extract_s']:.1f} | {r['n4_s']:.1f} | "
                f"{r['total_s']:.1f} |" for r in rows]
        out.append("")
    if "invariance" in report:
        inv = report["invariance"]
        names = list(inv["runs"])
        out += ["## Prediction invariance to how a scan was acquired", "", _stamp(report, "invariance"), "",
                f"{len(inv['scans'])} IXI-HH test-split scans, each predicted as it is and as each variant "
                "(`common/data/variants.py`); |change| of the predicted age in years, mean / max over the scans. "
                "Runs: " + ", ".join(f"{k} `{v}`" for k, v in inv["runs"].items()) + ". Model-free: the lowest "
                "correlation inside the brain and brain-mask Dice of the preprocessed arrays against the native scan's.",
                "", "| variant | min correlation | min Dice | " + " | ".join(names) + " |",
                "|---|---|---|" + "---|" * len(names)]
        for variant, e in inv["variants"].items():
            cells = [f"{e[n]['mean_abs_change']:.2f} / {e[n]['max_abs_change']:.2f}" for n in names]
            out.append(f"| {variant} | {e.get('min_correlation', float('nan')):.3f} | {e.get('min_dice', float('nan')):.3f} | "
                       + " | ".join(cells) + " |")
        out.append("")
    if "mainjob" in report:
        rows = report["mainjob"]
        per_method = mainjob_minutes(rows)
        out += ["## Main job: wall time per method", "", _stamp(report, "mainjob"), "",
                "From `wall_time_s` of the result files in `results/` (the runs behind the leaderboard; cold caches "
                "where a run filled them).", "", "| method | results | datasets | wall time (min) |", "|---|---|---|---|"]
        for method, seconds in per_method.items():
            mine = [r for r in rows if r["method"] == method]
            out.append(f"| {method} | {len(mine)} | {', '.join(sorted({r['dataset'] for r in mine}))} | {seconds:.1f} |")
        out += [f"| **total** | {len(rows)} | | **{sum(per_method.values()):.1f}** |", ""]
    return "\n".join(out)


def _verdict(rows: list[dict]) -> str:
    """Which fast-path settings pay off here (>= 1.5x training throughput), stated from the numbers."""
    base = {r["model"]: r for r in rows if r["mode"] == "fp32" and "error" not in r}
    wins = [f"{r['model']} {r['mode']} {r['train_samples_per_s'] / base[r['model']]['train_samples_per_s']:.2f}x"
            for r in rows if r["mode"] != "fp32" and r["model"] in base and "error" not in r
            and r["train_samples_per_s"] >= 1.5 * base[r["model"]]["train_samples_per_s"]]
    if wins:
        return ("Fast-path settings at least 1.5x faster than fp32 in training: " + "; ".join(wins) + ". Speed only: "
                "whether bf16 also trains correctly on this machine is the `precision` section's question.")
    ratios = [(r["train_samples_per_s"] / base[r["model"]]["train_samples_per_s"], r["model"], r["mode"])
              for r in rows if r["mode"] != "fp32" and r["model"] in base and "error" not in r]
    best = f" (best: {max(ratios)[1]} {max(ratios)[2]}, {max(ratios)[0]:.2f}x)" if ratios else ""
    return ("No fast-path setting reaches 1.5x the fp32 training throughput on this machine" + best + ", so the "
            "methods train in fp32 with the default memory format here (every `cpu` profile is fp32; bf16 only "
            "with `--amp_dtype=bf16`).")


def _stamp(report: dict, section: str) -> str:
    """Where and when a section was measured (sections kept from an earlier run carry their own)."""
    st = report.get("measured", {}).get(section)
    if not st:
        return ""
    m = st["machine"]
    return (f"_Measured {st['date']} at commit {st['commit']} on {m['cpu']} (SIMD {', '.join(m['simd']) or 'none'}; "
            f"native bf16: {'yes' if m['native_bf16'] else 'no'}), {m['threads']} threads._")


def main(sections: str = "preprocess,loading,models,numerics,mainjob", repeats: int = 3, volumes: int = 16, models: str = "",
         bf16_repeats: int = 0, precision_methods: str = "resnet3d,oasis_resblock", precision_dataset: str = "ixi_hh",
         runs_dir: str = "runs", merge: bool = True, data_root: str | None = None, results_dir: str = "results",
         standardize_scans: int = 10, invariance_runs: str = "", invariance_scans: int = 10,
         out: str = "benchmarks/BENCHMARKS.md") -> str:
    """Run the benchmark sections and write ``out`` (Markdown) and the raw numbers beside it (.json).

    Args:
        sections: comma-separated subset of preprocess, loading, models, precision (bf16 vs fp32
            training on real data, ~25 min; not in the default), numerics (fp32 fingerprints of this
            CPU kind, kept beside other machines'), mainjob.
        repeats: timed repetitions per measurement (median reported).
        volumes: IXI-HH subjects used by the preprocess and loading sections.
        models: comma-separated subset of resnet3d, oasis_resblock, tsan_stage1, midslice_resnet18,
            alz_altzcnn (default: all).
        bf16_repeats: timed repetitions of bf16 on CPUs without native bf16 (default 0: skipped; it
            is emulated there, 20-70x slower than fp32 for the 3D models measured here, so a run takes
            many minutes per model).
        precision_methods: methods trained by the ``precision`` section (resnet3d, oasis_resblock).
        precision_dataset: dataset of the ``precision`` section.
        runs_dir: where the ``precision`` section's run folders go.
        merge: keep the sections of an existing ``out`` that this call does not run (each section
            names the machine, date and commit it was measured on).
        standardize_scans: IXI-HH scans of the ``standardize`` section.
        invariance_runs: ``name=run_dir`` pairs, comma-separated, of trained runs for the ``invariance``
            section: a fold folder of resnet3d, tsan_stage1, oasis_resblock or VGG16 + SVR (``mni_axial``
            slicing, the ``cpu`` profile's).
        invariance_scans: IXI-HH test-split scans of the ``invariance`` section.
    """
    from common.runlog import git_commit

    chosen = [s.strip() for s in (sections.split(",") if isinstance(sections, str) else sections) if s.strip()]
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    configure_cpu_threads()
    out_path = Path(out)
    report: dict = {}
    if merge and out_path.with_suffix(".json").exists():
        report = json.loads(out_path.with_suffix(".json").read_text())
        old = {"date": report.get("date"), "commit": report.get("commit"), "machine": report.get("machine")}
        report.setdefault("measured", {})
        for section in SECTIONS:  # sections written before stamps existed get the old report's stamp
            if section in report and section not in report["measured"] and old["machine"]:
                report["measured"][section] = old
    stamp = {"date": time.strftime("%Y-%m-%d"), "commit": git_commit()[:12], "machine": machine()}
    report.update({"machine": stamp["machine"], "date": stamp["date"], "commit": stamp["commit"], "repeats": repeats})
    report.setdefault("measured", {}).update({section: stamp for section in chosen})
    if "preprocess" in chosen:
        report["preprocess"] = bench_preprocess(volumes, repeats, data_root)
        print(f"[bench] preprocess: {report['preprocess']['ratio']:.0f}x cached vs cold", flush=True)
    if "loading" in chosen:
        report["loading"] = bench_loading(volumes, repeats, data_root)
        print(f"[bench] loading: {report['loading']['ratio']:.1f}x cached vs naive epoch", flush=True)
    if "models" in chosen:
        names = tuple(m.strip() for m in (models.split(",") if isinstance(models, str) else models) if m.strip()) \
            or tuple(_model_specs())
        report["models"] = bench_models(repeats, names, bf16_repeats)
        report["fast_path_verdict"] = _verdict(report["models"])
    if "precision" in chosen:
        names = tuple(m.strip() for m in (precision_methods.split(",") if isinstance(precision_methods, str)
                                           else precision_methods) if m.strip())
        report["precision"] = bench_precision(names, precision_dataset, data_root, runs_dir, results_dir)
    if "numerics" in chosen:
        report["numerics"] = bench_numerics(report.get("numerics"), data_root)
    if "mainjob" in chosen:
        report["mainjob"] = bench_mainjob(results_dir)
    if "standardize" in chosen:
        report["standardize"] = bench_standardize(standardize_scans, data_root)
    if "invariance" in chosen:
        pairs = [p.split("=", 1) for p in invariance_runs.split(",") if p.strip()]
        if not pairs:
            raise ValueError("the invariance section needs --invariance_runs=name=run_dir[,name=run_dir]")
        report["invariance"] = bench_invariance(dict(pairs), invariance_scans, data_root)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_text(out_path, _md(report))
    write_json(out_path.with_suffix(".json"), report)
    print(f"[bench] wrote {out_path}")
    return str(out_path)


CLI = main

if __name__ == "__main__":
    if sys.argv[1:] == ["--fingerprint_worker"]:  # the numerics section's fresh process
        _fingerprint_worker()
        sys.exit(0)
    run_cli(main, name="scripts/bench.py")
