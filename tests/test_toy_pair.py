"""The toy task and the warmed-up toy pair (recipe/codistill_grpo/cpu/toy_pair.py).

Model builds here use a few warm-up steps (``QUICK``); the shipped pair's facts are recomputed
independently of ``toy_pair.toy_facts`` (a hand-written greedy loop, exact operator probabilities).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from recipe.codistill_grpo.cpu import toy_pair
from recipe.codistill_grpo.evaluation import evaluate_frame
from verl_ext.reward.math_reward import compute_score

REPO = Path(__file__).resolve().parents[1]
QUICK = {"small": {"steps": 6}, "large": {"steps": 3}}
QUESTION = re.compile(r"^What is (\d+) \+ (\d+)\?$")


def quick_build(out, **kw):
    return toy_pair.build_toy_pair(out, overrides=kw.pop("overrides", QUICK), evaluate=False, shipped=None, **kw)


def digits_ok(a: int, b: int, n: int) -> bool:
    """The task's rule, written out: n digits each, aligned a_i >= b_i, a_i + b_i <= 9, a_0 > b_0 >= 1."""
    sa, sb = str(a), str(b)
    if len(sa) != n or len(sb) != n:
        return False
    pairs = [(int(x), int(y)) for x, y in zip(sa, sb)]
    return pairs[0][0] > pairs[0][1] >= 1 and all(x >= y and x + y <= 9 for x, y in pairs)


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    """Data and tokenizer at the real settings (no model: ``models=()``)."""
    return toy_pair.build_toy_pair(tmp_path_factory.mktemp("toy_data"), models=())


def test_real_settings_data(toy_data):
    train, test = pd.read_parquet(toy_data["train"]), pd.read_parquet(toy_data["test"])
    for frame, split in ((train, "train"), (test, "test")):
        assert list(frame.columns) == ["data_source", "prompt", "ability", "reward_model", "extra_info"]
        assert [e["index"] for e in frame["extra_info"]] == list(range(len(frame)))
        assert {e["split"] for e in frame["extra_info"]} == {split}
        assert set(frame["ability"]) == {"math"} and set(frame["data_source"]) == {"toy_arith"}
        assert all(len(p) == 1 and p[0]["role"] == "user" for p in frame["prompt"])
        questions = [p[0]["content"] for p in frame["prompt"]]
        assert len(set(questions)) == len(questions)
        for q, rm, extra in zip(questions, frame["reward_model"], frame["extra_info"]):
            a, b = map(int, QUESTION.match(q).groups())
            assert digits_ok(a, b, extra["difficulty"]), q
            assert rm["style"] == "rule" and rm["ground_truth"] == str(a + b)
            assert extra["response"] == f"{a} + {b} = \\boxed{{{a + b}}}"
            assert extra["slip"] == f"{a} - {b} = \\boxed{{{a - b}}}"
    test_ops = {tuple(map(int, QUESTION.match(p[0]["content"]).groups())) for p in test["prompt"]}
    train_ops = {tuple(map(int, QUESTION.match(p[0]["content"]).groups())) for p in train["prompt"]}
    assert not test_ops & train_ops  # operand pairs never seen in training
    levels = pd.Series([e["difficulty"] for e in test["extra_info"]]).value_counts().to_dict()
    assert levels == {2: 64, 3: 64, 4: 64}
    # level 2 has 16 x 30 = 480 questions (counted here by brute force): 64 test, the other 416 train
    assert sum(digits_ok(a, b, 2) for a in range(10, 100) for b in range(10, 100)) == 480
    assert sum(e["difficulty"] == 2 for e in train["extra_info"]) == 416
    assert len(train) == 416 + 2 * 1024


def test_prompts_and_answers_are_short_with_the_tokenizer_from_disk(toy_data):
    tok = AutoTokenizer.from_pretrained(toy_data["tokenizer"])
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    for path in (toy_data["train"], toy_data["test"]):
        frame = pd.read_parquet(path)
        prompts = [
            tok.apply_chat_template([dict(m) for m in p], add_generation_prompt=True, tokenize=False)
            for p in frame["prompt"]
        ]
        assert max(len(tok(t, add_special_tokens=False)["input_ids"]) for t in prompts) <= 32
        for key in ("response", "slip"):
            answers = [e[key] for e in frame["extra_info"]]
            assert max(len(tok(a, add_special_tokens=False)["input_ids"] + [eos]) for a in answers) <= 24
        # the warm-up's correct target is what the reward wants, the slip is not
        for extra, rm in list(zip(frame["extra_info"], frame["reward_model"]))[:20]:
            assert compute_score("toy_arith", extra["response"], rm["ground_truth"], {})["score"] == 1.0
            assert compute_score("toy_arith", extra["slip"], rm["ground_truth"], {})["score"] == 0.0


