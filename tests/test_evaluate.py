"""scripts/evaluate.py: HF backend on the tiny models, resumability, aggregates, verl checkpoint merge."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from tests.support import load_script, run_evaluate

REPO = Path(__file__).resolve().parents[1]


evaluate = load_script("evaluate")

SAMPLING = {"n": 1, "temperature": 0.0, "top_p": 1.0, "max_tokens": 4, "seed": 0}
HEADER = {
    "model": "m",
    "checkpoint": "c",
    "model_dir": "d",
    "backend": "hf",
    "meta": {"pair": "p", "method": "grpo", "role": "small"},
}


@pytest.fixture()
def suite_dir(tiny_data, tmp_path):
    shutil.copy(tiny_data["test"], tmp_path / "tiny.parquet")
    return tmp_path


class CountingGenerator:
    """Wraps a generator and counts the prompts it is asked to complete."""

    def __init__(self, inner):
        self.inner = inner
        self.prompts = 0

    def generate(self, prompts, **kw):
        self.prompts += len(prompts)
        return self.inner.generate(prompts, **kw)


def test_hf_backend_tiny_model_and_resume(tiny_pair, suite_dir, tmp_path):
    frame = pd.read_parquet(suite_dir / "tiny.parquet")
    out_file = tmp_path / "tiny.json"
    counting = CountingGenerator(evaluate.HFGenerator(Path(tiny_pair["small"])))
    loads = []

    def get_generator():
        loads.append(1)
        return counting

    first = evaluate.evaluate_suite(
        get_generator,
        frame.iloc[:2],
        "tiny",
        out_file,
        SAMPLING,
        HEADER,
        batch_size=2,
        num_workers=1,
        show_progress=False,
    )
    assert first == {"generated": 2, "skipped": 0} and counting.prompts == 2
    second = evaluate.evaluate_suite(
        get_generator,
        frame.iloc[:3],
        "tiny",
        out_file,
        SAMPLING,
        HEADER,
        batch_size=2,
        num_workers=1,
        show_progress=False,
    )
    assert second == {"generated": 1, "skipped": 2} and counting.prompts == 3
    loads.clear()
    third = evaluate.evaluate_suite(
        get_generator,
        frame.iloc[:3],
        "tiny",
        out_file,
        SAMPLING,
        HEADER,
        batch_size=2,
        num_workers=1,
        show_progress=False,
    )
    assert third == {"generated": 0, "skipped": 3} and counting.prompts == 3 and loads == []

    result = json.loads(out_file.read_text())
    assert result["complete"] and result["suite"] == "tiny" and result["meta"]["method"] == "grpo"
    # a run over fewer items keeps the others in the file but aggregates only its own
    fewer = evaluate.evaluate_suite(
        get_generator,
        frame.iloc[:1],
        "tiny",
        out_file,
        SAMPLING,
        HEADER,
        batch_size=2,
        num_workers=1,
        show_progress=False,
    )
    assert fewer == {"generated": 0, "skipped": 1}
    narrowed = json.loads(out_file.read_text())
    assert narrowed["aggregate"]["n_items"] == 1 and len(narrowed["items"]) == 3
    assert [it["index"] for it in result["items"]] == [int(e["index"]) for e in frame["extra_info"].iloc[:3]]
    assert [it["ground_truth"] for it in result["items"]] == [r["ground_truth"] for r in frame["reward_model"].iloc[:3]]
    assert all(len(it["responses"]) == 1 and isinstance(it["responses"][0], str) for it in result["items"])
    # a random tiny model: every response scored by the real reward; accuracy equals the per-item mean
    assert result["aggregate"]["n_items"] == 3
    assert result["aggregate"]["accuracy"] == sum(it["correct"][0] for it in result["items"]) / 3


def _one_question_evaluated(tmp_path):
    """A one-question suite evaluated once into ``tmp_path/s.json``: (frame, out_file, generator)."""
    frame = pd.DataFrame(
        {
            "prompt": [[{"role": "user", "content": "1+1?"}]],
            "reward_model": [{"ground_truth": "2"}],
            "extra_info": [{"index": 0}],
        }
    )
    out_file = tmp_path / "s.json"
    scripted = ScriptedGenerator({"1+1?": ["\\boxed{2}"]})
    evaluate.evaluate_suite(
        lambda: scripted, frame, "s", out_file, SAMPLING, HEADER, 4, num_workers=1, show_progress=False
    )
    return frame, out_file, scripted


def test_resume_with_other_sampling_is_refused(tmp_path):
    frame, out_file, scripted = _one_question_evaluated(tmp_path)
    with pytest.raises(evaluate.EvalError, match="written with sampling"):
        evaluate.evaluate_suite(
            lambda: scripted,
            frame,
            "s",
            out_file,
            {**SAMPLING, "max_tokens": 8},
            HEADER,
            4,
            num_workers=1,
            show_progress=False,
        )


class ScriptedGenerator:
    """Test double: fixed responses per question (the real scoring path runs on them)."""

    def __init__(self, answers: dict[str, list[str]]):
        self.answers = answers

    def generate(self, prompts, n, temperature, top_p, max_tokens, item_ids):
        assert len(item_ids) == len(prompts)
        return [self.answers[p[0]["content"]][:n] for p in prompts]


def test_mean_at_k_and_pass_at_k_by_hand(tmp_path):
    questions = ["q0", "q1", "q2"]
    frame = pd.DataFrame(
        {
            "prompt": [[{"role": "user", "content": q}] for q in questions],
            "reward_model": [{"ground_truth": g} for g in ("2", "\\frac{1}{2}", "7")],
            "extra_info": [{"index": i} for i in range(3)],
        }
    )
    scripted = ScriptedGenerator(
        {
            "q0": ["so \\boxed{2}", "so \\boxed{2.0}"],  # 2 of 2 correct
            "q1": ["\\boxed{0.5}", "no box, 1/2"],  # 1 of 2 correct, 1 unformatted
            "q2": ["\\boxed{8}", "\\boxed{6}"],  # 0 of 2
        }
    )
    sampling = {**SAMPLING, "n": 2, "temperature": 0.6}
    out_file = tmp_path / "k.json"
    evaluate.evaluate_suite(
        lambda: scripted, frame, "k", out_file, sampling, HEADER, 2, num_workers=1, show_progress=False
    )
    result = json.loads(out_file.read_text())
    assert [it["correct"] for it in result["items"]] == [[1.0, 1.0], [1.0, 0.0], [0.0, 0.0]]
    agg = result["aggregate"]
    assert agg["k"] == 2 and agg["n_items"] == 3
    assert agg["mean@k"] == pytest.approx((1.0 + 0.5 + 0.0) / 3)
    assert agg["pass@k"] == pytest.approx(2 / 3)
    assert agg["format_rate"] == pytest.approx(5 / 6)
    assert [it["pred"] for it in result["items"]][1] == ["0.5", ""]


def test_suite_sampling_defaults_greedy_and_mean_at_k_where_asked():
    args = evaluate.build_parser().parse_args(
        ["--checkpoint", "x", "--data-dir", "d", "--out", "o", "--suite-n", "aime24=16,amc23=8", "--max-tokens", "64"]
    )
    assert evaluate.suite_sampling("math500", args) == {
        "n": 1,
        "temperature": 0.0,
        "top_p": 1.0,
        "max_tokens": 64,
        "seed": 0,
    }
    assert evaluate.suite_sampling("aime24", args) == {
        "n": 16,
        "temperature": 0.6,
        "top_p": 1.0,
        "max_tokens": 64,
        "seed": 0,
    }
    assert evaluate.suite_sampling("amc23", args)["n"] == 8


def test_verl_fsdp_checkpoint_is_merged_with_verl_and_loaded(tiny_pair, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_pair["small"])
    actor = tmp_path / "exp1" / "global_step_3" / "actor"
    (actor / "huggingface").mkdir(parents=True)
    # verl's FSDP checkpoint layout at world size 1 (utils/checkpoint/fsdp_checkpoint_manager.py)
    torch.save(model.state_dict(), actor / "model_world_size_1_rank_0.pt")
    (actor / "fsdp_config.json").write_text(json.dumps({"FSDP_version": 2, "world_size": 1}))
    model.config.save_pretrained(actor / "huggingface")
    model.generation_config.save_pretrained(actor / "huggingface")
    AutoTokenizer.from_pretrained(tiny_pair["small"]).save_pretrained(actor / "huggingface")

    assert evaluate.default_model_name(actor) == "exp1-step3"
    assert evaluate.default_model_name(actor.parent / "large_actor") == "exp1-step3-large"
    merged = evaluate.resolve_checkpoint(actor)
    assert merged == actor.parent / "actor_hf" and evaluate.is_hf_dir(merged)
    reloaded = AutoModelForCausalLM.from_pretrained(merged).state_dict()
    original = model.state_dict()
    assert set(reloaded) == set(original)
    # verl's merger writes bfloat16: the merged weights are exactly the bf16 cast of the saved ones
    assert {t.dtype for t in reloaded.values()} == {torch.bfloat16}
    assert all(torch.equal(reloaded[k], original[k].to(torch.bfloat16)) for k in original)
    assert evaluate.resolve_checkpoint(actor) == merged  # second call reuses the merge


def test_cli_errors_name_the_problem(tmp_path, capsys, tiny_pair, tiny_data):
    rc = evaluate.main(
        [
            "--checkpoint",
            tiny_pair["small"],
            "--data-dir",
            str(tmp_path),
            "--suites",
            "minerva",
            "--out",
            str(tmp_path / "r"),
        ]
    )
    assert rc == 2
    assert f"suite 'minerva': {tmp_path / 'minerva.parquet'} not found" in capsys.readouterr().err
    shutil.copy(tiny_data["test"], tmp_path / "minerva.parquet")
    rc = evaluate.main(
        [
            "--checkpoint",
            str(tmp_path / "nope"),
            "--data-dir",
            str(tmp_path),
            "--suites",
            "minerva",
            "--out",
            str(tmp_path / "r"),
        ]
    )
    assert rc == 2 and "does not exist" in capsys.readouterr().err
    # a Hub id (no such local folder) is passed through to the backend untouched
    assert evaluate.resolve_checkpoint("Qwen/Qwen2.5-Math-1.5B") == "Qwen/Qwen2.5-Math-1.5B"


def test_cli_end_to_end_on_tiny_model(tiny_pair, suite_dir, tmp_path, capsys):
    args = (tiny_pair["small"], "tiny-small", suite_dir, tmp_path / "res", 4, 2, "small", "--backend", "hf")
    run_evaluate(*args, main=evaluate.main)
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("tiny-small"))
    assert line.split()[1:3] == ["tiny", "2"] and line.split()[-1] == "2"
    result = run_evaluate(*args, main=evaluate.main)
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("tiny-small"))
    assert line.split()[-1] == "0"  # resumed: nothing new generated
    assert result["meta"] == {"pair": "tiny", "method": "base", "role": "small"} and result["aggregate"]["n_items"] == 2


def test_sampled_flag_adds_a_sampled_result_from_the_same_load(tiny_pair, suite_dir, tmp_path, capsys, monkeypatch):
    loads = []
    real = evaluate.HFGenerator.__init__

    def counting(self, *a, **kw):
        loads.append(a[0])
        real(self, *a, **kw)

    monkeypatch.setattr(evaluate.HFGenerator, "__init__", counting)
    args = [
        "--backend",
        "hf",
        "--checkpoint",
        tiny_pair["small"],
        "--name",
        "m",
        "--data-dir",
        str(suite_dir),
        "--suites",
        "tiny",
        "--out",
        str(tmp_path / "res"),
        "--max-tokens",
        "4",
        "--limit",
        "2",
        "--reward-workers",
        "1",
        "--no-progress",
        "--sampled",
        "3,0.7",
    ]
    assert evaluate.main(args) == 0
    assert len(loads) == 1  # one model load for both evaluations
    greedy = json.loads((tmp_path / "res" / "m" / "tiny.json").read_text())
    sampled = json.loads((tmp_path / "res" / "m-sampled" / "tiny.json").read_text())
    assert (greedy["sampling"]["n"], greedy["sampling"]["temperature"]) == (1, 0.0)
    assert (sampled["sampling"]["n"], sampled["sampling"]["temperature"]) == (3, 0.7)
    assert sampled["model"] == "m-sampled" and [len(it["correct"]) for it in sampled["items"]] == [3, 3]
    for bad in ("3", "0,1.0", "2,0"):
        with pytest.raises(SystemExit):
            evaluate.main(args[:-1] + [bad])
    assert "--sampled: " in capsys.readouterr().err


def test_hf_sampling_k_per_item_is_seeded(tiny_pair, suite_dir, tmp_path):
    frame = pd.read_parquet(suite_dir / "tiny.parquet").iloc[:2]
    generator = evaluate.HFGenerator(Path(tiny_pair["small"]), seed=7)
    sampling = {"n": 3, "temperature": 1.0, "top_p": 0.9, "max_tokens": 4, "seed": 7}
    responses = []
    for name in ("a.json", "b.json"):
        evaluate.evaluate_suite(
            lambda: generator,
            frame,
            "tiny",
            tmp_path / name,
            sampling,
            HEADER,
            batch_size=2,
            num_workers=1,
            show_progress=False,
        )
        result = json.loads((tmp_path / name).read_text())
        assert result["aggregate"]["k"] == 3 and all(len(it["responses"]) == 3 for it in result["items"])
        responses.append([it["responses"] for it in result["items"]])
    assert responses[0] == responses[1]


def _fake_verl_step(actor: Path, model, tokenizer_dir: str) -> None:
    """verl's FSDP checkpoint layout at world size 1 (utils/checkpoint/fsdp_checkpoint_manager.py)."""
    import torch
    from transformers import AutoTokenizer

    (actor / "huggingface").mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), actor / "model_world_size_1_rank_0.pt")
    (actor / "fsdp_config.json").write_text(json.dumps({"FSDP_version": 2, "world_size": 1}))
    model.config.save_pretrained(actor / "huggingface")
    model.generation_config.save_pretrained(actor / "huggingface")
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(actor / "huggingface")


