"""Model-pair and experiment YAMLs: every pair x experiment composes into overrides that the
recipe's hydra config accepts and resolves, with the model paths and flags the variants table
of ALGORITHM.md asks for; bad names and bad keys fail with one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts" / "lib"))
import compose  # noqa: E402

PAIRS = ["llama-3.2-1b_3.1-8b", "qwen2.5-math-1.5b_7b", "tiny"]
EXPS = ["codistill", "frozen_teacher", "grpo_large", "grpo_small", "kd_only", "no_is"]

# The variants table of /work/shared/ALGORITHM.md, written out by hand:
# (which pair model generates, is a large model loaded, does it train, kd.coef > 0, is.mode, task reward)
VARIANTS = {
    "codistill": ("small", True, True, True, "truncate", True),
    "grpo_small": ("small", False, None, False, None, True),
    "grpo_large": ("large", False, None, False, None, True),
    "frozen_teacher": ("small", True, False, True, None, True),
    "no_is": ("small", True, True, True, "none", True),
    "kd_only": ("small", True, True, True, None, False),
}
# Published model facts (config.json of each model): max_position_embeddings.
CONTEXT = {"qwen2.5-math-1.5b_7b": 4096, "llama-3.2-1b_3.1-8b": 131072}


def raw_pair(name: str) -> dict:
    with open(REPO / "configs" / "model_pairs" / f"{name}.yaml") as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module")
def resolved(tmp_path_factory):
    """(pair, exp) -> resolved hydra config, all 18 composed in this one process."""
    out = tmp_path_factory.mktemp("out")
    cfgs = {}
    for pair in PAIRS:
        for exp in EXPS:
            plan = compose.compose_plan(compose.Settings(pair=pair, exp=exp, nodes=2, gpus_per_node=8,
                                                         output_dir=str(out), data_dir=str(out / "data")))
            cfgs[pair, exp] = (plan, compose.resolve(plan.overrides))
    return cfgs


def test_all_names_present():
    assert compose.available("pair") == PAIRS
    assert compose.available("exp") == EXPS


@pytest.mark.parametrize("pair", PAIRS)
@pytest.mark.parametrize("exp", EXPS)
def test_pair_x_experiment_resolves_to_the_variant(resolved, pair, exp):
    plan, cfg = resolved[pair, exp]
    generator, loaded, trains, kd_on, is_mode, task_reward = VARIANTS[exp]
    models = raw_pair(pair)["models"]
    out = plan.settings.output_dir
    expect_actor = models[generator]["path"].replace("{output_dir}", out)
    cd = cfg.algorithm.codistill
    assert cfg.actor_rollout_ref.model.path == expect_actor
    assert cd.large.enable is loaded
    if loaded:
        assert cfg.large_actor.model.path == models["large"]["path"].replace("{output_dir}", out)
        assert cd.large.train is trains
    assert (cd.kd.coef > 0) is kd_on
    if is_mode is not None:
        assert cd["is"].mode == is_mode
    assert cd.task_reward is task_reward
    assert cfg.trainer.nnodes == 2 and cfg.trainer.n_gpus_per_node == 8
    assert cfg.trainer.default_local_dir == os.path.join(out, pair, exp, "checkpoints")
    # the generating model's rollout settings come from its own block (TP 2 for the large model)
    tp = models[generator].get("rollout", {}).get("tensor_model_parallel_size")
    assert cfg.actor_rollout_ref.rollout.tensor_model_parallel_size == tp


@pytest.mark.parametrize("pair", ["qwen2.5-math-1.5b_7b", "llama-3.2-1b_3.1-8b"])
def test_lengths_fit_the_context_and_batches_divide(resolved, pair):
    _, cfg = resolved[pair, "codistill"]
    assert cfg.data.max_prompt_length + cfg.data.max_response_length <= CONTEXT[pair]
    assert cfg.data.max_prompt_length + cfg.data.max_response_length == 4096
    responses = cfg.data.train_batch_size * cfg.actor_rollout_ref.rollout.n
    mini = cfg.actor_rollout_ref.actor.ppo_mini_batch_size * cfg.actor_rollout_ref.rollout.n
    for nodes in (1, 2, 4):
        dp = nodes * 8
        assert responses % dp == 0 and mini % dp == 0, nodes
        per_gpu = mini // dp
        assert per_gpu % cfg.actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu == 0
        assert per_gpu % cfg.large_actor.actor.ppo_micro_batch_size_per_gpu == 0
        assert (responses // dp) % cfg.large_actor.log_prob_micro_batch_size_per_gpu == 0


def test_real_model_names_and_templates(resolved):
    assert resolved["qwen2.5-math-1.5b_7b", "codistill"][1].actor_rollout_ref.model.path == "Qwen/Qwen2.5-Math-1.5B"
    assert resolved["qwen2.5-math-1.5b_7b", "codistill"][1].large_actor.model.path == "Qwen/Qwen2.5-Math-7B"
    assert resolved["llama-3.2-1b_3.1-8b", "codistill"][1].actor_rollout_ref.model.path == "meta-llama/Llama-3.2-1B-Instruct"
    assert resolved["llama-3.2-1b_3.1-8b", "codistill"][1].large_actor.model.path == "meta-llama/Llama-3.1-8B-Instruct"
    assert resolved["qwen2.5-math-1.5b_7b", "grpo_large"][1].actor_rollout_ref.model.path == "Qwen/Qwen2.5-Math-7B"
    assert raw_pair("qwen2.5-math-1.5b_7b")["template"] == "qwen_math"
    assert raw_pair("llama-3.2-1b_3.1-8b")["template"] == "llama_instruct"


def test_templates_are_known_to_prepare_data():
    """The pair's template key is one of prepare_data.py's templates (configs/prompt_templates.yaml)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("prepare_data", REPO / "scripts" / "prepare_data.py")
    prepare_data = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prepare_data)
    templates = prepare_data.load_templates()
    for pair in PAIRS:
        assert raw_pair(pair)["template"] in templates, pair
        assert f"--template {raw_pair(pair)['template']}" in raw_pair(pair)["data"]["prepare"] or pair == "tiny"