# written out by hand: (operands, question, correct response, operator slip)
HAND = [
    ((41, 30), "What is 41 + 30?", "41 + 30 = \\boxed{71}", "41 - 30 = \\boxed{11}"),
    ((412, 305), "What is 412 + 305?", "412 + 305 = \\boxed{717}", "412 - 305 = \\boxed{107}"),
    ((5040, 1030), "What is 5040 + 1030?", "5040 + 1030 = \\boxed{6070}", "5040 - 1030 = \\boxed{4010}"),
    ((9000, 1000), "What is 9000 + 1000?", "9000 + 1000 = \\boxed{10000}", "9000 - 1000 = \\boxed{8000}"),
]


@pytest.mark.parametrize("problem,asked,right,slip", HAND)
def test_grader_agrees_with_hand_computed_answers(problem, asked, right, slip):
    assert toy_pair.question(problem) == asked
    assert toy_pair.response(problem) == right and toy_pair.response(problem, "-") == slip
    answer = right.split("{")[1].rstrip("}")
    assert compute_score("toy_arith", right, answer, {})["score"] == 1.0
    assert compute_score("toy_arith", slip, answer, {})["score"] == 0.0
    assert compute_score("toy_arith", answer, answer, {})["score"] == 0.0  # unboxed
    assert toy_pair.procedure_of(right, f"{problem[0]} + {problem[1]}") == "+"
    assert toy_pair.procedure_of(slip, f"{problem[0]} + {problem[1]}") == "-"
    assert toy_pair.procedure_of(slip, f"{problem[0]} + {problem[1] + 1}") is None


def test_level_problems_enumerate_every_question_once():
    """level_problem(level, i) over all i lists the brute-force set of level 2 exactly."""
    brute = {(a, b) for a in range(10, 100) for b in range(10, 100) if digits_ok(a, b, 2)}
    listed = [toy_pair.level_problem(2, i) for i in range(toy_pair.level_size(2))]
    assert len(listed) == len(set(listed)) == len(brute) and set(listed) == brute
    assert toy_pair.level_size(4) == 16 * 30**3
    assert all(digits_ok(*toy_pair.level_problem(4, i), 4) for i in range(0, 16 * 30**3, 997))


def test_tokenizer_used_for_training_is_the_one_loaded_from_the_model_folder(tmp_path, monkeypatch):
    seen = {}
    real = toy_pair.train_model

    def spy(spec, tokenizer, examples, **kw):
        seen.setdefault("tokenizer", tokenizer)
        seen.setdefault("examples", examples)
        return real(spec, tokenizer, examples, **kw)

    monkeypatch.setattr(toy_pair, "train_model", spy)
    paths = quick_build(tmp_path / "toy", models=("small",))
    trained_with = seen["tokenizer"]
    loaded = AutoTokenizer.from_pretrained(paths["small"])  # what verl does
    assert type(trained_with) is type(loaded) and type(loaded).__name__ == "Qwen2Tokenizer"
    assert trained_with.get_vocab() == loaded.get_vocab()
    train = pd.read_parquet(paths["train"])
    eos = loaded.convert_tokens_to_ids("<|im_end|>")
    for i in range(0, len(train), 97):
        messages = [dict(m) for m in train["prompt"].iloc[i]]
        rendered = loaded.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert rendered == trained_with.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert rendered.endswith("<|im_start|>assistant\n")
        prompt_ids = loaded(rendered, add_special_tokens=False)["input_ids"]
        extra = train["extra_info"].iloc[i]
        right, slip = (loaded(extra[k], add_special_tokens=False)["input_ids"] + [eos] for k in ("response", "slip"))
        assert seen["examples"][i] == (prompt_ids, right, slip, [2, 3, 4].index(extra["difficulty"]))
    for text in ("What is 53 + 12?", "\\boxed{-45}", "x\n\ny 1234567 <|im_end|>"):
        assert trained_with(text)["input_ids"] == loaded(text)["input_ids"]
    assert loaded.tokenize("53") == ["5", "3"]
    assert len(loaded.encode("\n", add_special_tokens=False)) == 1
    assert (loaded.eos_token, loaded.pad_token) == ("<|im_end|>", "<|endoftext|>")


