#!/usr/bin/env bash
# Reproduce the paper's tables: the whole sequence of runs, resumable (re-run it to continue).
#
#   bash scripts/reproduce_paper.sh [options] [-- hydra overrides for every training run]
#
# Stages, in this order (--stage picks one):
#   data    each pair's data: scripts/prepare_data.py --template <the pair's template>
#           (tiny pair: built on the fly); skipped when the data files exist
#   base    evaluate each pair's base small and large models
#   train   per pair: GRPO small, GRPO large, CoDistill-GRPO (+ frozen_teacher, no_is, kd_only
#           with --ablations), each through scripts/run_qwen_math.sh; a run whose final
#           checkpoint exists is skipped, one whose SLURM job is still queued or running too
#   eval    evaluate each finished run's final checkpoint (small actor; large actor if it trained)
#   tables  scripts/make_tables.py: results -> tables/main_table.{md,csv} and curves.png
#   (after-train = base, eval, tables: what the login-node flow submits as its last job)
# Where: inside an allocation, on a GPU node or on CPU every stage runs here, in order (on a
# CPU machine only the tiny pair can run, and it is the default). On a SLURM login node the
# training runs are submitted as jobs (they run in parallel) and base/eval/tables as one more
# one-node job that starts when they have ended (sbatch --dependency=afterany).
#
# Options [environment variable]:
#   --pairs a,b     [CODISTILL_PAIRS] default: qwen2.5-math-1.5b_7b,llama-3.2-1b_3.1-8b (tiny on CPU)
#   --ablations     also run and evaluate frozen_teacher, no_is and kd_only
#   --stage S       all | data | base | train | eval | tables | after-train (default all)
#   --nodes N       nodes per training run (run_qwen_math.sh --nodes)
#   --dry-run       list what would run and what is skipped; run nothing
#   -h, --help
# Everything after `--` is passed to every training run as hydra overrides.
# Results: $CODISTILL_OUTPUT_DIR/results/<pair>/<name>/<suite>.json, tables in
# $CODISTILL_OUTPUT_DIR/tables/. Other environment as for run_qwen_math.sh.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
usage() { sed -n '2,32p' "$0" | sed 's/^# \{0,1\}//'; }
say() { echo "[reproduce] $*"; }
die() { echo "[reproduce] error: $*" >&2; exit 2; }

# shellcheck source=scripts/lib/common.sh
source "$root/scripts/lib/common.sh"

pairs="${CODISTILL_PAIRS:-}"
ablations=0 stage=all nodes="" dry_run=0
user=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --pairs) [[ -n "${2:-}" ]] || die "--pairs needs a value"; pairs="$2"; shift 2 ;;
    --ablations) ablations=1; shift ;;
    --stage) [[ -n "${2:-}" ]] || die "--stage needs a value"; stage="$2"; shift 2 ;;
    --nodes) [[ "${2:-}" =~ ^[1-9][0-9]*$ ]] || die "--nodes must be a positive integer, got '${2:-}'"; nodes="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; user=("$@"); break ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
case "$stage" in
  all|data|base|train|eval|tables|after-train) ;;
  *) die "unknown stage '$stage'; available: all, data, base, train, eval, tables, after-train" ;;
esac

gpus_here() {
  command -v nvidia-smi >/dev/null 2>&1 || { echo 0; return; }
  nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true
}
if [[ -n "${SLURM_JOB_ID:-}" ]]; then where=allocation
elif command -v sbatch >/dev/null 2>&1; then where=login
elif [[ "$(gpus_here)" -gt 0 ]]; then where=gpu
else where=cpu
fi
say "situation: $where"

if [[ -z "$pairs" ]]; then
  if [[ "$where" == cpu ]]; then pairs=tiny; else pairs="qwen2.5-math-1.5b_7b,llama-3.2-1b_3.1-8b"; fi
fi
IFS=, read -r -a pair_list <<<"$pairs"
known=" $("${compose[@]}" list pair) "
for p in "${pair_list[@]}"; do
  [[ "$known" == *" $p "* ]] || die "unknown model pair '$p'; available:${known% }"
  [[ "$where" != cpu || "$p" == tiny ]] || die "pair $p needs GPUs; on a CPU machine use --pairs tiny"
