"""The toy task and the warmed-up toy pair (recipe/codistill_grpo/cpu/toy_pair.py).

Model builds here use a few warm-up steps (``QUICK``), except the one test of the real small
model, which also runs the CLI and ``scripts/evaluate.py`` on it.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pandas as pd
import pytest
from transformers import AutoConfig, AutoTokenizer

from recipe.codistill_grpo.cpu import toy_pair
from verl_ext.reward.math_reward import compute_score

REPO = Path(__file__).resolve().parents[1]
QUICK = {"small": {"steps": 6}, "large": {"steps": 3}}
EXPRESSION = re.compile(r"^What is (\d+(?: [+-] \d+)+)\?$")


def quick_build(out, **kw):
    return toy_pair.build_toy_pair(out, overrides=kw.pop("overrides", QUICK), evaluate=False, **kw)


def by_hand(expression: str) -> int:
    """Left-to-right + and - on the expression's integers (independent of toy_pair)."""
    tokens = expression.split()
    value = int(tokens[0])
    for op, number in zip(tokens[1::2], tokens[2::2]):
        assert op in "+-"
        value = value + int(number) if op == "+" else value - int(number)
    return value


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
        questions = [p[0]["content"] for p in frame["prompt"]]
        assert all(len(p) == 1 and p[0]["role"] == "user" for p in frame["prompt"])
        assert len(set(questions)) == len(questions)
        for q, rm, extra in zip(questions, frame["reward_model"], frame["extra_info"]):
            expression = EXPRESSION.match(q).group(1)
            numbers = [int(x) for x in expression.split()[::2]]
            assert rm["style"] == "rule" and rm["ground_truth"] == str(by_hand(expression))
            two_digit = sum(n >= 10 for n in numbers)
            shape = {1: (2, 0), 2: (2, 1), 3: (2, 2), 4: (3, 0)}[extra["difficulty"]]
            assert (len(numbers), two_digit) == shape, (q, extra["difficulty"])
            assert all(0 <= n <= 99 for n in numbers)
    assert len(test) >= 200
    assert not set(p[0]["content"] for p in train["prompt"]) & set(p[0]["content"] for p in test["prompt"])
    assert sorted({e["difficulty"] for e in test["extra_info"]}) == [1, 2, 3, 4]
    assert min(pd.Series([e["difficulty"] for e in test["extra_info"]]).value_counts()) >= 40
    assert len(train) >= 2000


def test_prompts_and_answers_are_short_with_the_tokenizer_from_disk(toy_data):
    tok = AutoTokenizer.from_pretrained(toy_data["tokenizer"])
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    for path in (toy_data["train"], toy_data["test"]):
        frame = pd.read_parquet(path)
        prompts = [tok.apply_chat_template([dict(m) for m in p], add_generation_prompt=True, tokenize=False) for p in frame["prompt"]]
        assert max(len(tok(t, add_special_tokens=False)["input_ids"]) for t in prompts) <= 64
        answers = [e["response"] for e in frame["extra_info"]]
        assert max(len(tok(a, add_special_tokens=False)["input_ids"] + [eos]) for a in answers) <= 24
        # the warm-up target is what the reward wants
        for answer, rm in list(zip(answers, frame["reward_model"]))[:20]:
            assert compute_score("toy_arith", answer, rm["ground_truth"], {})["score"] == 1.0


# written out by hand: (question as asked, right answer)
HAND = [
    ((7, "+", 8), "What is 7 + 8?", "15"),
    ((3, "-", 9), "What is 3 - 9?", "-6"),
    ((53, "+", 12), "What is 53 + 12?", "65"),
    ((40, "-", 85), "What is 40 - 85?", "-45"),
    ((99, "+", 99), "What is 99 + 99?", "198"),
    ((6, "+", 70), "What is 6 + 70?", "76"),
    ((10, "-", 10), "What is 10 - 10?", "0"),
    ((5, "-", 7, "+", 3), "What is 5 - 7 + 3?", "1"),
    ((9, "+", 9, "-", 0), "What is 9 + 9 - 0?", "18"),
    ((0, "-", 9, "-", 9), "What is 0 - 9 - 9?", "-18"),
]


@pytest.mark.parametrize("problem,asked,answer", HAND)
def test_grader_agrees_with_hand_computed_answers(problem, asked, answer):
    assert toy_pair.question(problem) == asked
    assert toy_pair.problem_answer(problem) == int(answer)
    target = toy_pair.response(problem)
    assert target == f"\\boxed{{{answer}}}"
    assert compute_score("toy_arith", target, answer, {})["score"] == 1.0
    assert compute_score("toy_arith", f"so {problem[0]} ... = \\boxed{{{answer}}}", answer, {})["score"] == 1.0
    assert compute_score("toy_arith", f"\\boxed{{{int(answer) + 1}}}", answer, {})["score"] == 0.0
    assert compute_score("toy_arith", f"\\boxed{{{-int(answer) - 10}}}", answer, {})["score"] == 0.0
    assert compute_score("toy_arith", answer, answer, {})["score"] == 0.0  # unboxed