def test_same_settings_same_data_and_weights(tmp_path):
    a = quick_build(tmp_path / "a", models=("small",))
    b = quick_build(tmp_path / "b", models=("small",))
    c = quick_build(tmp_path / "c", models=("small",), seed=1)
    for split in ("train", "test"):
        assert Path(a[split]).read_bytes() == Path(b[split]).read_bytes()
        assert not pd.read_parquet(a[split]).equals(pd.read_parquet(c[split]))
    weights = {k: (Path(v["small"]) / "model.safetensors").read_bytes() for k, v in (("a", a), ("b", b), ("c", c))}
    assert weights["a"] == weights["b"]
    assert weights["a"] != weights["c"]


def test_pair_shapes_and_shared_tokenizer(tmp_path):
    from verl_ext.codistill.tokenizer_check import assert_shared_tokenizer

    paths = quick_build(tmp_path / "toy")
    small, large = AutoConfig.from_pretrained(paths["small"]), AutoConfig.from_pretrained(paths["large"])
    tok = AutoTokenizer.from_pretrained(paths["small"])
    assert small.model_type == large.model_type == "qwen2"
    assert small.hidden_size < large.hidden_size
    assert small.vocab_size != large.vocab_size and min(small.vocab_size, large.vocab_size) >= len(tok)
    assert small.eos_token_id == large.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    for cfg in (small, large):  # a head size vLLM's CPU attention supports
        assert cfg.hidden_size // cfg.num_attention_heads == 32
    assert_shared_tokenizer(paths["small"], paths["large"])


def test_cache_reuses_what_did_not_change(tmp_path, monkeypatch):
    calls = []
    real = toy_pair.train_model

    def counting(spec, tokenizer, examples, name="model", **kw):
        calls.append(name)
        return real(spec, tokenizer, examples, name=name, **kw)

    monkeypatch.setattr(toy_pair, "train_model", counting)
    out = tmp_path / "toy"
    first = quick_build(out, models=("small",))
    assert calls == ["small"] and set(first["trained"]) == {"small"}
    assert not (out / "models" / "large").exists()  # asked only for the small model

    files = [out / "models" / "small" / "model.safetensors", out / "build.json", Path(first["train"])]
    stamps = [f.stat().st_mtime_ns for f in files]
    again = quick_build(out, models=("small",))
    assert calls == ["small"] and again["trained"] == {}
    assert [f.stat().st_mtime_ns for f in files] == stamps

    both = quick_build(out)  # the large model is new, the small one is reused
    assert calls == ["small", "large"] and set(both["trained"]) == {"large"}
    key_before = json.loads((out / "build.json").read_text())["key"]
    large_stamp = (out / "models" / "large" / "model.safetensors").stat().st_mtime_ns

    changed = quick_build(out, overrides={**QUICK, "small": {"steps": 7}})
    assert calls == ["small", "large", "small"] and set(changed["trained"]) == {"small"}
    assert (out / "models" / "large" / "model.safetensors").stat().st_mtime_ns == large_stamp
    build = json.loads((out / "build.json").read_text())
    assert build["settings"]["models"]["small"]["steps"] == 7
    assert build["models"]["small"]["settings"]["steps"] == 7 and build["models"]["large"]["settings"]["steps"] == 3
    assert build["key"] != key_before

    with pytest.raises(ValueError, match="unknown setting"):
        quick_build(out, overrides={"small": {"stepz": 1}})


def test_cli_copies_the_shipped_weights_then_reuses_them(tmp_path, capsys):
    out = tmp_path / "toy"
    assert toy_pair.main(["--out", str(out), "--models", "small", "--no-eval"]) == 0
    printed = capsys.readouterr().out
    assert f"small: {out / 'models' / 'small'}" in printed and "shipped weights: small" in printed
    assert "large:" not in printed and "trained" not in printed
    shipped = json.loads((out / "models" / "small" / "toy_build.json").read_text())["key"]
    sums = (toy_pair.SHIPPED / shipped / "SHA256SUMS").read_text()
    digest = hashlib.sha256((out / "models" / "small" / "model.safetensors").read_bytes()).hexdigest()
    assert f"{digest}  model.safetensors" in sums
    assert toy_pair.main(["--out", str(out), "--models", "small"]) == 0
    assert "cached: nothing trained" in capsys.readouterr().out


