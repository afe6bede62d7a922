# shellcheck shell=bash disable=SC2154  # $root and die() come from the sourcing script
# Shared by scripts/run_qwen_math.sh and scripts/reproduce_paper.sh (sourced, not run).
# Expects $root (the repository) and a die() function; sets $py and the compose.py command.

# The python to use: $CODISTILL_PYTHON, else the repository's .venv, else python3 on PATH.
if [[ -n "${CODISTILL_PYTHON:-}" ]]; then
  py="$CODISTILL_PYTHON"
elif [[ -x "$root/.venv/bin/python" ]]; then
  py="$root/.venv/bin/python"
else
  py="$(command -v python3 || true)"
fi
[[ -n "$py" ]] || die "no python found: run 'bash scripts/setup.sh' first (or set CODISTILL_PYTHON)"
# shellcheck disable=SC2034  # used by the scripts that source this file
compose=("$py" "$root/scripts/lib/compose.py")
