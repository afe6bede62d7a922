#!/usr/bin/env bash
# CoDistill-GRPO: one entry point for a laptop, a GPU box and a SLURM cluster.
#
#   bash scripts/run_qwen_math.sh [options] [-- hydra overrides ...]
#
# The situation is detected and printed at start (force one with --mode / CODISTILL_MODE):
#   cpu-smoke     no SLURM, no GPU: the real recipe on the tiny model pair (built on the fly),
#                 a few steps on CPU; prints where the metrics and the checkpoint went.
#   slurm-submit  sbatch on PATH, not inside an allocation: writes an sbatch script (resources
#                 from configs/cluster/<cluster>.yaml, flags, environment) and submits it.
#   allocation    inside an allocation (SLURM_JOB_ID set): Ray head on the first node, workers
#                 via srun on the others, waits until all GPUs joined, runs the recipe, stops Ray.
#   local-gpu     GPUs and no SLURM: runs the recipe on this node's GPUs.
#
# Options [environment variable]:
#   --pair NAME         [CODISTILL_PAIR]  configs/model_pairs/NAME.yaml (default qwen2.5-math-1.5b_7b)
#   --exp NAME          [CODISTILL_EXP]   configs/experiments/NAME.yaml (default codistill):
#                       codistill grpo_small grpo_large frozen_teacher no_is kd_only
#   --nodes N           [CODISTILL_NODES] nodes (default: the allocation's, else the cluster config's)
#   --gpus-per-node G   [CODISTILL_GPUS_PER_NODE]
#   --cluster NAME      [CODISTILL_CLUSTER] configs/cluster/NAME.yaml (default: default)
#   --partition P       [CODISTILL_PARTITION, SLURM_PARTITION, SBATCH_PARTITION]
#   --account A         [CODISTILL_ACCOUNT, SLURM_ACCOUNT, SBATCH_ACCOUNT]
#   --time T            [CODISTILL_TIME, SBATCH_TIMELIMIT]
#   --mode M            [CODISTILL_MODE] cpu-smoke | slurm-submit | allocation | local-gpu
#   --steps N           [CODISTILL_SMOKE_STEPS] steps of the CPU smoke run (default 2)
#   --dry-run           print the plan, the resolved hydra config and the sbatch script; run nothing
#   -h, --help
# Everything after `--` goes to hydra as overrides (e.g. trainer.total_training_steps=10).
# More environment: CODISTILL_OUTPUT_DIR (default <repo>/outputs), CODISTILL_DATA_DIR
# (default <repo>/data), CODISTILL_PYTHON (default <repo>/.venv/bin/python, else python3),
# HF_HOME / HF_HUB_CACHE / HF_HUB_OFFLINE (where models are looked up).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

usage() { sed -n '2,35p' "$0" | sed 's/^# \{0,1\}//'; }
say() { echo "[codistill] $*"; }
die() { echo "[codistill] error: $*" >&2; exit 2; }

# shellcheck source=scripts/lib/common.sh
source "$root/scripts/lib/common.sh"

pair="${CODISTILL_PAIR:-qwen2.5-math-1.5b_7b}"
exp="${CODISTILL_EXP:-codistill}"
nodes="${CODISTILL_NODES:-}"
gpn="${CODISTILL_GPUS_PER_NODE:-}"
cluster="${CODISTILL_CLUSTER:-default}"
partition="" account="" timelimit=""
mode="${CODISTILL_MODE:-}"
steps="${CODISTILL_SMOKE_STEPS:-2}"
dry_run=0
pair_given=0
user=()

need_value() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value (see --help)"; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --pair) need_value "$@"; pair="$2"; pair_given=1; shift 2 ;;
    --exp) need_value "$@"; exp="$2"; shift 2 ;;
    --nodes) need_value "$@"; nodes="$2"; shift 2 ;;
    --gpus-per-node) need_value "$@"; gpn="$2"; shift 2 ;;
    --cluster) need_value "$@"; cluster="$2"; shift 2 ;;
    --partition) need_value "$@"; partition="$2"; shift 2 ;;
    --account) need_value "$@"; account="$2"; shift 2 ;;
    --time) need_value "$@"; timelimit="$2"; shift 2 ;;
    --mode) need_value "$@"; mode="$2"; shift 2 ;;
    --steps) need_value "$@"; steps="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; user=("$@"); break ;;
    *) die "unknown argument '$1' (hydra overrides go after --; see --help)" ;;
  esac
done
for n in nodes gpn steps; do
  [[ -z "${!n}" || "${!n}" =~ ^[1-9][0-9]*$ ]] || die "--${n/gpn/gpus-per-node} must be a positive integer, got '${!n}'"
