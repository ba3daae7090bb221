#!/usr/bin/env bash
# The main job: set-up, data check, shared splits, train + test every method on every dataset it
# applies to, then regenerate the leaderboard.
#
#   bash scripts/reproduce.sh
#   METHODS=resnet3d DATASETS=ixi_hh PROFILE=cpu bash scripts/reproduce.sh
#
# METHODS   space/comma-separated subset of: reference resnet3d resnet3d_permuted_ages oasis_resblock
#           vgg16_svr tsan midslice_classifier alz_cnn midslice_from_alz   (default: all; "reference" = mean-age
#           predictor and ROI ridge; midslice_from_alz = the mid-slice classifier fine-tuned from alz_cnn's ResNet-18;
#           resnet3d_permuted_ages = the leakage check, resnet3d trained and validated on permuted ages, ixi_hh;
#           tsan runs stage 1 and the faithful stage 2; VARIANTS="faithful out_of_fold normalized_d"
#           adds its stage-2 variants, see tsan/README.md)
# DATASETS  space/comma-separated subset of: ixi_hh ds000228 alzheimer4   (default: all a method applies to)
# PROFILE   paper | cpu   (default: paper with a CUDA GPU, else cpu)
# DATA_ROOT data folder   (default: ../shared/data, else data/)
# RUN_NAME  run folder of the cross-validated methods (default: main-$PROFILE). The job is resumable:
#           run it again after an interruption and every finished fold of the same commit is reused, a
#           partial one resumed, one made by other code retrained (common/cv.py).
#
# Brain-age methods and the mid-slice classifier are 5-fold cross-validated on the committed folds
# (results/splits/); alzheimer4 keeps its published test folder. Order: splits, the shared
# preprocessing of the brain-age methods (a failure there ends the job), each method on each dataset
# (a failed step is recorded and the job goes on), the resnet3d age-group row (with
# midslice_classifier on ds000228), the leaderboard, the validation curves. The wall time of every
# step is written to results/BENCHMARKS.md.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
if help_requested "$@"; then  # the usage above, and nothing else
  echo "NAME"
  sed -n '2,/^set -euo/p' scripts/reproduce.sh | sed '$d' | sed 's/^# \{0,1\}/    /'
  echo "FLAGS"; echo "    none: the job is set with the environment variables above"
  exit 0
