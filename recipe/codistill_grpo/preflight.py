"""Start-up checks that read files: models, tokenizers, data. All before Ray starts.

Each problem is a ``PreflightError`` with one line naming the file or model and what to do;
facts worth knowing (where a model loads from, rows dropped or cut) are returned as lines.
"""

from __future__ import annotations

import glob
import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


class PreflightError(ValueError):
    """A model, tokenizer or data file a run cannot start with; one line."""


# ----------------------------------------------------------------------------------------------
# where a model loads from
# ----------------------------------------------------------------------------------------------


def hf_cache_dir() -> str:
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return os.path.join(home, "hub")


def _offline() -> bool:
    return any(
        os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _stored_token() -> str | None:
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    path = os.environ.get("HF_TOKEN_PATH") or os.path.join(home, "token")
    try:
        return Path(path).read_text().strip() or None
    except OSError:
        return None


def check_model(path: str, role: str) -> str:
    """Where ``path`` loads from ('local dir', 'HF cache', 'hub (downloaded at start-up)'); else an error.

    Local folder first (it must hold config.json), then the HF cache, then the hub (skipped with
    HF_HUB_OFFLINE=1; a gated model without HF_TOKEN is an error here, not at download time).
    """
    local = os.path.expanduser(path)
    if os.path.isdir(local):
        if not os.path.isfile(os.path.join(local, "config.json")):
            raise PreflightError(f"{role} model directory {local} has no config.json")
        return "local dir"
    if not HUB_ID.fullmatch(path) or path.startswith((".", "/", "~")):
        raise PreflightError(f"{role} model path {path} does not exist")
    cache = hf_cache_dir()
    repo_dir = os.path.join(cache, "models--" + path.replace("/", "--"))
    if glob.glob(os.path.join(repo_dir, "snapshots", "*", "config.json")):
        return "HF cache"
    hint = f"download it where the hub is reachable (hf download {path}) or set the pair's path to a local dir"
    if _offline():
        raise PreflightError(
            f"{role} model {path} is not a local dir and not in the HF cache ({cache}) and HF_HUB_OFFLINE=1: {hint}"
        )
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    token = os.environ.get("HF_TOKEN") or _stored_token()
    request = urllib.request.Request(f"{endpoint}/api/models/{path}")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            info = json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            raise PreflightError(
                f"{role} model {path}: the hub answered {e.code} "
                "(private or gated: accept its license and set HF_TOKEN)"
            ) from None
        raise PreflightError(f"{role} model {path}: the hub ({endpoint}) answered {e.code}; check the name") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise PreflightError(
            f"{role} model {path} is not a local dir and not in the HF cache ({cache}) and the hub ({endpoint}) "
            f"is unreachable ({reason}): {hint}"
        ) from None
    if info.get("gated") and not token:
        raise PreflightError(
            f"{role} model {path} is gated on the hub: accept its license on the model page and set HF_TOKEN "
            "(or `hf auth login`)"
        )
    return "hub (downloaded at start-up)"


def template_difference(small_tok, large_tok, messages: list[dict]) -> str | None:
    """Where the two chat templates render ``messages`` differently (None: identically)."""
    a = small_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    b = large_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if a == b:
        return None
    i = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    lo, hi = max(0, i - 20), i + 30
    return f"first difference at character {i}: small {a[lo:hi]!r} vs large {b[lo:hi]!r}"


def check_files(cfg: DictConfig, large_path: str | None, strict: bool) -> tuple[list[str], DataReport | None]:
    """Models, tokenizers and data of a resolved config (``strict=False``: a dry run, problems become
    'warning:' lines). Returns the lines to show and the data report (None if the data check failed)."""
    lines: list[str] = []
    generator = str(cfg.exp.generator)
    models = {generator: str(cfg.actor_rollout_ref.model.path)}
    if large_path is not None:
        models["large"] = large_path
    readable = {}
    for role, path in models.items():
        try:
            where = check_model(path, role)
            lines.append(f"{role} {path}: {where}")
            readable[role] = where != "hub (downloaded at start-up)"
        except PreflightError as e:
            if strict:
                raise
            lines.append(f"warning: {e}")
            readable[role] = False
    from transformers import AutoTokenizer

    tokenizers = {}
    for role, path in models.items():
        if not readable[role]:
            continue
        try:
            tokenizers[role] = AutoTokenizer.from_pretrained(path)
        except Exception as e:
            problem = f"cannot load the tokenizer of the {role} model {path}: {' '.join(str(e).split())[:300]}"
            if strict:
                raise PreflightError(problem) from None
            lines.append(f"warning: {problem}")
    tokenizer = tokenizers.get(generator)
    if tokenizer is not None and "large" in tokenizers and generator != "large":
        from verl_ext.codistill.tokenizer_check import TokenizerMismatchError, assert_shared_tokenizer

        try:
            assert_shared_tokenizer(tokenizer, tokenizers["large"])
        except TokenizerMismatchError as e:
            raise PreflightError(str(e)) from None
        diff = template_difference(tokenizer, tokenizers["large"], [{"role": "user", "content": "What is 1 + 1?"}])
        if diff:
            lines.append(
                "warning: the two models' chat templates render the same prompt differently (the large model "
                f"scores prompts in the small model's rendering): {diff}"
            )
    report = None
    try:
        report = check_data(cfg, tokenizer)
        lines += report.lines
    except PreflightError as e:
        if strict:
            raise
        lines.append(f"warning: {e}")
    return lines, report


# ----------------------------------------------------------------------------------------------
# data files
# ----------------------------------------------------------------------------------------------


@dataclass
class DataReport:
    lines: list[str] = field(default_factory=list)
    # file -> row positions to drop (rows without a ground truth, with run.bad_rows=drop)
    drops: dict[str, list[int]] = field(default_factory=dict)


def _ground_truth(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("ground_truth")
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def check_data(config: DictConfig, tokenizer=None) -> DataReport:
    """Each train/val file: exists, reads, has rows, a prompt column and ground truths; prompt lengths.

    Rows without a ground truth fail the run unless ``run.bad_rows=drop``. With a tokenizer, prompts
    longer than ``data.max_prompt_length`` (chat template applied, as verl does) are counted:
    ``data.filter_overlong_prompts=true`` drops them (said), a truncation mode cuts them (said),
    ``truncation=error`` without the filter is an error.
    """
    import pandas as pd

    data = config.data
    prompt_key = data.get("prompt_key", "prompt")
    report = DataReport()
    files = [("train", f) for f in _as_list(data.train_files)] + [("val", f) for f in _as_list(data.val_files)]
    max_len = int(data.max_prompt_length)
    for split, path in files:
        if not os.path.isfile(path):
            prepare = OmegaConf.select(config, "pair.prepare")
            hint = f": make it with `{prepare}`" if prepare else ""
            raise PreflightError(f"data file {path} ({split}) is missing{hint}")
        try:
            frame = pd.read_parquet(path)
        except Exception as e:
            raise PreflightError(
                f"data file {path} ({split}) is not readable parquet: {' '.join(str(e).split())[:200]}"
            ) from None
        if len(frame) == 0:
            raise PreflightError(f"data file {path} ({split}) has no rows")
        if prompt_key not in frame.columns:
            raise PreflightError(
                f"data file {path} ({split}) has no '{prompt_key}' column "
                f"(columns: {', '.join(map(str, frame.columns))})"
            )
        gts = frame["reward_model"] if "reward_model" in frame.columns else [None] * len(frame)
        missing = [i for i, v in enumerate(gts) if _ground_truth(v) is None]
        if missing:
            if config.run.bad_rows != "drop":
                raise PreflightError(
                    f"data file {path} ({split}): {len(missing)} of {len(frame)} rows "
                    "have no reward_model.ground_truth "
                    f"(first: row {missing[0]}); fix the file or set run.bad_rows=drop"
                )
            report.drops[path] = missing
            report.lines.append(f"data {path}: dropping {len(missing)} of {len(frame)} rows without a ground truth")
        if tokenizer is not None:
            ids = tokenizer.apply_chat_template(
                [list(p) for p in frame[prompt_key]], add_generation_prompt=True, tokenize=True, return_dict=False
            )
            lengths = [len(x) for x in ids]
            over = sum(n > max_len for n in lengths)
            if over:
                where = (
                    f"data file {path} ({split}): {over} of {len(frame)} prompts "
                    f"are longer than data.max_prompt_length={max_len}"
                )
                if data.get("filter_overlong_prompts", False):
                    report.lines.append(f"{where}: dropped (data.filter_overlong_prompts=true)")
                elif data.get("truncation", "error") == "error":
                    raise PreflightError(
                        f"{where}; set data.filter_overlong_prompts=true or data.truncation=left|right|middle"
                    )
                else:
                    report.lines.append(f"{where}: cut (data.truncation={data.truncation})")
    return report


def write_filtered(report: DataReport, out_dir: Path, config: DictConfig) -> None:
    """Write the data files with ``report.drops`` removed under ``out_dir`` and point the config at them."""
    import pandas as pd

    if not report.drops:
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    renamed = {}
    for i, (path, rows) in enumerate(sorted(report.drops.items())):
        frame = pd.read_parquet(path)
        target = out_dir / f"{i}-{Path(path).name}"
        frame.drop(index=frame.index[rows]).reset_index(drop=True).to_parquet(target)
        renamed[path] = str(target)
    for key in ("train_files", "val_files"):
        value = config.data[key]
        if isinstance(value, str):
            config.data[key] = renamed.get(value, value)
        else:
            config.data[key] = [renamed.get(v, v) for v in value]


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]
