"""The brain-age web app (Streamlit): pick a trained model, upload T1-weighted scans, see each
predicted age with its QC. Start it with ``bash scripts/app.sh``; the logic is common/webapp.py and the
prediction common/predict.py, the same code as the command line.

Environment: ``BRAINAGE_RUNS_DIR`` (default ``runs``), ``BRAINAGE_CACHE_DIR`` (default ``.cache``).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import streamlit as st  # noqa: E402

from common import webapp  # noqa: E402

RUNS_DIR = os.environ.get("BRAINAGE_RUNS_DIR", "runs")
CACHE_DIR = os.environ.get("BRAINAGE_CACHE_DIR", ".cache")

st.set_page_config(page_title="Brain age", layout="wide")
st.title("Brain age from a T1-weighted MRI")
st.caption("Every scan goes through the same preprocessing and models as `common/predict.py` on the command line.")

if "workdir" not in st.session_state:  # one private folder per browser session
    st.session_state.workdir = tempfile.mkdtemp(prefix="brainage-app-")


@st.cache_data(show_spinner="Looking for trained models ...")
def _models(runs_dir: str) -> list[webapp.ModelChoice]:
    return webapp.find_models(runs_dir)


choices = _models(RUNS_DIR)
with st.sidebar:
    st.header("Model")
    uploaded_ckpt = st.file_uploader("...or upload a checkpoint (best.pt, loaded tensors-only)", type=["pt"])
    if uploaded_ckpt is not None:
        path = Path(st.session_state.workdir) / "uploaded_checkpoint" / "best.pt"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(uploaded_ckpt.getvalue())
        choice = webapp.ModelChoice("uploaded checkpoint", str(path), "", "", 1, None, None)
    elif choices:
        choice = choices[st.selectbox("Trained model", range(len(choices)), format_func=lambda i: choices[i].label)]
    else:
        choice = None
        st.warning(f"No trained model under {RUNS_DIR}/ (train one with `bash scripts/reproduce.sh`), or upload one.")
    if choice is not None and choice.train_age_range:
        low, high = choice.train_age_range
        mae = f", validation MAE {choice.validation_mae:.2f} y" if choice.validation_mae is not None else ""
        st.write(f"Trained on **{choice.dataset}**, ages {low:.0f}-{high:.0f} y, {choice.n_models} model(s){mae}.")
    saliency = st.checkbox("Saliency maps (occlusion sensitivity; about a minute per scan)")

files = st.file_uploader("T1-weighted scans (.nii or .nii.gz)", accept_multiple_files=True)
local = st.text_input("...or paths of scans on this machine (comma-separated)")
uploads = [webapp.Upload(f.name, f.getvalue()) for f in files or []]
for p in [p.strip() for p in local.split(",") if p.strip()]:
    uploads.append(webapp.Upload(Path(p).name, Path(p).read_bytes()) if Path(p).is_file() else webapp.Upload(p, b""))
for k, up in enumerate(uploads):
    cols = st.columns([3, 1, 1])
    cols[0].write(f"**{up.name}**")
    age = cols[1].number_input("age (years, 0 = unknown)", min_value=0.0, max_value=120.0, value=0.0, key=f"age{k}")
    up.age = age or None
    up.sex = {"unknown": "", "female": "F", "male": "M"}[cols[2].selectbox("sex", ["unknown", "female", "male"], key=f"sex{k}")]

if st.button("Predict", disabled=not uploads or choice is None, type="primary"):
    with st.spinner("Brain extraction, bias-field correction, registration and prediction (about 15-60 s per new scan) ..."):
        try:
            st.session_state.result = webapp.predict_uploads(choice.model_path, uploads, st.session_state.workdir,
                                                             method=choice.method or None, saliency=saliency,
                                                             cache_dir=CACHE_DIR)
            st.session_state.result_choice = choice
        except (ValueError, FileNotFoundError) as err:
            st.session_state.result = None
            st.error(str(err))

result = st.session_state.get("result")
if result:
    for name, reason in result["refused"]:
        st.error(f"{name}: {reason}")
    for row in result["excluded"].itertuples(index=False) if len(result["excluded"]) else []:
        st.error(f"{row.item}: {row.reason}")
    table = result["predictions"]
    for row in table.itertuples(index=False) if len(table) else []:
        st.subheader(row.participant_id)
        cols = st.columns(3)
        spread = f"± {float(row.predicted_age_sd):.2f} y over {row.n_models} models" if row.predicted_age_sd != "" else None
        cols[0].metric("Predicted age", f"{float(row.predicted_age):.2f} y", help=spread)
        if spread:
            cols[0].caption(spread)
        if row.age != "":
            cols[1].metric("Brain age gap", f"{float(row.brain_age_gap):+.2f} y")
        formula = row.correction_formula
        if row.predicted_age_corrected != "":
            cols[2].metric(f"Corrected ({formula})", f"{float(row.predicted_age_corrected):.2f} y")
        else:
            cols[2].info(f"The {formula} bias correction needs the scan's age: enter it above.")
        if row.warnings:
            st.warning(row.warnings)
        name = webapp.predict.safe_name(row.participant_id, row.session_id)
        qc = result["out_dir"] / "qc" / f"{name}.png"
        if qc.exists():
            st.image(str(qc), caption="what the model saw (brain outline in orange)")
        overlay = result["out_dir"] / "saliency" / f"{name}.png"
        if overlay.exists():
            st.image(str(overlay), caption="occlusion sensitivity")
    if len(table):
        training = webapp.training_predictions(st.session_state.result_choice)
        if training is not None:
            fig, ax = plt.subplots(figsize=(5, 4))
            ax.scatter(training["age"], training["predicted_age"], s=8, c="0.6", label="training data (out-of-fold)")
            for row in table.itertuples(index=False):
                if row.age != "":
                    ax.scatter([float(row.age)], [float(row.predicted_age)], s=40, label=row.participant_id)
                else:
                    ax.axhline(float(row.predicted_age), ls="--", lw=0.8, label=f"{row.participant_id} (no age)")
            both = training[["age", "predicted_age"]].to_numpy(float)
            lims = [both.min(), both.max()]
            ax.plot(lims, lims, "k:", lw=0.8)
            ax.set_xlabel("age (years)")
            ax.set_ylabel("predicted age (years)")
            ax.legend(fontsize=7)
            st.pyplot(fig, use_container_width=False)
        st.download_button("Download predictions.csv", (result["out_dir"] / "predictions.csv").read_bytes(),
                           file_name="predictions.csv", mime="text/csv")