fi
if (( $# )); then echo "error: scripts/reproduce.sh takes no arguments, only environment variables (see --help)" >&2; exit 2; fi

if [[ -z "${DATA_ROOT:-}" ]]; then
  if [[ -d ../shared/data ]]; then DATA_ROOT="$(cd ../shared/data && pwd)";
  elif [[ -d data ]]; then DATA_ROOT="$(pwd)/data";
  else
    echo "No data found. Set DATA_ROOT, or download the public datasets with:" >&2
    echo "  python scripts/fetch_data.py            (or --from=DIR to link a local copy)" >&2
    exit 2
  fi
fi
export DATA_ROOT
PROFILE="${PROFILE:-$(python -c 'from common.device import default_profile; print(default_profile())')}"
# The whole job: every method and the datasets it runs on (scripts/mainjob.py, the one place).
ALL_METHODS="$(python scripts/mainjob.py methods)"
METHODS="${METHODS:-$ALL_METHODS}"; METHODS="${METHODS//,/ }"
DATASETS="${DATASETS:-$(python scripts/mainjob.py datasets)}"; DATASETS="${DATASETS//,/ }"
LOG_DIR="runs/logs"; mkdir -p "$LOG_DIR"
CV_RUN_NAME="${RUN_NAME:-main-$PROFILE}"
# Every invocation of the same commit appends to one record (a job that spans several sessions is
# summed there); a record of other code is replaced. Committed with the results.
STEPS_TSV="results/mainjob_steps.tsv"; COMMIT="$(python -c 'from common.runlog import git_commit; print(git_commit())')"
[[ -f "$STEPS_TSV" ]] && ! grep -q "^commit"$'\t'"$COMMIT"$'\t' "$STEPS_TSV" && rm "$STEPS_TSV"
{ printf 'invocation\t%s\t\t\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  printf 'profile\t%s\t\t\n' "$PROFILE"
  printf 'commit\t%s\t\t\n' "$COMMIT"
  printf 'machine\t%s, %s cores\t\t\n' "$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n 1)" "$(nproc)"; } >> "$STEPS_TSV"
# results/BENCHMARKS.md after every step, so a stopped job still reports what it measured
report() { python scripts/mainjob.py report "$STEPS_TSV" results/BENCHMARKS.md > /dev/null; }
job_start=$SECONDS
echo "[reproduce] DATA_ROOT=$DATA_ROOT PROFILE=$PROFILE METHODS=$METHODS DATASETS=$DATASETS RUN_NAME=$CV_RUN_NAME"

# Subject-level splits for the datasets with subject IDs (alzheimer4 keeps its published folders).
SPLIT_DATASETS=$(for d in $DATASETS; do [[ "$d" == alzheimer4 ]] || printf '%s,' "$d"; done)
[[ -n "$SPLIT_DATASETS" ]] && python scripts/make_splits.py --datasets="${SPLIT_DATASETS%,}"

# The shared preprocessing (brain extraction, N4, registration), once for every brain-age method.
# Only the brain-age methods read it (the mid-slice classifiers read the raw mid-slice, alz_cnn JPEGs).
NEEDS_PREPROCESSING=""
for m in resnet3d resnet3d_permuted_ages oasis_resblock vgg16_svr tsan; do
  [[ " $METHODS " == *" $m "* ]] && NEEDS_PREPROCESSING=yes
done
if [[ -n "$SPLIT_DATASETS" && -n "$NEEDS_PREPROCESSING" ]]; then
  start=$SECONDS
  echo "[reproduce] $(date -u +%H:%M:%S) shared preprocessing of ${SPLIT_DATASETS%,} (cached; log: $LOG_DIR/preprocess.log)"
  if python scripts/preprocess.py --datasets="${SPLIT_DATASETS%,}" > "$LOG_DIR/preprocess.log" 2>&1; then status=ok; else status=FAILED; fi
  printf 'shared preprocessing\t%s\t%s\t0\n' "$((SECONDS - start))" "$status" >> "$STEPS_TSV"; report
  [[ "$status" == ok ]] || { echo "[reproduce] shared preprocessing FAILED; see $LOG_DIR/preprocess.log" >&2; exit 1; }
fi

declare -A APPLIES=()
for m in $ALL_METHODS; do APPLIES[$m]="$(python scripts/mainjob.py datasets "$m")"; done
declare -A SCRIPT=( [reference]="baselines/reference.sh" [resnet3d]="resnet3d/train.sh"
                    [resnet3d_permuted_ages]="resnet3d/train.sh"
                    [oasis_resblock]="baselines/oasis_resblock/train.sh" [vgg16_svr]="baselines/vgg16_svr/train.sh"
                    [midslice_classifier]="midslice_classifier/train.sh" [alz_cnn]="alz_cnn/compare_transfer.sh"
                    [tsan]="tsan/train.sh" [midslice_from_alz]="midslice_classifier/train_from_alz.sh" )
declare -A EXTRA_ARGS=( [resnet3d_permuted_ages]="--permuted_ages=True" )
failed=()
# The steps the job will run, and their expected time from the last run's result files.
steps=(); total_eta=0
for method in $METHODS; do
  for dataset in $DATASETS; do
    [[ " ${APPLIES[$method]:-} " == *" $dataset "* ]] || continue
    steps+=("$method/$dataset"); e=$(python scripts/mainjob.py eta "$method" "$dataset"); [[ "$e" == "?" ]] || total_eta=$((total_eta + e))
  done
done
echo "[reproduce] ${#steps[@]} steps: ${steps[*]}; the last runs took $((total_eta / 60)) min in all"
step=0
for method in $METHODS; do
  [[ -n "${APPLIES[$method]:-}" ]] || { echo "unknown method: $method (known: $ALL_METHODS)" >&2; exit 2; }
  for dataset in $DATASETS; do
    [[ " ${APPLIES[$method]} " == *" $dataset "* ]] || continue
    log="$LOG_DIR/${method}__${dataset}.log"
    step=$((step + 1)); eta=$(python scripts/mainjob.py eta "$method" "$dataset")
    echo "[reproduce] $(date -u +%H:%M:%S) step $step/${#steps[@]}: $method on $dataset (profile $PROFILE; last run ${eta} s; $(( (SECONDS - job_start) / 60 )) min elapsed), log: $log"
    start=$SECONDS
    # Cross-validated methods run under one stable name with --resume (alz_cnn: a new run each time).
    cv_env=(); [[ "$method" == alz_cnn ]] || cv_env=(RUN_NAME="$CV_RUN_NAME" RESUME=True)
    # The method's log goes to its file; its fold lines (fold k/K, ETA) are also shown here. A failed
    # step is recorded and the job goes on (under set -e with pipefail the failing pipeline would end it).
    set +e
    env DATASET="$dataset" PROFILE="$PROFILE" "${cv_env[@]}" bash "${SCRIPT[$method]}" ${EXTRA_ARGS[$method]:-} 2>&1 | tee "$log" \
      | { grep --line-buffered -E "fold [0-9]+/[0-9]+" | sed -u 's/^/[reproduce]   /' || true; }
    rc=${PIPESTATUS[0]}
    set -e
    reused=$(grep -c "reusing the finished run" "$log" || true)
    if (( rc == 0 )); then
      echo "[reproduce] $method on $dataset done in $((SECONDS - start)) s"; status=ok
    else
      echo "[reproduce] $method on $dataset FAILED after $((SECONDS - start)) s; see $log" >&2
      tail -n 20 "$log" >&2
      failed+=("$method/$dataset"); status=FAILED
    fi
    printf '%s on %s\t%s\t%s\t%s\n' "$method" "$dataset" "$((SECONDS - start))" "$status" "$reused" >> "$STEPS_TSV"
    report
  done
done

# The mid-slice classifier's 3-class question answered by the brain-age regressor, same test subjects.
if [[ " $METHODS " == *" midslice_classifier "* && " $DATASETS " == *" ds000228 "* && -f results/resnet3d__ds000228.json ]]; then
  python -m midslice_classifier.from_brain_age --source_method=resnet3d > "$LOG_DIR/resnet3d_agegroups__ds000228.log" 2>&1 \
    || { echo "[reproduce] resnet3d age-group row FAILED; see $LOG_DIR/resnet3d_agegroups__ds000228.log" >&2; failed+=("resnet3d_agegroups"); }
fi

printf 'total\t%s\t\t\n' "$((SECONDS - job_start))" >> "$STEPS_TSV"
report
echo "[reproduce] wall time $(( (SECONDS - job_start) / 60 )) min; per step: results/BENCHMARKS.md"
python scripts/make_leaderboard.py
# Where each method's validation curve flattens (the evidence for its epoch count; validation data only).
python scripts/validation_curves.py --run_name="$CV_RUN_NAME" > "$LOG_DIR/validation_curves.log" 2>&1 \
  || echo "[reproduce] validation curves not written; see $LOG_DIR/validation_curves.log" >&2
if (( ${#failed[@]} )); then
  echo "[reproduce] failed: ${failed[*]}" >&2
  exit 1
fi
echo "[reproduce] done; see results/LEADERBOARD.md"