@pytest.mark.slow
def test_merged_root_names_merges_by_run_and_checks_their_source(tiny_pair, tmp_path):
    """Two runs in the recipe's layout (<run>/checkpoints/global_step_N/actor) must not share a merge."""
    import torch
    from transformers import AutoModelForCausalLM

    models = {}
    for run, seed in (("runA", 1), ("runB", 2)):
        model = AutoModelForCausalLM.from_pretrained(tiny_pair["small"])
        torch.manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        _fake_verl_step(tmp_path / run / "checkpoints" / "global_step_40" / "actor", model, tiny_pair["small"])
        models[run] = model
    actor = {run: tmp_path / run / "checkpoints" / "global_step_40" / "actor" for run in models}
    assert evaluate.default_model_name(actor["runA"]) == "runA-step40"
    assert evaluate.default_model_name(actor["runB"].parent / "large_actor") == "runB-step40-large"

    root = tmp_path / "merged"
    merged = {run: evaluate.resolve_checkpoint(actor[run], merged_root=root) for run in ("runA", "runB")}
    assert merged["runA"] != merged["runB"]
    for run in merged:
        weights = AutoModelForCausalLM.from_pretrained(merged[run]).state_dict()
        expected = models[run].state_dict()
        assert all(torch.equal(weights[k], expected[k].to(torch.bfloat16)) for k in expected), run
        record = json.loads((merged[run] / "merge_source.json").read_text())
        assert record["source"] == str(actor[run].resolve())

    # a third run folder with the same name elsewhere maps to runA's merge: refused, not silently reused
    elsewhere = tmp_path / "other" / "runA" / "checkpoints" / "global_step_40" / "actor"
    _fake_verl_step(elsewhere, models["runB"], tiny_pair["small"])
    with pytest.raises(evaluate.EvalError, match=r"holds the merge of .*runA/checkpoints/global_step_40/actor"):
        evaluate.resolve_checkpoint(elsewhere, merged_root=root)

    # the same step folder rewritten (a fresh run into the same folder): merged again, not reused
    torch.save(models["runB"].state_dict(), actor["runA"] / "model_world_size_1_rank_0.pt")
    assert evaluate.resolve_checkpoint(actor["runA"], merged_root=root) == merged["runA"]
    weights = AutoModelForCausalLM.from_pretrained(merged["runA"]).state_dict()
    expected = models["runB"].state_dict()
    assert all(torch.equal(weights[k], expected[k].to(torch.bfloat16)) for k in expected)


