#!/usr/bin/env bash
# CoDistill-GRPO: one entry point for a laptop, a GPU box and a SLURM cluster.
#
#   bash scripts/run_qwen_math.sh [--pair P] [--exp E] [--nodes N] [--dry-run] [-- hydra overrides ...]
#
# It detects where it runs, says so on its first line, and hands over:
#   cpu-smoke     no SLURM, no GPU: the recipe with platform=cpu (the pair's config with the CPU
#                 substitutions of configs/platform/cpu.yaml), --steps steps (default 2)
#   slurm-submit  sbatch on PATH: checks the config, then sbatch scripts/slurm/codistill.sbatch
#   allocation    inside an allocation (SLURM_JOB_ID set): runs scripts/slurm/codistill.sbatch here
#   local-gpu     GPUs and no SLURM: the recipe on this node's GPUs
#
# Options [environment variable]:
#   --pair NAME        [CODISTILL_PAIR] configs/pair/NAME.yaml (default qwen2.5-math-1.5b_7b)
#   --exp NAME         [CODISTILL_EXP]  configs/exp/NAME.yaml (default codistill)
#   --nodes N          [CODISTILL_NODES] nodes of the SLURM job (default 1; no sbatch on PATH: --dry-run only)
#   --gpus-per-node G  [CODISTILL_GPUS_PER_NODE] (default 8)
#   --partition P, --account A, --time T   sbatch options (sbatch also reads SBATCH_PARTITION,
#                      SBATCH_ACCOUNT, SBATCH_TIMELIMIT and every other SBATCH_* itself)
#   --mode M           [CODISTILL_MODE] cpu-smoke | slurm-submit | allocation | local-gpu
#   --steps N          [CODISTILL_SMOKE_STEPS] steps of the CPU run (default 2)
#   --fresh            move an existing run folder aside (renamed, never deleted) and start over (else: resume)
#   --dry-run          show the plan (first line: which), models, batches, for SLURM the cost and sbatch line;
#                      start nothing. The resolved config goes to a file it names [CODISTILL_DRY_RUN_CONFIG]
# Everything after `--` is a hydra override (e.g. trainer.total_training_steps=10).
# Paths: CODISTILL_OUTPUT_DIR (default <repo>/outputs), CODISTILL_DATA_DIR (default <repo>/data),
# CODISTILL_PYTHON (default <repo>/.venv/bin/python).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
say() { echo "codistill: $*"; }
die() { echo "codistill: error: $*" >&2; exit 2; }
pair="${CODISTILL_PAIR:-qwen2.5-math-1.5b_7b}" exp="${CODISTILL_EXP:-codistill}"
nodes="${CODISTILL_NODES:-1}" gpn="${CODISTILL_GPUS_PER_NODE:-8}" mode="${CODISTILL_MODE:-}"
steps="${CODISTILL_SMOKE_STEPS:-2}" dry_run=0 sbatch_opts=() hydra=() slurm_size="${CODISTILL_NODES:+1}"
need() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value (see --help)"; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --pair) need "$@"; pair="$2"; shift 2 ;;
    --exp) need "$@"; exp="$2"; shift 2 ;;
    --nodes) need "$@"; nodes="$2"; slurm_size=1; shift 2 ;;
    --gpus-per-node) need "$@"; gpn="$2"; shift 2 ;;
    --partition|--account|--time) need "$@"; sbatch_opts+=("$1=$2"); shift 2 ;;
    --mode) need "$@"; mode="$2"; shift 2 ;;
    --steps) need "$@"; steps="$2"; shift 2 ;;
    --fresh) hydra+=(run.fresh=true); shift ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --) shift; hydra+=("$@"); break ;;
    *) die "unknown argument '$1' (hydra overrides go after --; see --help)" ;;
  esac
