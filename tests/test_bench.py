"""scripts/bench.py: what it measures and writes (never how fast anything is)."""

from __future__ import annotations

import json

import pytest

from scripts import bench, mainjob
from tests.conftest import SHARED_DATA


def test_mainjob_minutes_counts_one_process_once():
    rows = [
        {"method": "vgg16_svr", "dataset": "ixi_hh", "result": "vgg16_svr_early__ixi_hh", "wall_time_s": 120.0},
        {"method": "vgg16_svr", "dataset": "ixi_hh", "result": "vgg16_svr_late__ixi_hh", "wall_time_s": 121.0},
        {"method": "alz_cnn", "dataset": "alzheimer4", "result": "alz_a__alzheimer4", "wall_time_s": 60.0},
        {"method": "alz_cnn", "dataset": "alzheimer4", "result": "alz_b__alzheimer4", "wall_time_s": 30.0},
    ]
    minutes = bench.mainjob_minutes(rows)
    assert minutes["vgg16_svr"] == pytest.approx(121.0 / 60), "early and late fusion come from one process"
    assert minutes["alz_cnn"] == pytest.approx(1.5), "separate processes add up"


def test_mainjob_datasets_are_every_dataset_of_a_step_once():
    assert mainjob.mainjob_datasets() == ["ixi_hh", "ds000228", "alzheimer4"]
    assert {step.split(" on ")[1] for step in mainjob.mainjob_steps()} == set(mainjob.mainjob_datasets())


def test_mainjob_eta_scales_single_split_results_to_the_folds(tmp_path):
    (tmp_path / "resnet3d__ixi_hh.json").write_text(json.dumps({"wall_time_s": 100.0}))
    (tmp_path / "resnet3d__ds000228.json").write_text(json.dumps({"wall_time_s": 400.0, "folds": [{}] * 5}))
    assert mainjob.last_wall_time("resnet3d", "ixi_hh", tmp_path) == 100.0 * mainjob.SINGLE_SPLIT_TO_CV
    assert mainjob.last_wall_time("resnet3d", "ds000228", tmp_path) == 400.0, "a pooled result already sums its folds"
    assert mainjob.last_wall_time("tsan", "ixi_hh", tmp_path) is None
    (tmp_path / "alz_altzcnn__alzheimer4.json").write_text(json.dumps({"wall_time_s": 50.0}))
    assert mainjob.last_wall_time("alz_cnn", "alzheimer4", tmp_path) == 50.0, "published folders: one run, not 5 folds"


def test_mainjob_report_of_a_finished_and_of_a_stopped_job(tmp_path):
    steps = tmp_path / "steps.tsv"
    steps.write_text("profile\tcpu\t\t\ncommit\tabc\t\t\nmachine\tSome CPU, 2 cores\t\t\n"
                     "shared preprocessing\t60\tok\t0\nresnet3d on ixi_hh\t1800\tok\t2\n")
    others = "".join(f"{step}\t60\tok\t0\n" for step in mainjob.mainjob_steps() if step != "resnet3d on ixi_hh")
    steps.write_text(steps.read_text() + others)
    partial = mainjob.report(steps, tmp_path / "B.md")
    assert "Not finished: 44.0 min for the steps done so far" in partial and "commit abc, Some CPU, 2 cores" in partial
    assert "| resnet3d on ixi_hh | 30.0 | ok | 2 |" in partial and "2 finished folds were reused" in partial
    steps.write_text(steps.read_text() + "total\t2900\t\t\n")
    assert "**Total: 48.3 min** (budget: 150 min)" in mainjob.report(steps, tmp_path / "B.md")
    steps.write_text("".join(line + "\n" for line in steps.read_text().splitlines() if not line.startswith("tsan on")))
    part = mainjob.report(steps, tmp_path / "B.md")
    assert "**Part of the job: 48.3 min for the steps run so far at this commit; 2 of its 14 method steps not yet run**" in part
    assert "not yet run: tsan on ixi_hh, tsan on ds000228)" in part and "Total" not in part
    steps.write_text("bad line\n")
    with pytest.raises(ValueError, match="4 tab-separated fields"):
        mainjob.report(steps, tmp_path / "B.md")


def test_mainjob_report_sums_the_invocations_of_one_commit(tmp_path):
    """A job that spans sessions: a stopped invocation, then one that reuses its folds and ends."""
    block = "invocation\t{t}\t\t\nprofile\tcpu\t\t\ncommit\t{c}\t\t\nmachine\t{m}, 2 cores\t\t\n"
    steps = tmp_path / "steps.tsv"
    steps.write_text(block.format(t="2026-12-04T18:16:00Z", c="abc", m="CPU A") + "shared preprocessing\t1642\tok\t0\n"
                     "resnet3d on ixi_hh\t3240\tok\t0\n"
                     + block.format(t="2026-12-05T07:24:00Z", c="abc", m="CPU B") + "shared preprocessing\t20\tok\t0\n"
                     "tsan on ixi_hh\t1200\tok\t5\ntotal\t1230\t\t\n")
    text = mainjob.report(steps, tmp_path / "B.md")
    assert "Part of the job: 101.9 min for the steps run so far at this commit" in text
    assert "invocation 1 was still running" in text
    assert "| 1 | 2026-12-04T18:16:00Z | CPU A, 2 cores | 81.4 | stopped |" in text
    assert "| 2 | 2026-12-05T07:24:00Z | CPU B, 2 cores | 20.5 | yes |" in text
    assert "| tsan on ixi_hh | 20.0 | ok | 5 | 2 |" in text and "5 finished folds were reused" in text
    assert "CPU A, 2 cores; CPU B, 2 cores" in text
    steps.write_text(steps.read_text().replace("2026-12-05T07:24:00Z\t\t\nprofile\tcpu\t\t\ncommit\tabc",
                                               "2026-12-05T07:24:00Z\t\t\nprofile\tcpu\t\t\ncommit\tdef"))
    with pytest.raises(ValueError, match="different commits"):
        mainjob.report(steps, tmp_path / "B.md")