done

gpu_count() {
  command -v nvidia-smi >/dev/null 2>&1 || { echo 0; return; }
  nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true
}

if [[ -z "$mode" ]]; then
  if [[ -n "${SLURM_JOB_ID:-}" ]]; then
    mode=allocation
  elif command -v sbatch >/dev/null 2>&1; then
    mode=slurm-submit
  elif [[ "$(gpu_count)" -gt 0 ]]; then
    mode=local-gpu
  else
    mode=cpu-smoke
  fi
fi
case "$mode" in
  cpu-smoke) say "mode: cpu-smoke (no SLURM, no GPU): the real recipe on the tiny pair, $steps steps on CPU" ;;
  slurm-submit) say "mode: slurm-submit (sbatch found, not inside an allocation): writing and submitting an sbatch script" ;;
  allocation) say "mode: allocation (inside SLURM job ${SLURM_JOB_ID:-?}): Ray across the allocated nodes, then the recipe" ;;
  local-gpu) say "mode: local-gpu (GPUs, no SLURM): the recipe on this node's $(gpu_count) GPU(s)" ;;
  *) die "unknown mode '$mode'; available: cpu-smoke, slurm-submit, allocation, local-gpu" ;;
esac

# In an allocation the node and GPU counts come from SLURM unless given.
alloc_nodes="" alloc_gpn=""
if [[ "$mode" == allocation ]]; then
  alloc_nodes="${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}"
  alloc_gpn="${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_NODE:-}}"
  alloc_gpn="${alloc_gpn##*:}"  # "h100:8" -> 8
  [[ "$alloc_gpn" =~ ^[0-9]+$ ]] || alloc_gpn="$(gpu_count)"
  [[ "$alloc_gpn" -gt 0 ]] || die "no GPUs in this allocation (SLURM_GPUS_ON_NODE unset and nvidia-smi sees none): request them with --gpus-per-node"
  nodes="${nodes:-$alloc_nodes}"
  gpn="${gpn:-$alloc_gpn}"
elif [[ "$mode" == local-gpu ]]; then
  nodes="${nodes:-1}"
  gpn="${gpn:-$(gpu_count)}"
fi

plan_args=(--pair "$pair" --exp "$exp" --cluster "$cluster")
[[ -n "$nodes" ]] && plan_args+=(--nodes "$nodes")
[[ -n "$gpn" ]] && plan_args+=(--gpus-per-node "$gpn")
[[ -n "$partition" ]] && plan_args+=(--partition "$partition")
[[ -n "$account" ]] && plan_args+=(--account "$account")
[[ -n "$timelimit" ]] && plan_args+=(--time "$timelimit")

# the smoke run's folder is the tiny pair's run folder: checkpoints/ and metrics.jsonl land where
# `--pair tiny` runs put them (reproduce_paper.sh finds them there)
smoke_dir="${CODISTILL_OUTPUT_DIR:-$root/outputs}/tiny/$exp"

# ------------------------------------------------------------------------------ dry run
if [[ $dry_run -eq 1 ]]; then
  "${compose[@]}" dry-run "${plan_args[@]}" -- "${user[@]}" || exit $?
  if [[ "$mode" == cpu-smoke ]]; then
    smoke=$("${compose[@]}" smoke-args --exp "$exp" --out "$smoke_dir" --steps "$steps" -- "${user[@]}") || exit $?
    mapfile -t smoke_args <<<"$smoke"
    echo "== cpu-smoke command (what this machine would run; the pair above applies on GPUs)"
    echo "$py -m recipe.codistill_grpo.cpu.smoke ${smoke_args[*]}"
  fi
  echo "== inside the allocation: Ray head on the first node, 'srun -w NODE ray start --address HEAD:PORT' on the others,"
  echo "   wait for all GPUs, then: $py -m recipe.codistill_grpo.main_codistill <the hydra overrides above>"
  say "dry run: nothing was run or submitted"
  exit 0
fi