def test_user_overrides_replace_yaml_values_once():
    plan = compose.compose_plan(compose.Settings(
        pair="qwen2.5-math-1.5b_7b", exp="codistill",
        user_overrides=["data.train_batch_size=32", "algorithm.codistill.kd.coef=0.5", "+trainer.foo='a b'"]))
    keys = [o.split("=", 1)[0] for o in plan.overrides]
    assert len(keys) == len(set(keys))
    assert "data.train_batch_size=32" in plan.overrides and "data.train_batch_size=128" not in plan.overrides
    assert plan.overrides[-3:] == ["data.train_batch_size=32", "algorithm.codistill.kd.coef=0.5", "+trainer.foo='a b'"]
    cfg = compose.resolve(plan.overrides)
    assert cfg.data.train_batch_size == 32
    assert cfg.algorithm.codistill.kd.coef == 0.5
    assert cfg.trainer.foo == "a b"


def test_format_value_survives_hydra():
    """Values that need quoting come back from hydra unchanged."""
    values = {"a": "Qwen/Qwen2.5-Math-1.5B", "b": "/tmp/x y,z=1", "c": "true", "d": "it's", "e": [1, "x"],
              "f": 1e-06, "g": None, "h": False}
    overrides = [f"+codistill_probe.{k}={compose.format_value(v)}" for k, v in values.items()]
    plan = compose.compose_plan(compose.Settings(pair="tiny", exp="codistill"))
    cfg = compose.resolve(plan.overrides + overrides)
    from omegaconf import OmegaConf

    assert OmegaConf.to_container(cfg.codistill_probe) == values


def test_bad_codistill_value_names_the_key():
    plan = compose.compose_plan(compose.Settings(pair="tiny", exp="codistill",
                                                 user_overrides=["algorithm.codistill.is.level=foo"]))
    with pytest.raises(ValueError, match=r"algorithm\.codistill\.is\.level.*foo"):
        compose.resolve(plan.overrides)


def test_unknown_names_list_the_available_ones():
    with pytest.raises(compose.PlanError, match="unknown model pair 'gpt'; available: llama-3.2-1b_3.1-8b, qwen2.5-math-1.5b_7b, tiny"):
        compose.compose_plan(compose.Settings(pair="gpt"))
    with pytest.raises(compose.PlanError, match="unknown experiment 'ppo'; available: codistill, frozen_teacher, grpo_large"):
        compose.compose_plan(compose.Settings(exp="ppo"))


