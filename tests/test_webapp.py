"""The web app (scripts/app.py, common/webapp.py): its logic, the page under Streamlit's AppTest, and a
real browser (Debian's chromium through selenium) uploading a real scan; each prediction shown must
equal the command line's."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from common import predict, webapp
from tests.conftest import write_volume
from tests.test_predict import _resnet_fold

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "scripts" / "app.py"


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    for k in range(2):
        fold = _resnet_fold(root / "resnet3d" / "ixi_hh" / "main-cpu" / f"fold{k}", k, 40.0 + 5 * k).parent
        (fold / "config.json").write_text('{"method": "resnet3d", "profile": "cpu", "precision": "fp32"}')
    (root / "resnet3d" / "ixi_hh" / "broken" / "fold0").mkdir(parents=True)
    (root / "resnet3d" / "ixi_hh" / "broken" / "fold0" / "best.pt").write_bytes(b"not a checkpoint")
    return root


def _cli(model_path, scan, tmp_path) -> float:
    out = predict.main(model_path=str(model_path), inputs=str(scan), output_dir=str(tmp_path / "cli"),
                       cache_dir=str(tmp_path / "cache-cli"))
    return float(pd.read_csv(out)["predicted_age"].iloc[0])


def test_find_models_offers_tested_runs_only(runs):
    (choice,) = [c for c in webapp.find_models(runs) if c.method == "resnet3d"]
    assert choice.n_models == 2 and choice.train_age_range == (20.0, 80.0) and choice.validation_mae == 7.5
    assert "ensemble of 2 folds" in choice.label and choice.model_path.endswith("main-cpu")


def test_uploads_are_stored_under_our_names_and_bad_ones_explained(runs, tmp_path):
    good = write_volume(tmp_path / "x.nii.gz").read_bytes()
    uploads = [webapp.Upload("../../etc/evil name.nii.gz", good, age=30.0, sex="F"),
               webapp.Upload("picture.png", b"\x89PNG not a scan"),
               webapp.Upload("huge.nii", b"0" * 10, age=50.0)]
    result = webapp.predict_uploads(str(runs / "resnet3d" / "ixi_hh" / "main-cpu"), uploads, tmp_path,
                                    cache_dir=str(tmp_path / "cache"))
    stored = sorted(p.name for p in result["out_dir"].parent.iterdir() if p.is_file())
    assert stored == ["inputs.csv", "scan0.nii.gz", "scan1.upload", "scan2.nii"], "never a name the upload chose"
    table = result["predictions"]
    assert table["participant_id"].tolist() == ["evil_name"] and float(table["age"].iloc[0]) == 30.0
    reasons = dict(zip(result["excluded"]["item"], result["excluded"]["reason"]))
    assert set(reasons) == {"picture.png", "huge.nii"}, "reported under the upload's own name"
    assert "not a readable NIfTI" in reasons["picture.png"]
    assert webapp.participant_label("sub-01_T1w.NII.GZ") == "sub-01_T1w"
    webapp.MAX_UPLOAD_MB, old = 0, webapp.MAX_UPLOAD_MB
    try:
        refused = webapp.predict_uploads(str(runs / "resnet3d" / "ixi_hh" / "main-cpu"), uploads[:1], tmp_path)
    finally:
        webapp.MAX_UPLOAD_MB = old
    assert refused["refused"] == [("../../etc/evil name.nii.gz", "larger than 0 MB")] and refused["predictions"].empty


def test_the_page_shows_the_command_lines_prediction(runs, tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    scan = write_volume(tmp_path / "scan.nii.gz", seed=3)
    monkeypatch.setenv("BRAINAGE_RUNS_DIR", str(runs))
    monkeypatch.setenv("BRAINAGE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(REPO)
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    assert not at.exception
    at.text_input[0].input(str(scan)).run()
    at.button[0].click().run()
    assert not at.exception and not at.error
    expected = _cli(runs / "resnet3d" / "ixi_hh" / "main-cpu", scan, tmp_path)
    assert at.metric[0].value == f"{expected:.2f} y"
    assert "needs" not in " ".join(i.value for i in at.info), "age_on_pred needs no age"
    at.text_input[0].input(str(tmp_path / "missing.nii.gz")).run()
    at.button[0].click().run()
    assert any("missing.nii.gz" in e.value and "empty" in e.value for e in at.error), "a bad input is explained"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")),
                    reason="no Debian chromium + chromium-driver here (scripts/setup_env.sh installs them where apt-get can)")
def test_a_browser_uploads_a_real_scan_and_sees_the_cli_prediction(shared_data, runs, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    scan = shared_data / "ixi_hh" / "T1" / "IXI012-HH-1211_T1.nii.gz"
    port = _free_port()
    env = {**os.environ, "BRAINAGE_RUNS_DIR": str(runs), "BRAINAGE_CACHE_DIR": str(tmp_path / "cache")}
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(APP), "--server.address=127.0.0.1",
                               f"--server.port={port}", "--server.headless=true", "--browser.gatherUsageStats=false"],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1800"):
        options.add_argument(flag)
    driver = None
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
        driver.get(f"http://127.0.0.1:{port}")
        wait = WebDriverWait(driver, 120)
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "input[type=file][multiple]")))
        driver.find_element(By.CSS_SELECTOR, "input[type=file][multiple]").send_keys(str(scan))
        wait.until(ec.presence_of_element_located((By.XPATH, "//*[contains(text(), 'IXI012-HH-1211_T1.nii.gz')]")))
        button = wait.until(ec.element_to_be_clickable((By.XPATH, "//button[.//p[text()='Predict']]")))
        button.click()
        value = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "[data-testid='stMetricValue']")))
        shown = value.text
        driver.save_screenshot(os.environ.get("APP_SCREENSHOT", str(tmp_path / "app.png")))
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        server.wait(timeout=30)
    expected = _cli(runs / "resnet3d" / "ixi_hh" / "main-cpu", scan, tmp_path)
    assert shown == f"{expected:.2f} y"