done
exps=(grpo_small grpo_large codistill)
[[ $ablations -eq 1 ]] && exps+=(frozen_teacher no_is kd_only)

out_dir="${CODISTILL_OUTPUT_DIR:-$root/outputs}"
results="$out_dir/results"
if [[ "$where" == cpu ]]; then backend=hf; else backend=vllm; fi

act() {  # run a command, or list it under --dry-run
  if [[ $dry_run -eq 1 ]]; then
    echo "would run: $*"
  else
    say "+ $*"
    "$@"
  fi
}

declare -A fact
load_facts() {  # load_facts PAIR EXP: compose.py's KEY=VALUE facts into ${fact[KEY]}
  local text key value
  text="$("${compose[@]}" info --tsv --pair "$1" --exp "$2" -- "${user[@]}")" || exit 2
  fact=()
  while IFS=$'\t' read -r key value; do
    fact[$key]="$value"
  done <<<"$text"
}

run_finished() {  # final checkpoint saved: the tracker names the last step and its actor folder exists
  local tracker="${fact[CHECKPOINT_DIR]}/latest_checkpointed_iteration.txt"
  [[ -n "${fact[FINAL_CHECKPOINT]}" && -d "${fact[FINAL_CHECKPOINT]}/actor" && -f "$tracker" ]] &&
    [[ "$(tr -d '[:space:]' <"$tracker")" == "${fact[TOTAL_STEPS]}" ]]
}

run_pending() {  # a SLURM job of this run is still queued or running
  local id_file="${fact[RUN_DIR]}/slurm_job_id"
  [[ -f "$id_file" ]] && command -v squeue >/dev/null 2>&1 && [[ -n "$(squeue -h -j "$(cat "$id_file")" 2>/dev/null)" ]]
}

suites_of() {  # the pair's eval suites (val parquet stems) as a,b,c
  local f names=()
  for f in ${fact[VAL_FILES]}; do names+=("$(basename "$f" .parquet)"); done
  (IFS=,; echo "${names[*]}")
}

evaluate() {  # evaluate PAIR NAME METHOD ROLE CHECKPOINT
  local pair="$1" name="$2" method="$3" role="$4" ckpt="$5" suites data_dir extra=()
  suites="$(suites_of)"
  data_dir="$(dirname "${fact[VAL_FILES]%% *}")"
  if "$py" - "$results/$pair/$name" "$suites" <<'PY'; then
import json, os, sys
folder, suites = sys.argv[1], sys.argv[2].split(",")
def complete(suite):
    path = os.path.join(folder, f"{suite}.json")
    try:
        return bool(json.load(open(path)).get("complete"))
    except (OSError, ValueError):
        return False
sys.exit(0 if all(complete(s) for s in suites) else 1)
PY
    say "skip evaluation $pair/$name: results complete"
    return 0
  fi
  [[ ",$suites," == *,aime24,* || ",$suites," == *,amc23,* ]] && extra+=(--suite-n "aime24=16,amc23=16" --sample-temperature 0.6)
  act "$py" scripts/evaluate.py --checkpoint "$ckpt" --name "$name" --data-dir "$data_dir" --suites "$suites" \
    --out "$results/$pair" --backend "$backend" --pair "$pair" --method "$method" --role "$role" \
    --max-tokens "${fact[MAX_RESPONSE_LENGTH]}" "${extra[@]}"
}

method_of() { case "$1" in grpo_small|grpo_large) echo grpo ;; *) echo "$1" ;; esac; }

