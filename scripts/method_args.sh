# Sourced by the method wrappers (<method>/train.sh) so they all read the environment the same way.
#
#   run_cli MODULE COMMAND DEFAULT_DATASET [--key=value ...] "$@"
#
# Runs `python -m MODULE COMMAND` (COMMAND may be "") with --dataset=${DATASET:-DEFAULT_DATASET} and,
# when set, --profile=$PROFILE --run_name=$RUN_NAME --data_root=$DATA_ROOT --seed=$SEED --resume=$RESUME, then the
# remaining arguments. With -h/--help anywhere it shows the command's help instead of training
# (after other flags, fire needs the form `-- --help`).
run_cli() {
  local module="$1" command="$2" dataset="$3"
  shift 3
  local a
  for a in "$@"; do
    if [[ "$a" == "--help" || "$a" == "-h" ]]; then
      exec python -m "$module" ${command:+"$command"} -- --help
    fi
  done
  local args=(--dataset="${DATASET:-$dataset}")
  [[ -n "${PROFILE:-}" ]] && args+=(--profile="$PROFILE")
  [[ -n "${RUN_NAME:-}" ]] && args+=(--run_name="$RUN_NAME")
  [[ -n "${DATA_ROOT:-}" ]] && args+=(--data_root="$DATA_ROOT")
  [[ -n "${SEED:-}" ]] && args+=(--seed="$SEED")
  [[ -n "${RESUME:-}" ]] && args+=(--resume="$RESUME")
  exec python -m "$module" ${command:+"$command"} "${args[@]}" "$@"
}
