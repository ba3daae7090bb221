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
