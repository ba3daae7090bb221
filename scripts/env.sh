# Sourced first by every wrapper (<method>/*.sh, scripts/*.sh): remembers the caller's folder (the
# Python CLIs resolve relative path flags against it, common/cli.py), works in the repository root,
# and uses the project's virtualenv, set up on first use (scripts/setup_env.sh), so nothing needs
# activating and the wrappers work from any folder.
export BRAINMRI_CALLER_CWD="${BRAINMRI_CALLER_CWD:-$PWD}"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup_env.sh

# help_requested ARGS...: true when -h or --help is among ARGS (the wrapper then shows help only).
help_requested() {
  local a
  for a in "$@"; do [[ "$a" == "-h" || "$a" == "--help" ]] && return 0; done
  return 1
}

# test_run MODULE COMMAND ARGS...: a test wrapper's whole job. `python -m MODULE COMMAND
# --run_dir=RUN_DIR ARGS...`, with RUN_DIR from the environment or else the first argument; with -h/--help
# only the command's help.
test_run() {
  local module="$1" command="$2"
  shift 2
  help_requested "$@" && exec python -m "$module" "$command" --help
  local run_dir="${RUN_DIR:-}"
  if [[ -z "$run_dir" ]]; then
    run_dir="${1:?usage: bash ${BASH_SOURCE[1]#"$PWD"/} RUN_DIR [--key=value ...]}"
    shift
  fi
  exec python -m "$module" "$command" --run_dir="$run_dir" "$@"
}