done
# names only (no paths), positive integers, and no control characters in anything handed on
for name in pair exp; do
  [[ "${!name}" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || die "--$name must be a config name (letters, digits, . _ -), got '${!name}'"
done
for n in nodes gpn steps; do
  [[ "${!n}" =~ ^[1-9][0-9]*$ ]] || die "--${n/gpn/gpus-per-node} must be a positive integer, got '${!n}'"
done
for value in "${sbatch_opts[@]}" "${hydra[@]}" "${SBATCH_PARTITION:-}" "${SBATCH_ACCOUNT:-}" "${SBATCH_TIMELIMIT:-}"; do
  [[ "$value" != *[[:cntrl:]]* ]] || die "a control character (newline, tab, ...) in '${value//[[:cntrl:]]/?}'"
done

py="${CODISTILL_PYTHON:-$root/.venv/bin/python}"
[[ -x "$py" ]] || py="$(command -v python3)" || die "no python: run 'bash scripts/setup.sh' first"
export CODISTILL_OUTPUT_DIR="${CODISTILL_OUTPUT_DIR:-$root/outputs}" CODISTILL_DATA_DIR="${CODISTILL_DATA_DIR:-$root/data}"
gpus_here() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -c '^GPU' || echo 0; }
if [[ -z "$mode" ]] && detected="no sbatch on PATH"; then  # (detected: the reason, if not slurm-submit)
  if [[ -n "${SLURM_JOB_ID:-}" ]]; then mode=allocation
  elif command -v sbatch >/dev/null 2>&1; then mode=slurm-submit
  elif [[ "$(gpus_here)" -gt 0 ]]; then mode=local-gpu
  else mode=cpu-smoke
  fi
fi
# --nodes asks for a SLURM job: where there is no sbatch, a dry run shows that job's plan, a run stops
if [[ -n "$slurm_size" && ( "$mode" == cpu-smoke || "$mode" == local-gpu ) ]]; then
  [[ $dry_run -eq 1 && -n "${detected:-}" ]] || die "--nodes $nodes sizes a SLURM job, but this is a $mode run on this machine (${detected:---mode $mode}): submit from the cluster's login node${detected:+, add --dry-run to see the SLURM plan here}, or leave out --nodes (and CODISTILL_NODES)"
  mode=slurm-submit
fi
sb="sbatch found: without --dry-run it submits"; command -v sbatch >/dev/null 2>&1 || sb="sbatch not needed for --dry-run"
case "$mode" in  # what: the first line of a run; plan: of a dry run
  cpu-smoke) what="(no SLURM, no GPU): the $pair x $exp config with the CPU substitutions, $steps steps" plan="CPU smoke run on this machine $what" ;;
  slurm-submit) what="(sbatch found, not inside an allocation): check, then sbatch" plan="SLURM job, $nodes node(s) x $gpn GPU(s) ($sb)" ;;
  allocation) what="(inside SLURM job $SLURM_JOB_ID): Ray across the allocated nodes, then the recipe" plan="the recipe in this allocation $what" ;;
  local-gpu) what="(GPUs, no SLURM): the recipe on this node's $(gpus_here) GPU(s)" plan="the recipe on this machine $what" ;;
  *) die "unknown mode '$mode'; available: cpu-smoke, slurm-submit, allocation, local-gpu" ;;
esac
if [[ $dry_run -eq 1 ]]; then say "mode: $mode (dry run), plan: $plan"; else say "mode: $mode $what"; fi
args=("pair=$pair" "exp=$exp")
case "$mode" in
  cpu-smoke) args+=(platform=cpu "trainer.total_training_steps=$steps") ;;
  local-gpu) args+=(trainer.nnodes=1 "trainer.n_gpus_per_node=$(gpus_here)") ;;
  slurm-submit) args+=("trainer.nnodes=$nodes" "trainer.n_gpus_per_node=$gpn") ;;
esac
args+=("${hydra[@]}")
entry=("$py" -m recipe.codistill_grpo.main_codistill "${args[@]}")
sbatch_cmd=(sbatch --parsable --chdir="$root" --nodes="$nodes" --gpus-per-node="$gpn" --ntasks-per-node=1
  --job-name="codistill-$pair-$exp" --output="$CODISTILL_OUTPUT_DIR/slurm/%x-%j.out" "${sbatch_opts[@]}"
  scripts/slurm/codistill.sbatch "${args[@]}")
if [[ $dry_run -eq 1 ]]; then
  "${entry[@]}" run.dry_run=true
  [[ "$mode" == cpu-smoke ]] || "$py" scripts/cost_model.py --pair "$pair" --exp "$exp" --line -- "${args[@]:2}" | sed 's/^/codistill: /' || true
  quoted="$(printf '%q ' "${sbatch_cmd[@]}")"  # shell-quoted: pasted, it runs exactly this command
  [[ "$mode" != slurm-submit ]] || say "would submit: ${quoted% }"
  say "dry run: nothing was run or submitted"
  exit 0
fi
case "$mode" in
  cpu-smoke|local-gpu) exec "${entry[@]}" ;;
  allocation) exec bash scripts/slurm/codistill.sbatch "${args[@]}" ;;
  slurm-submit)
    # the same checks as the dry run, before anything is queued
    CODISTILL_DRY_RUN_CONFIG=/dev/null "${entry[@]}" run.dry_run=true >/dev/null \
      || die "the config check failed (above); nothing was submitted"
    mkdir -p "$CODISTILL_OUTPUT_DIR/slurm"
    job=$("${sbatch_cmd[@]}") || die "sbatch refused the job (see its message above)"
    say "submitted job ${job%%;*}: log $CODISTILL_OUTPUT_DIR/slurm/codistill-$pair-$exp-${job%%;*}.out"
    ;;
esac