def test_data_rows_of_hand_problems_are_graded_right(toy_data):
    """Every hand problem that landed in a split has the hand answer as its ground truth."""
    rows = pd.concat([pd.read_parquet(toy_data["train"]), pd.read_parquet(toy_data["test"])])
    truth = {p[0]["content"]: rm["ground_truth"] for p, rm in zip(rows["prompt"], rows["reward_model"])}
    found = [(asked, answer) for _, asked, answer in HAND if asked in truth]
    assert len(found) >= 2  # level 1 has only 200 questions, all in train or test
    assert all(truth[asked] == answer for asked, answer in found)


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
        answer_ids = loaded(train["extra_info"].iloc[i]["response"], add_special_tokens=False)["input_ids"] + [eos]
        assert seen["examples"][i] == (prompt_ids, answer_ids)
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


def _evaluate_script():
    spec = importlib.util.spec_from_file_location("evaluate_script", REPO / "scripts" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_real_small_model_via_cli_is_partly_competent(tmp_path, capsys):
    """The real small model (default settings, built by the CLI) answers some but not most test questions."""
    out = tmp_path / "toy"
    assert toy_pair.main(["--out", str(out), "--models", "small", "--no-eval"]) == 0
    printed = capsys.readouterr().out
    assert f"small: {out / 'models' / 'small'}" in printed and "trained: small" in printed
    assert "large:" not in printed
    assert toy_pair.main(["--out", str(out), "--models", "small"]) == 0
    assert "cached: nothing trained" in capsys.readouterr().out

    evaluate = _evaluate_script()
    rc = evaluate.main(["--backend", "hf", "--checkpoint", str(out / "models" / "small"), "--data-dir", str(out / "data"),
                        "--suites", "test", "--out", str(tmp_path / "res"), "--max-tokens", "24", "--batch-size", "64",
                        "--reward-workers", "1", "--no-progress"])
    assert rc == 0
    result = json.loads((tmp_path / "res" / "small" / "test.json").read_text())
    assert result["aggregate"]["n_items"] >= 200 and result["aggregate"]["format_rate"] > 0.9
    assert 0.15 <= result["aggregate"]["accuracy"] <= 0.45, result["aggregate"]


def test_platform_cpu_builds_the_toy_pair_with_the_yaml_settings(tmp_path):
    """pair.cpu.build (here a data setting and short warm-ups) reaches the builder through run.cpu_pair."""
    import json

    from omegaconf import OmegaConf

    from recipe.codistill_grpo.configuration import compose_config, resolved
    from recipe.codistill_grpo.cpu.stand_in import ensure_cpu_pair

    cfg = resolved(compose_config("toy", "grpo_small", ["pair.cpu.build.data.echo=true",
                                                        "pair.cpu.build.models.small.steps=3",
                                                        "pair.cpu.build.models.large.steps=5"], platform="cpu"))
    settings = OmegaConf.to_container(cfg.run.cpu_pair.settings)
    assert settings == {"data": {"echo": True}, "models": {"small": {"steps": 3}, "large": {"steps": 5}}}
    ensure_cpu_pair("toy", tmp_path, ("small",), settings)
    build = json.loads((tmp_path / "build.json").read_text())
    assert build["settings"]["data"]["echo"] is True and build["settings"]["models"]["small"]["steps"] == 3
    import pandas as pd

    row = pd.read_parquet(tmp_path / "data" / "test.parquet").iloc[0]
    assert row["extra_info"]["response"].endswith("= \\boxed{%s}" % row["reward_model"]["ground_truth"])
    assert not (tmp_path / "models" / "large").exists()


def test_stand_in_cli_builds_a_pair_with_its_yaml_settings(tmp_path, monkeypatch):
    """`stand_in --pair toy` (what reproduce_paper and pair.prepare run) hands the builder the settings
    written in configs/pair/toy.yaml, read here straight from the file; --kind uses the defaults."""
    import yaml

    from recipe.codistill_grpo.cpu import stand_in, toy_pair

    calls = []
    monkeypatch.setattr(toy_pair, "build_toy_pair", lambda folder, models, data, overrides: calls.append(
        (str(folder), models, data, overrides)))
    written = yaml.safe_load((REPO / "configs" / "pair" / "toy.yaml").read_text())["pair"]["cpu"]["build"]
    assert stand_in.main(["--pair", "toy", "--out", str(tmp_path / "a"), "--models", "small"]) == 0
    assert stand_in.main(["--kind", "toy", "--out", str(tmp_path / "b")]) == 0
    assert calls == [(str(tmp_path / "a"), ("small",), written["data"], written["models"]),
                     (str(tmp_path / "b"), ("small", "large"), None, None)]