# ------------------------------------------------------------------------------ cpu smoke
if [[ "$mode" == cpu-smoke ]]; then
  "${compose[@]}" info "${plan_args[@]}" >/dev/null || exit $?  # unknown pair/experiment: one line
  if [[ $pair_given -eq 1 && "$pair" != tiny ]]; then
    say "note: the CPU smoke run uses the tiny pair; --pair $pair applies on GPUs (try --dry-run)"
  fi
  smoke=$("${compose[@]}" smoke-args --exp "$exp" --out "$smoke_dir" --steps "$steps" -- "${user[@]}") || exit $?
  mapfile -t smoke_args <<<"$smoke"
  say "experiment $exp; output folder $smoke_dir"
  set +e
  "$py" -m recipe.codistill_grpo.cpu.smoke "${smoke_args[@]}"
  rc=$?
  set -e
  [[ $rc -eq 0 ]] || die "CPU smoke run failed (exit $rc); full log: $smoke_dir/train.log"
  say "done: $steps steps of experiment $exp on the tiny pair (CPU)"
  say "metrics (one JSON line per step): $smoke_dir/metrics.jsonl"
  "$py" - "$smoke_dir/metrics.jsonl" <<'PY' || die "no metrics were logged to $smoke_dir/metrics.jsonl"
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
last = rows[-1]["data"]
keys = ["critic/score/mean", "small/kd_reward_mean", "small/adv_kd_part_abs", "actor/pg_loss",
        "large/is_ess", "large/is_weight_mean", "large/pg_loss", "timing_s/step"]
shown = ", ".join(f"{k}={last[k]:.4g}" for k in keys if k in last)
print(f"[codistill] {len(rows)} steps logged; step {rows[-1]['step']}: {shown}")
PY
  ckpt="$smoke_dir/checkpoints/global_step_$steps"
  if [[ -d "$ckpt" ]]; then
    say "checkpoint: $ckpt (contains: $(find "$ckpt" -mindepth 1 -maxdepth 1 -printf '%f\n' | sort | tr '\n' ' '))"
  else
    die "expected checkpoint $ckpt was not written"
  fi
  say "log: $smoke_dir/train.log"
  exit 0
fi

# ------------------------------------------------------------------------------ slurm submit
if [[ "$mode" == slurm-submit ]]; then
  "${compose[@]}" check "${plan_args[@]}" -- "${user[@]}" || exit $?
  out_dir="${CODISTILL_OUTPUT_DIR:-$root/outputs}"
  script="$out_dir/slurm/${pair}__${exp}__$(date +%Y%m%d-%H%M%S).sbatch"
  "${compose[@]}" sbatch "${plan_args[@]}" --write "$script" -- "${user[@]}" >/dev/null || exit $?
  say "sbatch script: $script"
  submitted=$(sbatch --parsable "$script") || die "sbatch refused $script (see its message above)"
  job_id="${submitted%%;*}"
  run_dir="$out_dir/$pair/$exp"
  mkdir -p "$run_dir"
  echo "$job_id" >"$run_dir/slurm_job_id"
  job_name="$(sed -n 's/^#SBATCH --job-name=//p' "$script")"
  say "submitted job $job_id"
  say "log: $out_dir/slurm/$job_name-$job_id.out"
  exit 0
fi

# ------------------------------------------------------------------------------ allocation / local GPU
if [[ "$mode" == allocation ]]; then
  avail=(--available-gpus "$((alloc_nodes * alloc_gpn))" --available-nodes "$alloc_nodes")
else
  avail=(--available-gpus "$(gpu_count)" --available-nodes 1)
fi
"${compose[@]}" check "${plan_args[@]}" "${avail[@]}" -- "${user[@]}" || exit $?
info=$("${compose[@]}" info "${plan_args[@]}" -- "${user[@]}") || exit $?
RUN_DIR="" CHECKPOINT_DIR="" METRICS_FILE="" NODES="" RAY_PORT="" RAY_JOIN_TIMEOUT_S="" SRUN_EXTRA=""
eval "$info"  # RUN_DIR, CHECKPOINT_DIR, METRICS_FILE, NODES, GPUS, ... (shell-quoted by compose.py)
overrides=$("${compose[@]}" overrides "${plan_args[@]}" -- "${user[@]}") || exit $?
mapfile -t hydra_args <<<"$overrides"
mkdir -p "$RUN_DIR"
export VERL_FILE_LOGGER_PATH="$METRICS_FILE"
export PYTHONUNBUFFERED=1
# Ray workers started by `ray start` inherit this shell's environment, not the driver's: verl
# imports these modules in every worker (registers the codistill estimator and teacher loss).
case ",${VERL_USE_EXTERNAL_MODULES:-}," in
  *,verl_ext.codistill,*) ;;
  *) export VERL_USE_EXTERNAL_MODULES="${VERL_USE_EXTERNAL_MODULES:+$VERL_USE_EXTERNAL_MODULES,}verl_ext.codistill" ;;
esac
entry=("$py" -m recipe.codistill_grpo.main_codistill "${hydra_args[@]}")