stage_data() {
  local pair
  for pair in "${pair_list[@]}"; do
    load_facts "$pair" codistill
    if [[ "$pair" == tiny ]]; then
      act "$py" "$root/scripts/lib/compose.py" check --pair tiny --exp codistill
      continue
    fi
    local missing=0 f
    for f in ${fact[DATA_FILES]}; do [[ -f "$f" ]] || missing=1; done
    if [[ $missing -eq 0 ]]; then say "skip data for $pair: every data file exists"; continue; fi
    # shellcheck disable=SC2086  # PREPARE_CMD is a plain command line written by compose.py
    act ${fact[PREPARE_CMD]/#python /$py }
  done
}

stage_base() {
  local pair
  for pair in "${pair_list[@]}"; do
    load_facts "$pair" codistill
    evaluate "$pair" base_small base small "${fact[SMALL_MODEL]}"
    evaluate "$pair" base_large base large "${fact[LARGE_MODEL]}"
  done
}

submitted=()
stage_train() {
  local pair exp args
  for pair in "${pair_list[@]}"; do
    for exp in "${exps[@]}"; do
      load_facts "$pair" "$exp"
      if run_finished; then say "skip run $pair/$exp: final checkpoint ${fact[FINAL_CHECKPOINT]} exists"; continue; fi
      if run_pending; then
        say "skip run $pair/$exp: SLURM job $(cat "${fact[RUN_DIR]}/slurm_job_id") is still queued or running"
        submitted+=("$(cat "${fact[RUN_DIR]}/slurm_job_id")")
        continue
      fi
      args=(--pair "$pair" --exp "$exp")
      [[ -n "$nodes" ]] && args+=(--nodes "$nodes")
      act bash scripts/run_qwen_math.sh "${args[@]}" -- "${user[@]}"
      if [[ "$where" == login && $dry_run -eq 0 ]]; then
        submitted+=("$(cat "${fact[RUN_DIR]}/slurm_job_id")")
      fi
    done
  done
}

stage_eval() {
  local pair exp
  for pair in "${pair_list[@]}"; do
    for exp in "${exps[@]}"; do
      load_facts "$pair" "$exp"
      if ! run_finished; then say "skip evaluation $pair/$exp: no final checkpoint yet (${fact[FINAL_CHECKPOINT]})"; continue; fi
      case "$exp" in
        grpo_large) evaluate "$pair" "$exp" grpo large "${fact[FINAL_CHECKPOINT]}/actor" ;;
        *) evaluate "$pair" "${exp}_small" "$(method_of "$exp")" small "${fact[FINAL_CHECKPOINT]}/actor" ;;
      esac
      if [[ -d "${fact[FINAL_CHECKPOINT]}/large_actor" && "$exp" != frozen_teacher ]]; then
        evaluate "$pair" "${exp}_large" "$(method_of "$exp")" large "${fact[FINAL_CHECKPOINT]}/large_actor"
      fi
    done
  done
}

stage_tables() {
  local pair exp logs=()
  for pair in "${pair_list[@]}"; do
    for exp in "${exps[@]}"; do
      load_facts "$pair" "$exp"
      [[ -f "${fact[METRICS_FILE]}" ]] && logs+=(--log "$pair/$exp=${fact[METRICS_FILE]}")
    done
  done
  load_facts "${pair_list[0]}" codistill
  act "$py" scripts/make_tables.py --results "$results" --out "$out_dir/tables" --suites "$(suites_of)" "${logs[@]}"
}

run_stage() { say "== stage $1"; "stage_$1"; }

if [[ "$stage" == after-train ]]; then
  for s in base eval tables; do run_stage "$s"; done
elif [[ "$stage" != all ]]; then
  run_stage "$stage"
elif [[ "$where" == login ]]; then
  run_stage data
  run_stage train
  say "== stages base, eval, tables: one GPU job after the training jobs"
  job_args=(bash scripts/reproduce_paper.sh --stage after-train --pairs "$pairs")
  [[ $ablations -eq 1 ]] && job_args+=(--ablations)
  script="$out_dir/slurm/reproduce_eval__$(date +%Y%m%d-%H%M%S).sbatch"
  if [[ $dry_run -eq 1 ]]; then
    echo "would submit: sbatch${submitted:+ --dependency=afterany:$(IFS=:; echo "${submitted[*]}")} $script (${job_args[*]})"
  else
    "${compose[@]}" sbatch-command --job-name reproduce-eval --write "$script" -- "${job_args[@]}" >/dev/null
    dep=()
    [[ ${#submitted[@]} -gt 0 ]] && dep=("--dependency=afterany:$(IFS=:; echo "${submitted[*]}")")
    job=$(sbatch --parsable "${dep[@]}" "$script") || die "sbatch refused $script"
    say "submitted evaluation job ${job%%;*}${dep:+ (${dep[0]})}; tables will be in $out_dir/tables"
  fi
else
  for s in data base train eval tables; do run_stage "$s"; done
fi
[[ $dry_run -eq 1 ]] && say "dry run: nothing was run or submitted"
say "done"