def test_resume_for_another_checkpoint_is_refused(tmp_path):
    frame, out_file, scripted = _one_question_evaluated(tmp_path)
    with pytest.raises(evaluate.EvalError, match="written for checkpoint c, now /other"):
        evaluate.evaluate_suite(
            lambda: scripted,
            frame,
            "s",
            out_file,
            SAMPLING,
            {**HEADER, "checkpoint": "/other"},
            4,
            num_workers=1,
            show_progress=False,
        )


def test_a_summary_cut_mid_write_keeps_the_finished_items(tmp_path, capsys):
    """Issue 16 item 8: the JSON cut mid-write; the rerun recovers every finished item from the
    append-only .items.jsonl (none generated again), names the count, and keeps the cut file."""
    questions = [f"q{i}" for i in range(4)]
    frame = pd.DataFrame(
        {
            "prompt": [[{"role": "user", "content": q}] for q in questions],
            "reward_model": [{"ground_truth": str(i)} for i in range(4)],
            "extra_info": [{"index": i} for i in range(4)],
        }
    )
    calls = []

    class Recording(ScriptedGenerator):
        def generate(self, prompts, **kw):
            calls.extend(p[0]["content"] for p in prompts)
            return super().generate(prompts, **kw)

    scripted = Recording({f"q{i}": [f"\\boxed{{{i if i != 1 else 9}}}"] for i in range(4)})
    out_file = tmp_path / "s.json"
    evaluate.evaluate_suite(
        lambda: scripted, frame.iloc[:3], "s", out_file, SAMPLING, HEADER, 2, num_workers=1, show_progress=False
    )
    assert calls == ["q0", "q1", "q2"]
    text = out_file.read_text()
    out_file.write_text(text[: len(text) // 2])  # cut mid-write
    log = tmp_path / "s.items.jsonl"
    log.write_text(log.read_text() + '{"index": 3, "correct": [1.0], "resp')  # and a log line cut short
    capsys.readouterr()
    counts = evaluate.evaluate_suite(
        lambda: scripted, frame, "s", out_file, SAMPLING, HEADER, 2, num_workers=1, show_progress=False
    )
    assert counts == {"generated": 1, "skipped": 3} and calls == ["q0", "q1", "q2", "q3"]
    message = capsys.readouterr().out.strip().splitlines()
    assert len(message) == 1 and message[0].startswith(
        f"evaluate: recovered 3 finished items from {log} ({out_file} is not valid JSON"
    )
    assert message[0].endswith("kept as s.json.corrupt)")
    assert (tmp_path / "s.json.corrupt").read_text() == text[: len(text) // 2]
    result = json.loads(out_file.read_text())
    assert result["complete"] and [it["correct"] for it in result["items"]] == [[1.0], [0.0], [1.0], [1.0]]
    assert result["aggregate"]["mean@k"] == 0.75  # by hand: 3 of 4 (q1 answers 9)
    # the log now holds the header and the four items, no cut line
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert lines[0] == {"header": {"sampling": SAMPLING, "checkpoint": "c"}} and [x["index"] for x in lines[1:]] == [
        0,
        1,
        2,
        3,
    ]


def test_a_log_of_other_sampling_is_refused_when_the_summary_is_gone(tmp_path):
    frame, out_file, scripted = _one_question_evaluated(tmp_path)
    out_file.write_text("{")
    with pytest.raises(evaluate.EvalError, match="written with sampling"):
        evaluate.evaluate_suite(
            lambda: scripted,
            frame,
            "s",
            out_file,
            {**SAMPLING, "n": 2, "temperature": 1.0},
            HEADER,
            4,
            num_workers=1,
            show_progress=False,
        )


def test_the_evaluator_returns_what_it_generated_token_by_token(tiny_pair, suite_dir):
    """recipe.codistill_grpo.evaluation.hf_generate with ids: the unpadded prompt as the chat template
    tokenizes it, and a response that decodes to the returned text and ends at its first EOS."""
    from recipe.codistill_grpo.evaluation import chat_prompts, hf_generate

    generator = evaluate.HFGenerator(Path(tiny_pair["small"]))
    tok, frame = generator.tokenizer, pd.read_parquet(suite_dir / "tiny.parquet").iloc[:3]
    texts, ids = hf_generate(generator.model, tok, frame["prompt"], max_tokens=6, batch_size=2, return_ids=True)
    assert len(texts) == len(ids) == 3
    for messages, [text], [(prompt, response)] in zip(frame["prompt"], texts, ids):
        assert prompt == tok(chat_prompts(tok, [messages])[0], add_special_tokens=False)["input_ids"]
        assert tok.decode(response, skip_special_tokens=True) == text
        assert 1 <= len(response) <= 6 and tok.eos_token_id not in response[:-1]