ray_bin="$(dirname "$py")/ray"
[[ -x "$ray_bin" ]] || ray_bin="ray"
ray_pids=()
ray_nodes=()
ray_head=""
ray_down() {
  [[ ${#ray_pids[@]} -gt 0 ]] || return 0
  say "stopping Ray on ${ray_nodes[*]}"
  kill "${ray_pids[@]}" 2>/dev/null || true
  wait "${ray_pids[@]}" 2>/dev/null || true
  ray_pids=()
}

ray_gpus() {  # GPUs the Ray cluster at $1 reports, 0 if it does not answer
  local n
  n=$("$ray_bin" status --address "$1" 2>/dev/null | sed -nE 's#.*/([0-9]+)(\.[0-9]+)? GPU.*#\1#p' | head -n 1) || true
  echo "${n:-0}"
}

ray_up() {  # head on the first node, one worker per other node, wait until all GPUs joined
  local hosts head head_ip port timeout poll expected joined deadline i
  mapfile -t hosts < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
  [[ ${#hosts[@]} -ge "$NODES" ]] || die "the allocation lists ${#hosts[@]} node(s) (${hosts[*]}) but the run needs $NODES"
  hosts=("${hosts[@]:0:$NODES}")
  head="${hosts[0]}"
  ray_head="$head"
  head_ip=$(srun --nodes=1 --ntasks=1 --overlap -w "$head" hostname --ip-address) || die "could not get the IP of head node $head"
  for i in $head_ip; do [[ "$i" =~ ^[0-9.]+$ ]] && { head_ip="$i"; break; }; done
  head_ip="${head_ip%% *}"
  port="$RAY_PORT" timeout="${CODISTILL_RAY_TIMEOUT_S:-$RAY_JOIN_TIMEOUT_S}" poll="${CODISTILL_RAY_POLL_S:-5}"
  local srun_extra=()
  read -r -a srun_extra <<<"$SRUN_EXTRA"
  local cpus="${SLURM_CPUS_PER_TASK:-$(nproc)}"
  export RAY_ADDRESS="$head_ip:$port"
  say "Ray head on $head ($RAY_ADDRESS), workers on: ${hosts[*]:1}"
  trap ray_down EXIT
  trap 'exit 143' TERM INT
  srun --nodes=1 --ntasks=1 --overlap "${srun_extra[@]}" -w "$head" \
    "$ray_bin" start --head --node-ip-address="$head_ip" --port="$port" \
    --num-gpus="$gpn" --num-cpus="$cpus" --block &
  ray_pids+=($!) ray_nodes+=("$head")
  deadline=$((SECONDS + timeout))
  until [[ "$(ray_gpus "$RAY_ADDRESS")" -gt 0 ]]; do  # workers need a running head to join
    kill -0 "${ray_pids[0]}" 2>/dev/null || die "Ray head on $head exited before it was up (see its output above)"
    [[ $SECONDS -lt $deadline ]] || die "Ray head on $head did not come up within ${timeout}s"
    sleep "$poll"
  done
  for node in "${hosts[@]:1}"; do
    srun --nodes=1 --ntasks=1 --overlap "${srun_extra[@]}" -w "$node" \
      "$ray_bin" start --address="$RAY_ADDRESS" --num-gpus="$gpn" --num-cpus="$cpus" --block &
    ray_pids+=($!) ray_nodes+=("$node")
  done
  expected=$((NODES * gpn))
  deadline=$((SECONDS + timeout))
  while :; do
    joined=$(ray_gpus "$RAY_ADDRESS")
    [[ "$joined" -ge "$expected" ]] && break
    for i in "${!ray_pids[@]}"; do
      kill -0 "${ray_pids[$i]}" 2>/dev/null || die "Ray on node ${ray_nodes[$i]} exited before the cluster was up (see its output above)"
    done
    [[ $SECONDS -lt $deadline ]] || die "Ray cluster: only $joined of $expected GPUs joined within ${timeout}s (nodes: ${hosts[*]})"
    sleep "$poll"
  done
  say "Ray cluster up: $joined GPUs on ${#hosts[@]} nodes"
}

if [[ "$mode" == allocation && "$NODES" -gt 1 ]]; then
  ray_up
  say "+ srun -w $ray_head ${entry[*]}"
  set +e
  srun --nodes=1 --ntasks=1 --overlap -w "$ray_head" "${entry[@]}"
  rc=$?
  set -e
else
  [[ "$mode" == allocation ]] && say "single-node allocation: no multi-node Ray bring-up (the recipe starts Ray locally)"
  say "+ ${entry[*]}"
  set +e
  "${entry[@]}"
  rc=$?
  set -e
fi
ray_down
[[ $rc -eq 0 ]] || die "the recipe exited with status $rc"
say "done: checkpoints in $CHECKPOINT_DIR, metrics in $METRICS_FILE"