def test_bad_yaml_keys_fail_with_one_line(tmp_path, monkeypatch):
    (tmp_path / "model_pairs").mkdir()
    (tmp_path / "experiments").mkdir()
    pair = raw_pair("tiny")
    pair["models"]["small"]["optimizer"] = {"lr": 1}
    (tmp_path / "model_pairs" / "p.yaml").write_text(yaml.safe_dump(pair))
    (tmp_path / "experiments" / "e.yaml").write_text("generator: small\nteacher: huge\n")
    (tmp_path / "experiments" / "f.yaml").write_text("generator: small\nteachr: large\n")
    monkeypatch.setattr(compose, "CONFIGS", tmp_path)
    with pytest.raises(compose.PlanError, match=r"models\.small: unknown key 'optimizer'"):
        compose.compose_plan(compose.Settings(pair="p", exp="e"))
    with pytest.raises(compose.PlanError, match="experiments/f.yaml: unknown key 'teachr'"):
        compose.compose_plan(compose.Settings(pair="p", exp="f"))
    pair["models"]["small"].pop("optimizer")
    (tmp_path / "model_pairs" / "p.yaml").write_text(yaml.safe_dump(pair))
    with pytest.raises(compose.PlanError, match="teacher 'huge' is not a model of"):
        compose.compose_plan(compose.Settings(pair="p", exp="e"))


def test_compose_api_matches_the_entry_points_print_config(tmp_path):
    """compose.resolve (hydra compose API) gives what `main_codistill --cfg job --resolve` prints."""
    plan = compose.compose_plan(compose.Settings(pair="qwen2.5-math-1.5b_7b", exp="frozen_teacher", nodes=2,
                                                 output_dir=str(tmp_path)))
    ours = compose.resolve(plan.overrides)
    out = subprocess.run([sys.executable, "-m", compose.ENTRY_MODULE, "--cfg", "job", "--resolve", *plan.overrides],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    theirs = yaml.safe_load(out.stdout)
    from omegaconf import OmegaConf

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
    with pytest.raises(compose.PlanError, match=f"generator model directory {local} has no config.json"):
        compose.check_model(str(local), "generator")
    (local / "config.json").write_text("{}")
    assert compose.check_model(str(local), "generator") == "local dir"
    snap = hub_env / "hf" / "hub" / "models--Qwen--Qwen2.5-Math-7B" / "snapshots" / "0123"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert compose.check_model("Qwen/Qwen2.5-Math-7B", "teacher") == "HF cache"
    with pytest.raises(compose.PlanError, match=r"teacher model Qwen/Qwen2\.5-Math-1\.5B is not a local dir and not in the HF cache .* and HF_HUB_OFFLINE=1"):
        compose.check_model("Qwen/Qwen2.5-Math-1.5B", "teacher")
    with pytest.raises(compose.PlanError, match="generator model path ./nowhere does not exist"):
        compose.check_model("./nowhere", "generator")


def test_model_from_the_hub(hub_env, monkeypatch):
    hub = _FakeHub({"Qwen/Qwen2.5-Math-1.5B": {"id": "Qwen/Qwen2.5-Math-1.5B", "gated": False},
                    "meta-llama/Llama-3.1-8B-Instruct": {"id": "meta-llama/Llama-3.1-8B-Instruct", "gated": "manual"}})
    try:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        assert compose.check_model("Qwen/Qwen2.5-Math-1.5B", "generator") == "hub (downloaded at start-up)"
        with pytest.raises(compose.PlanError, match="Llama-3.1-8B-Instruct is gated on the hub: accept its license"):
            compose.check_model("meta-llama/Llama-3.1-8B-Instruct", "teacher")
        monkeypatch.setenv("HF_TOKEN", "hf_secret")
        assert compose.check_model("meta-llama/Llama-3.1-8B-Instruct", "teacher") == "hub (downloaded at start-up)"
        assert hub.auth[-1] == "Bearer hf_secret"
        with pytest.raises(compose.PlanError, match=r"the hub \(http://127\.0\.0\.1:\d+\) answered 404; check the name"):
            compose.check_model("Qwen/Qwen9-Math", "generator")
    finally:
        hub.close()
    monkeypatch.setenv("HF_ENDPOINT", hub.url)  # closed now: nothing listens
    with pytest.raises(compose.PlanError, match=r"not in the HF cache .* and the hub \(http://127\.0\.0\.1:\d+\) is unreachable"):
        compose.check_model("Qwen/Qwen2.5-Math-1.5B", "generator")