def test_verdict_reports_only_real_speed_ups():
    rows = [{"model": "m", "mode": "fp32", "train_samples_per_s": 10.0},
            {"model": "m", "mode": "channels_last", "train_samples_per_s": 14.0}]
    assert bench._verdict(rows).startswith("No fast-path setting")
    rows[1]["train_samples_per_s"] = 16.0
    assert "m channels_last 1.60x" in bench._verdict(rows)


def test_models_section_writes_rows(tmp_path):
    out = tmp_path / "B.md"
    bench.main(sections="models", models="oasis_resblock", repeats=1, bf16_repeats=0, out=str(out))
    report = json.loads(out.with_suffix(".json").read_text())
    modes = [r["mode"] for r in report["models"]]
    # bf16_repeats=0 skips the emulated bf16 of CPUs without native bf16; with native bf16 it is measured
    assert modes == ["fp32", "channels_last"] + (["bf16"] if report["machine"]["native_bf16"] else [])
    assert all(r["train_samples_per_s"] > 0 and r["peak_rss_mb"] > 0 for r in report["models"])
    assert "| oasis_resblock | 1x32x32x32 x 8 | fp32 |" in out.read_text()


def test_unknown_section_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="unknown sections"):
        bench.main(sections="speed", out=str(tmp_path / "B.md"))


def test_precision_section_says_when_the_cpu_has_no_native_bf16(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "cpu_has_fast_bf16", lambda: False)
    out = tmp_path / "B.md"
    bench.main(sections="precision", out=str(out), merge=False)
    assert "Not measured: this CPU has no native bf16" in out.read_text()


def test_precision_rows_and_merge_keep_other_sections_with_their_stamp(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("epoch,mae/val,train/nonfinite_steps,time/elapsed_s\n0,9.0,0,10\n1,7.5,2,20\n2,8.0,1,30\n")
    summary = bench._run_summary(run)
    assert (summary["best_val"], summary["best_epoch"], summary["nonfinite_steps"], summary["s_per_epoch"]) == (7.5, 1, 3, 10)
    out = tmp_path / "B.md"
    bench.main(sections="mainjob", out=str(out))
    bench.main(sections="precision", out=str(out), precision_methods="")  # no methods: an empty table
    report = json.loads(out.with_suffix(".json").read_text())
    assert "mainjob" in report and set(report["measured"]) >= {"mainjob", "precision"}
    assert out.read_text().count("_Measured ") == 2


def test_numerics_section_keeps_other_machines_and_reports_a_failed_worker(tmp_path, monkeypatch):
    """The numerics section's bookkeeping: one row per CPU kind (other machines' rows are kept), a
    worker that fails is an error entry, the preprocessing digest names its scan. The worker's bits are
    tests/test_numerics.py's (one real worker run there) and the preprocessing's reproducibility
    tests/test_standardize.py's, so both are stand-ins here."""
    import subprocess

    import numpy as np

    from common.data import standardize

    worker = {"sha256": "0123456789abcdef", "step_s": 1.0, "cpu_capability": "AVX2", "ops": {"matmul": "01234567"}}
    calls, real_run = [], subprocess.run

    def fake_run(cmd, *args, **kwargs):
        if "--fingerprint_worker" not in cmd:  # git and the like
            return real_run(cmd, *args, **kwargs)
        calls.append(kwargs["env"])
        ok = len(calls) == 1
        return subprocess.CompletedProcess(cmd, 0 if ok else 1, stdout=json.dumps(worker) if ok else "",
                                           stderr="" if ok else "Traceback\nRuntimeError: worker died")

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setattr(bench, "NUMERICS_CONFIGS", {"avx2-pinned (default)": {}, "oneDNN": {"BRAINMRI_ONEDNN": "1"}})
    monkeypatch.setattr(standardize, "standardize_brain",
                        lambda data, affine: standardize.StandardBrain(np.zeros((2, 2, 2), np.float32),
                                                                       np.zeros((2, 2, 2), bool), {}))
    numerics = bench.bench_numerics({"machines": {"Other CPU (avx2)": {"commit": "x", "date": "d", "configs": {}}}})
    assert calls[0]["OMP_NUM_THREADS"] == "2" and calls[1]["BRAINMRI_ONEDNN"] == "1"
    assert "Other CPU (avx2)" in numerics["machines"], "rows of other machines are kept"
    (mine,) = [k for k in numerics["machines"] if k != "Other CPU (avx2)"]
    configs = numerics["machines"][mine]["configs"]
    assert configs["avx2-pinned (default)"] == worker and configs["oneDNN"] == {"error": "RuntimeError: worker died"}
    pre = numerics["machines"][mine]["preprocessing"]
    if (SHARED_DATA / "ixi_hh").is_dir():
        assert len(pre["sha256"]) == 16 and pre["participant_id"].startswith("IXI"), pre
    machine = {"cpu": "x", "cores": 2, "simd": [], "native_bf16": False, "torch": "t", "threads": 2}
    md = bench._md({"machine": machine, "date": "d", "commit": "c", "numerics": numerics})
    assert pre.get("sha256", pre.get("error")) in md and "preprocessing of one scan" in md
