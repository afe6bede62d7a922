#!/usr/bin/env bash
# Create .venv and install codistill's pinned environment. Idempotent: re-running only
# installs what is missing or differs.
#   bash scripts/setup.sh          CPU environment (tests, CPU smoke run)
#   bash scripts/setup.sh --gpu    adds vLLM and its CUDA torch build (GPU cluster nodes)
# Environment: PYTHON (default python3), VENV (default <repo>/.venv).
set -euo pipefail

usage() { sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; }
gpu=0
for arg in "$@"; do
  case "$arg" in
    --gpu) gpu=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "setup.sh: unknown argument '$arg' (see --help)" >&2; exit 2 ;;
  esac
done

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV:-$root/.venv}"
python="${PYTHON:-python3}"

if [[ ! -x "$venv/bin/python" ]]; then
  echo "[setup] creating virtual environment $venv with $($python --version 2>&1)"
  "$python" -m venv "$venv"
else
  echo "[setup] using existing virtual environment $venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)

if [[ $gpu -eq 1 ]]; then
  torch_pin="$(grep -E '^torch==' "$root/requirements-gpu.txt")"
else
  torch_pin="torch==2.13.0"
fi
have_torch="$("$venv/bin/python" -c 'import torch; print("torch==" + torch.__version__.split("+")[0])' 2>/dev/null || true)"
if [[ "$have_torch" != "$torch_pin" ]]; then
  echo "[setup] installing $torch_pin first (an unpinned torch would pull a CUDA build)"
  "${pip[@]}" install -q "$torch_pin"
else
  echo "[setup] $torch_pin already installed"
fi

echo "[setup] installing requirements.txt (pinned by constraints.txt)"
"${pip[@]}" install -q -r "$root/requirements.txt" -c "$root/constraints.txt" "$torch_pin"
if [[ $gpu -eq 1 ]]; then
  echo "[setup] installing GPU extras from requirements-gpu.txt"
  "${pip[@]}" install -q -r "$root/requirements-gpu.txt"
fi
echo "[setup] installing codistill (editable) so Ray workers can import verl_ext and recipe"
"${pip[@]}" install -q --no-deps --no-build-isolation -e "$root"

"$venv/bin/python" - <<'PY'
import torch, verl, transformers, ray
print(f"[setup] ready: torch {torch.__version__}, verl {verl.__version__}, "
      f"transformers {transformers.__version__}, ray {ray.__version__}, cuda={torch.cuda.is_available()}")
PY
echo "[setup] activate with: source ${venv}/bin/activate"