def test_damaged_shipped_weights_are_refused(tmp_path):
    shipped = tmp_path / "shipped"
    built = quick_build(tmp_path / "a", models=("small",))
    toy_pair.ship(Path(built["small"]).parents[1], shipped)
    (key,) = [d.name for d in shipped.iterdir()]
    weights = shipped / key / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"x")
    with pytest.raises(RuntimeError, match="does not match its SHA256SUMS"):
        toy_pair.build_toy_pair(tmp_path / "b", models=("small",), overrides=QUICK, evaluate=False, shipped=shipped)


@pytest.mark.slow
def test_platform_cpu_builds_the_toy_pair_with_the_yaml_settings(tmp_path):
    """pair.cpu.build (here a teacher quality and short warm-ups) reaches the builder through run.cpu_pair."""
    from omegaconf import OmegaConf

    from recipe.codistill_grpo.configuration import compose_config, resolved
    from recipe.codistill_grpo.cpu.stand_in import ensure_cpu_pair

    cfg = resolved(
        compose_config(
            "toy",
            "grpo_small",
            [
                "pair.cpu.build.models.large.procedure=[0.9,0.9,0.9]",
                "+pair.cpu.build.models.small.steps=3",
                "+pair.cpu.build.models.large.steps=5",
            ],
            platform="cpu",
        )
    )
    settings = OmegaConf.to_container(cfg.run.cpu_pair.settings)
    assert settings == {
        "data": {},
        "models": {
            "small": {"procedure": [0.6, 0.35, 0.2], "steps": 3},
            "large": {"procedure": [0.9, 0.9, 0.9], "steps": 5},
        },
    }
    ensure_cpu_pair("toy", tmp_path, ("small", "large"), settings)
    build = json.loads((tmp_path / "build.json").read_text())
    assert build["settings"]["models"]["large"]["procedure"] == [0.9, 0.9, 0.9]
    assert build["models"]["small"]["settings"]["steps"] == 3 and build["models"]["large"]["settings"]["steps"] == 5


def test_each_toy_pair_has_its_own_folder_and_teacher():
    from recipe.codistill_grpo.configuration import compose_config, resolved

    toy, strong = (resolved(compose_config(p, "codistill", platform="cpu")) for p in ("toy", "toy_strong"))
    assert toy.run.cpu_pair.dir != strong.run.cpu_pair.dir
    assert strong.actor_rollout_ref.model.path.startswith(strong.run.cpu_pair.dir)
    assert strong.large_actor.model.path.startswith(strong.run.cpu_pair.dir)
    assert toy.run.cpu_pair.settings.models.large.procedure == [0.85, 0.75, 0.65]
    assert strong.run.cpu_pair.settings.models.large.procedure == [0.95, 0.95, 0.95]
    assert toy.run.cpu_pair.settings.models.small == strong.run.cpu_pair.settings.models.small
    assert toy.actor_rollout_ref.actor.optim.lr == strong.actor_rollout_ref.actor.optim.lr


def test_stand_in_cli_builds_a_pair_with_its_yaml_settings(tmp_path, monkeypatch):
    """`stand_in --pair toy` (what reproduce_paper and pair.prepare run) hands the builder the settings
    written in configs/pair/toy.yaml, read here straight from the file; --kind uses the defaults."""

    from recipe.codistill_grpo.cpu import stand_in, toy_pair

    calls = []
    monkeypatch.setattr(
        toy_pair,
        "build_toy_pair",
        lambda folder, models, data, overrides: calls.append((str(folder), models, data, overrides)),
    )
    written = yaml.safe_load((REPO / "configs" / "pair" / "toy.yaml").read_text())["pair"]["cpu"]["build"]
    assert stand_in.main(["--pair", "toy", "--out", str(tmp_path / "a"), "--models", "small"]) == 0
    assert stand_in.main(["--kind", "toy", "--out", str(tmp_path / "b")]) == 0
    assert calls == [
        (str(tmp_path / "a"), ("small",), written["data"], written["models"]),
        (str(tmp_path / "b"), ("small", "large"), None, None),
    ]


