"""Data files, prompt lengths and chat templates, checked before anything starts: one line each."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pandas as pd
import pytest
from omegaconf import OmegaConf
from transformers import AutoTokenizer

from recipe.codistill_grpo.cpu.tiny_pair import tiny_math_rows
from recipe.codistill_grpo.preflight import PreflightError, check_data, template_difference, write_filtered


def config(train, val, **data):
    return OmegaConf.create(
        {
            "data": {
                "train_files": str(train),
                "val_files": [str(val)],
                "max_prompt_length": 128,
                "filter_overlong_prompts": False,
                "truncation": "error",
                **data,
            },
            "pair": {"prepare": "python scripts/prepare_data.py --template qwen_math --out /d"},
            "run": {"bad_rows": "fail"},
        }
    )


@pytest.fixture
def files(tmp_path):
    train, val = tmp_path / "train.parquet", tmp_path / "val.parquet"
    pd.DataFrame(tiny_math_rows(8, "train", seed=0)).to_parquet(train)
    pd.DataFrame(tiny_math_rows(4, "test", seed=1)).to_parquet(val)
    return train, val


def error(cfg, tokenizer=None) -> str:
    with pytest.raises(PreflightError) as err:
        check_data(cfg, tokenizer)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_good_files_pass(files):
    assert check_data(config(*files)).lines == []


def test_missing_file_names_the_prepare_command(files, tmp_path):
    assert error(config(tmp_path / "nope.parquet", files[1])) == (
        f"data file {tmp_path / 'nope.parquet'} (train) is missing: make it with "
        "`python scripts/prepare_data.py --template qwen_math --out /d`"
    )


def test_unreadable_empty_and_columnless_files(files, tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    assert error(config(files[0], bad)).startswith(f"data file {bad} (val) is not readable parquet: ")
    empty = tmp_path / "empty.parquet"
    pd.DataFrame({"prompt": [], "reward_model": []}).to_parquet(empty)
    assert error(config(empty, files[1])) == f"data file {empty} (train) has no rows"
    no_prompt = tmp_path / "no_prompt.parquet"
    pd.DataFrame({"question": ["1+1?"], "reward_model": [{"ground_truth": "2"}]}).to_parquet(no_prompt)
    assert error(config(no_prompt, files[1])) == (
        f"data file {no_prompt} (train) has no 'prompt' column (columns: question, reward_model)"
    )


def test_rows_without_ground_truth_fail_or_are_dropped_and_counted(files, tmp_path):
    frame = pd.read_parquet(files[0])
    frame.at[2, "reward_model"] = {"style": "rule", "ground_truth": ""}
    frame.at[5, "reward_model"] = {"style": "rule", "ground_truth": None}
    frame.to_parquet(files[0])
    assert error(config(*files)) == (
        f"data file {files[0]} (train): 2 of 8 rows have no reward_model.ground_truth (first: row 2); "
        "fix the file or set run.bad_rows=drop"
    )
    cfg = config(*files)
    cfg.run.bad_rows = "drop"
    report = check_data(cfg)
    assert report.lines == [f"data {files[0]}: dropping 2 of 8 rows without a ground truth"]
    write_filtered(report, tmp_path / "filtered", cfg)
    kept = pd.read_parquet(cfg.data.train_files)
    assert cfg.data.train_files != str(files[0]) and len(kept) == 6
    assert [r["extra_info"]["index"] for r in kept.to_dict("records")] == [0, 1, 3, 4, 6, 7]
    assert cfg.data.val_files == [str(files[1])]


def test_overlong_prompts_follow_verls_settings(files, tiny_pair):
    tok = AutoTokenizer.from_pretrained(tiny_pair["small"])
    lengths = [
        len(tok.apply_chat_template(list(p), add_generation_prompt=True, tokenize=True, return_dict=False))
        for p in pd.read_parquet(files[0])["prompt"]
    ]
    limit = sorted(lengths)[4]  # the independent count: prompts longer than the 5th shortest
    over = sum(n > limit for n in lengths)
    assert 0 < over < len(lengths)
    where = f"data file {files[0]} (train): {over} of 8 prompts are longer than data.max_prompt_length={limit}"
    assert error(config(*files, max_prompt_length=limit), tok) == (
        f"{where}; set data.filter_overlong_prompts=true or data.truncation=left|right|middle"
    )
    assert check_data(config(*files, max_prompt_length=limit, filter_overlong_prompts=True), tok).lines[0] == (
        f"{where}: dropped (data.filter_overlong_prompts=true)"
    )
    assert check_data(config(*files, max_prompt_length=limit, truncation="left"), tok).lines[0] == (
        f"{where}: cut (data.truncation=left)"
    )


def test_chat_template_difference_is_named(tiny_pair, tmp_path):
    small = AutoTokenizer.from_pretrained(tiny_pair["small"])
    other_dir = tmp_path / "large"
    shutil.copytree(tiny_pair["large"], other_dir)
    other = AutoTokenizer.from_pretrained(other_dir)
    other.chat_template = other.chat_template.replace("<|im_start|>", "<|im_start|>[date 2026-11-26]")
    other.save_pretrained(other_dir)
    messages = [{"role": "user", "content": "What is 1 + 1?"}]
    assert template_difference(small, small, messages) is None
    diff = template_difference(small, AutoTokenizer.from_pretrained(other_dir), messages)
    assert diff.startswith("first difference at character 12: small ")
    assert "[date 2026-11-26]" in diff
    # the run says so in one warning line at start (a dry run reads local models too)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "recipe.codistill_grpo.main_codistill",
            "platform=cpu",
            "run.dry_run=true",
            f"pair.large.model.path={other_dir}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    warnings = [
        line for line in proc.stdout.splitlines() if "chat templates render the same prompt differently" in line
    ]
    assert len(warnings) == 1 and "first difference at character 12" in warnings[0]