def _greedy_by_hand(model, tok, frame, max_new: int = 24) -> list[str]:
    """Greedy decoding written out: argmax of the last position, one full forward per token, no
    padding (every question of a level has the same prompt length), stop at EOS."""
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    prompts = [
        tok.apply_chat_template([dict(m) for m in p], add_generation_prompt=True, tokenize=False)
        for p in frame["prompt"]
    ]
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in prompts]
    out: list[str] = [""] * len(ids)
    for length in sorted({len(x) for x in ids}):
        rows = [i for i, x in enumerate(ids) if len(x) == length]
        seq = torch.tensor([ids[i] for i in rows])
        done = torch.zeros(len(rows), dtype=torch.bool)
        new = []
        with torch.no_grad():
            for _ in range(max_new):
                nxt = model(input_ids=seq).logits[:, -1].argmax(-1)
                nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
                new.append(nxt)
                done |= nxt == eos
                seq = torch.cat([seq, nxt[:, None]], dim=1)
                if done.all():
                    break
        for r, i in enumerate(rows):
            tokens = [int(t[r]) for t in new]
            out[i] = tok.decode(tokens[: tokens.index(eos)] if eos in tokens else tokens)
    return out


def _plus_probability(model, tok, frame) -> list[float]:
    """P(the operator token is ' +' | prompt, the first operand restated): the exact correct-procedure rate."""
    plus, minus = tok.convert_tokens_to_ids("Ġ+"), tok.convert_tokens_to_ids("Ġ-")
    probs = []
    with torch.no_grad():
        for p, extra in zip(frame["prompt"], frame["extra_info"]):
            text = tok.apply_chat_template([dict(m) for m in p], add_generation_prompt=True, tokenize=False)
            text += extra["expression"].split(" + ")[0]
            ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
            logp = torch.log_softmax(model(input_ids=ids).logits[0, -1].double(), -1)
            probs.append(float(logp[plus].exp()))
            assert float(logp[plus].exp() + logp[minus].exp()) > 0.95  # the operator slot holds + or -
    return probs


@pytest.mark.parametrize("pair", ["toy", "toy_strong"])
def test_shipped_pair_facts_recomputed_independently(pair, tmp_path):
    """The base facts written in the pair's YAML (pair.cpu.base) against a greedy loop written here
    and the exact operator probabilities; and the headroom the issue asks of them."""
    from recipe.codistill_grpo.configuration import compose_config, resolved

    cfg = resolved(compose_config(pair, "codistill", platform="cpu"))
    from omegaconf import OmegaConf

    settings = OmegaConf.to_container(cfg.run.cpu_pair.settings)
    paths = toy_pair.build_toy_pair(tmp_path, data=settings["data"], overrides=settings["models"], evaluate=False)
    assert paths["trained"] == {} and sorted(paths["shipped"]) == ["large", "small"]  # the same weights everywhere
    written = OmegaConf.to_container(cfg.pair.cpu.base)
    test = pd.read_parquet(paths["test"])
    golds = [int(r["ground_truth"]) for r in test["reward_model"]]
    facts = {}
    for role in ("small", "large"):
        tok = AutoTokenizer.from_pretrained(paths[role])
        model = AutoModelForCausalLM.from_pretrained(paths[role], dtype=torch.float32).eval()
        answers = _greedy_by_hand(model, tok, test)
        boxed = [re.search(r"\\boxed\{(-?\d+)\}\s*$", a) for a in answers]
        greedy = sum(m is not None and int(m.group(1)) == g for m, g in zip(boxed, golds)) / len(golds)
        procedure = sum(_plus_probability(model, tok, test)) / len(test)
        facts[role] = (greedy, procedure)
        # the project's evaluator (batched, left-padded generate + the math reward) against the loop written here
        evaluated = evaluate_frame(model, tok, test, max_tokens=24, batch_size=64)
        differ = sum(r[0] != a for r, a in zip(evaluated.responses, answers))
        assert differ <= 1 and evaluated.mean == pytest.approx(greedy, abs=1 / 192 + 1e-9), (role, differ)
        assert greedy == pytest.approx(written[role]["greedy"], abs=1 / 192 + 1e-9), (role, greedy)
        # 1536 samples: the sampled rate is within 4 standard errors (<= 0.051) of the exact one
        assert abs(procedure - written[role]["procedure"]) < 0.051, (role, procedure, written[role])
    small, large = written["small"], written["large"]
    assert 0.10 <= facts["small"][0] <= 0.35 and small["pass@8"] >= 2 * small["greedy"]
    assert facts["large"][0] >= facts["small"][0] + 0.25
    assert facts["large"][1] > facts["small"][1] + 0.2  # the teacher picks the right operator more often
    if pair == "toy":  # a teacher only somewhat better: its own GRPO and CoDistill can still gain
        assert large["mean@8"] < 0.90
    else:  # a much better teacher
        assert facts["large"][1] > 0.9
