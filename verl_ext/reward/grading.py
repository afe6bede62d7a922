"""Implementation of ``verl_ext.reward.math_reward`` (see there for the entry points).

Kept in its own module so that the worker function and the task class pickle by a stable
import path even when verl loads ``math_reward.py`` from a file path under a synthetic name.

Math-verify outcome reward with a hard per-item time bound, for verl and for evaluation.

verl 0.9.1 calls a custom reward as
``compute_score(data_source=..., solution_str=..., ground_truth=..., extra_info=..., **reward_kwargs)``
(``verl/trainer/ppo/reward.py: get_custom_reward_fn``, with ``reward_kwargs`` from
``reward.custom_reward_function.reward_kwargs``). The reward-loop managers
(``verl/experimental/reward_loop/reward_manager/naive.py``) run that call through
``loop.run_in_executor(None, ...)``, i.e. in a worker THREAD of a Ray actor. A dict return
must hold ``score`` (the scalar reward); every key, including ``score``, becomes a
``reward_extra_info`` column (``reward_loop.py`` takes the key set from the first item, so
every item returns the same keys), and in validation the numeric ones become metrics,
``acc`` as ``val-core/<source>/acc/mean@N`` and the others as ``val-aux/<source>/<key>/...``
(``ray_trainer._val_metrics_update``, ``metric_utils.process_validation_metrics``, which
uses ``pred`` for majority voting and skips string values for means).

math-verify's own timeouts use ``signal.alarm``, which raises off the main thread. So
math-verify is called here with ``parsing_timeout=None`` / ``timeout_seconds=None`` and the
bound is ours, in two layers:

- soft, ``timeout`` seconds of the grading process's CPU time: each item is graded in a
  worker process (main thread there) that arms ``ITIMER_PROF`` (SIGPROF) at ``timeout``.
  CPU time, not wall time, so whether an answer is graded does not depend on how busy the
  machine is (on a loaded 2-core box a wall-clock bound timed out ordinary items);
- hard, wall clock: a worker that has not answered after
  ``WALL_FACTOR * timeout + KILL_GRACE_S`` (stuck in C code where no signal handler runs,
  or starved of CPU) is killed by the parent, counted as a timeout and replaced in the
  background. That is the worst-case latency of one item.

A timeout, a parser error or a dead worker scores 0 and is counted, never raised.

Per item (``solution``, ``ground_truth``)::

    tail   = solution[-max_chars:]                      # size bound, the answer is at the end
    pred   = normalize(last balanced \\boxed{...} in tail)  # format = 1 iff it exists
    score  = 1  if pred == normalize(ground_truth)       # exact-match shortcut, no sympy
           = verify(parse(gold), parse(pred)) in {0, 1}  # math-verify, bounded in time
           = 0  on no box (unless fallback_unboxed), timeout, parser error, or a pathological
                answer: over MAX_ANSWER_CHARS (2000) characters or brackets nested deeper
                than MAX_BRACKET_DEPTH (24); those are not parsed at all (``error`` = 1)
           = 0  if tail or ground truth is not Unicode text (holds a lone surrogate,
                U+D800..U+DFFF): not parsed, ``error`` = 1; ``pred`` and ``format`` come
                from the text with each surrogate replaced by U+FFFD, so ``pred`` is
                always writable as UTF-8

``fallback_unboxed=True`` (off by default, so training keeps the boxed format) lets an
answer without a box be parsed from the last ``FALLBACK_TAIL_CHARS`` characters by
math-verify's LaTeX + plain-expression extractors (``The final answer is $x$`` etc.); such
items keep ``format = 0``.
"""

from __future__ import annotations

import atexit
import functools
import logging
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from verl_ext.reward.answer import bracket_depth, last_boxed_content, normalize_answer, valid_text

__all__ = [
    "DEFAULT_MAX_CHARS",
    "DEFAULT_TIMEOUT_S",
    "KILL_GRACE_S",
    "RESULT_KEYS",
    "WALL_FACTOR",
    "GradeTask",
    "GradingPool",
    "compute_score",
    "default_num_workers",
    "get_pool",
    "grade_task",
    "prepare_item",
    "score_batch",
    "summarize",
]

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_MAX_CHARS = 200_000
MAX_ANSWER_CHARS = 2_000
MAX_BRACKET_DEPTH = 24
FALLBACK_TAIL_CHARS = 600
KILL_GRACE_S = 0.5
WALL_FACTOR = 2.0
WORKER_START_TIMEOUT_S = 120.0
PRED_LOG_CHARS = 200

RESULT_KEYS = ("score", "acc", "format", "timeout", "error", "pred")


def _result(score: float, fmt: bool, pred: str, timeout: bool = False, error: bool = False) -> dict[str, Any]:
    return {
        "score": float(score),
        "acc": float(score),
        "format": float(fmt),
        "timeout": float(timeout),
        "error": float(error),
        "pred": pred[:PRED_LOG_CHARS],
    }


@dataclass(frozen=True)
class GradeTask:
    """What a worker needs: the text to parse as the prediction and the normalised gold."""

    pred_text: str
    gold: str


def prepare_item(
    solution: str, ground_truth: str, fallback_unboxed: bool = False, max_chars: int = DEFAULT_MAX_CHARS
) -> tuple[dict[str, Any] | None, GradeTask | None, bool, str]:
    """Cheap parent-side part of grading: size bound, box extraction, exact-match shortcut.

    Returns ``(final_result, task, has_box, pred)``: exactly one of ``final_result`` (already
    decided, no math-verify needed) and ``task`` (to grade with ``grade_task``) is not None.
    """
    if not isinstance(solution, str):
        solution = "" if solution is None else str(solution)
    # the one place text is made safe: past here no string holds a lone surrogate, so the
    # extraction, math-verify, and verl's or evaluate.py's writes of ``pred`` cannot fail on one
    tail, bad_solution = valid_text(solution[-max_chars:] if max_chars > 0 else solution)
    gold, bad_gold = valid_text(str(ground_truth))
    invalid = bad_solution or bad_gold
    gold = normalize_answer(gold)
    boxed = last_boxed_content(tail)
    if boxed is None:
        if invalid:
            return _result(0.0, False, "", error=True), None, False, ""
        if not fallback_unboxed:
            return _result(0.0, False, ""), None, False, ""
        return None, GradeTask(tail[-FALLBACK_TAIL_CHARS:], gold[:MAX_ANSWER_CHARS]), False, ""
    pred = normalize_answer(boxed)
    if (
        invalid
        or len(pred) > MAX_ANSWER_CHARS
        or len(gold) > MAX_ANSWER_CHARS
        or bracket_depth(pred) > MAX_BRACKET_DEPTH
    ):
        return _result(0.0, True, pred, error=True), None, True, pred
    if pred and pred == gold:
        return _result(1.0, True, pred), None, True, pred
    return None, GradeTask("\\boxed{" + pred + "}", gold), True, pred


@functools.lru_cache(maxsize=4096)
def _parse_gold(gold: str) -> list:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    return parse("\\boxed{" + gold + "}", [LatexExtractionConfig(), ExprExtractionConfig()], parsing_timeout=None)


def _verify_strings(task: GradeTask) -> float:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    gold = _parse_gold(task.gold)
    pred = parse(task.pred_text, [LatexExtractionConfig(), ExprExtractionConfig()], parsing_timeout=None)
    if not gold or not pred:
        return 0.0
    return float(verify(gold, pred, timeout_seconds=None))


class _SoftTimeout(BaseException):
    """Raised by SIGPROF inside a grader; a BaseException so math-verify's ``except Exception`` cannot swallow it."""


def _raise_soft_timeout(signum, frame):
    raise _SoftTimeout()


def grade_task(task: GradeTask, timeout: float) -> tuple[str, float]:
    """Grade one task in the CURRENT process's main thread, bounded by ``timeout`` s of CPU time (SIGPROF).

    Returns ``("ok", score)``, ``("timeout", 0.0)`` or ``("error", 0.0)``.
    """
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("grade_task needs the main thread (SIGPROF); use a GradingPool off the main thread")
    previous = signal.signal(signal.SIGPROF, _raise_soft_timeout)
    signal.setitimer(signal.ITIMER_PROF, timeout)
    try:
        return "ok", _verify_strings(task)
    except _SoftTimeout:
        return "timeout", 0.0
    except Exception:
        return "error", 0.0
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)


def _worker_main(conn) -> None:
    """Worker process loop: receive ``(task, timeout)``, answer ``(status, score)``; ``None`` stops it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # math-verify warns once per process that its own timeout is off: here the bound is ours
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    # pay the lazy imports and parser construction (antlr, sympy printers) before "ready",
    # so they are not charged to the first graded item's time bound
    _verify_strings(GradeTask("\\boxed{\\frac{1}{2}}", "0.5"))
    try:
        conn.send("ready")
        while True:
            message = conn.recv()
            if message is None:
                return
            task, timeout = message
            try:
                reply = grade_task(task, timeout)
            except _SoftTimeout:  # the alarm fired between the grader's return and disarming it
                reply = ("timeout", 0.0)
            conn.send(reply)
    except (EOFError, OSError):  # the parent closed the pool or exited
        return


class _Worker:
    def __init__(self, process, conn):
        self.process = process
        self.conn = conn

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()


class GradingPool:
    """``num_workers`` grading processes; a hung item's worker is killed and replaced.

    Thread-safe: ``run`` checks out an idle worker, so up to ``num_workers`` threads grade
    concurrently (``compute_score`` from verl's executor threads, ``map`` from its own).
    """

    def __init__(self, num_workers: int, start_method: str = "spawn"):
        if num_workers < 1:
            raise ValueError(f"GradingPool num_workers must be >= 1, got {num_workers}")
        self.num_workers = num_workers
        self._ctx = multiprocessing.get_context(start_method)
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self._live: set[_Worker] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._failure = ""
        self.kills = 0
        workers = [self._start() for _ in range(num_workers)]
        for worker in workers:
            self._await_ready(worker)
            self._idle.put(worker)

    def _start(self) -> _Worker:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(target=_worker_main, args=(child_conn,), daemon=True, name="math-reward-grader")
        process.start()
        child_conn.close()
        worker = _Worker(process, parent_conn)
        with self._lock:
            self._live.add(worker)
        return worker

    def _await_ready(self, worker: _Worker) -> None:
        if not worker.conn.poll(WORKER_START_TIMEOUT_S) or worker.conn.recv() != "ready":
            worker.kill()
            raise RuntimeError(f"math-reward grader process did not start within {WORKER_START_TIMEOUT_S:.0f} s")

    def _replace(self, worker: _Worker) -> None:
        with self._lock:
            self._live.discard(worker)
            self.kills += 1
        worker.kill()

        def respawn():
            for attempt in range(3):
                if self._closed:
                    return
                try:
                    fresh = self._start()
                    self._await_ready(fresh)
                    if self._closed:
                        fresh.kill()
                        return
                    self._idle.put(fresh)
                    return
                except Exception as error:
                    if attempt == 2:
                        self._failure = f"a grader process could not be restarted: {error}"
                        self._idle.put(None)  # wakes a waiting run(), which reports the failure

        threading.Thread(target=respawn, daemon=True, name="math-reward-respawn").start()

    def run(self, task: GradeTask, timeout: float) -> tuple[str, float]:
        """Grade one task: ``(status, score)``; killed after ``WALL_FACTOR * timeout + KILL_GRACE_S`` wall seconds."""
        if self._closed:
            raise RuntimeError("GradingPool is closed")
        worker = self._idle.get()
        if worker is None:
            self._idle.put(None)
            raise RuntimeError(f"GradingPool: {self._failure}")
        try:
            worker.conn.send((task, timeout))
            if worker.conn.poll(WALL_FACTOR * timeout + KILL_GRACE_S):
                reply = worker.conn.recv()
                self._idle.put(worker)
                return reply
        except (EOFError, OSError):
            self._replace(worker)
            return "error", 0.0
        self._replace(worker)
        return "timeout", 0.0

    def map(self, tasks: Sequence[GradeTask], timeout: float) -> list[tuple[str, float, float]]:
        """``run`` over ``tasks`` with ``num_workers`` threads: ``[(status, score, latency_s)]`` in order."""

        def timed(task):
            start = time.perf_counter()
            status, score = self.run(task, timeout)
            return status, score, time.perf_counter() - start

        with ThreadPoolExecutor(max_workers=self.num_workers, thread_name_prefix="math-reward") as executor:
            return list(executor.map(timed, tasks))

    def close(self) -> None:
        self._closed = True
        with self._lock:
            workers = list(self._live)
            self._live.clear()
        for worker in workers:
            try:
                worker.conn.send(None)
            except OSError:
                pass
            worker.process.join(timeout=1)
            worker.kill()


_POOLS: dict[tuple[int, int], GradingPool] = {}
_POOLS_LOCK = threading.Lock()


def default_num_workers() -> int:
    """``$CODISTILL_REWARD_WORKERS`` if set, else ``min(4, cpu_count)``."""
    env = os.environ.get("CODISTILL_REWARD_WORKERS")
    if env:
        return int(env)
    return max(1, min(4, os.cpu_count() or 1))


def get_pool(num_workers: int | None = None) -> GradingPool:
    """The process-wide pool with ``num_workers`` workers (created on first use, per pid)."""
    n = default_num_workers() if num_workers is None else int(num_workers)
    key = (os.getpid(), n)
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            pool = GradingPool(n)
            _POOLS[key] = pool
        return pool


@atexit.register
def _close_pools() -> None:
    for (pid, _), pool in list(_POOLS.items()):
        if pid == os.getpid():
            pool.close()
    _POOLS.clear()


def _finish(status: str, score: float, has_box: bool, pred: str) -> dict[str, Any]:
    return _result(
        score if status == "ok" else 0.0, has_box, pred, timeout=status == "timeout", error=status == "error"
    )


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: str,
    extra_info: dict | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    fallback_unboxed: bool = False,
    max_chars: int = DEFAULT_MAX_CHARS,
    num_workers: int | None = None,
    **_: Any,
) -> dict[str, Any]:
    """verl custom reward: 1.0 if the last boxed answer is equivalent to ``ground_truth``.

    Safe to call from any thread. Returns ``{"score", "acc", "format", "timeout", "error",
    "pred"}`` (floats except ``pred``, the extracted answer cut to 200 characters).
    Extra keyword arguments verl may pass (``reward_router_address`` ...) are ignored.
    """
    final, task, has_box, pred = prepare_item(solution_str, ground_truth, fallback_unboxed, max_chars)
    if final is not None:
        return final
    status, score = get_pool(num_workers).run(task, timeout)
    return _finish(status, score, has_box, pred)


def score_batch(
    solutions: Sequence[str],
    ground_truths: Sequence[str],
    timeout: float = DEFAULT_TIMEOUT_S,
    num_workers: int | None = None,
    fallback_unboxed: bool = False,
    max_chars: int = DEFAULT_MAX_CHARS,
) -> list[dict[str, Any]]:
    """Grade ``len(solutions)`` items; ``compute_score``'s dict per item plus ``latency_s``.

    ``num_workers >= 1`` grades in the shared process pool (hung items killed at
    ``WALL_FACTOR * timeout + KILL_GRACE_S``); ``num_workers = 0`` grades sequentially in this
    process (main thread only, CPU-time bound only), the baseline of ``scripts/bench_reward.py``.
    """
    if len(solutions) != len(ground_truths):
        raise ValueError(f"score_batch: {len(solutions)} solutions but {len(ground_truths)} ground_truths")
    results: list[dict[str, Any] | None] = [None] * len(solutions)
    pending: list[tuple[int, GradeTask, bool, str]] = []
    for i, (solution, gold) in enumerate(zip(solutions, ground_truths)):
        start = time.perf_counter()
        final, task, has_box, pred = prepare_item(solution, gold, fallback_unboxed, max_chars)
        if final is not None:
            results[i] = {**final, "latency_s": time.perf_counter() - start}
        else:
            pending.append((i, task, has_box, pred))
    if pending:
        tasks = [p[1] for p in pending]
        if num_workers == 0:
            graded = []
            for task in tasks:
                start = time.perf_counter()
                status, score = grade_task(task, timeout)
                graded.append((status, score, time.perf_counter() - start))
        else:
            graded = get_pool(num_workers).map(tasks, timeout)
        for (i, _, has_box, pred), (status, score, latency) in zip(pending, graded):
            results[i] = {**_finish(status, score, has_box, pred), "latency_s": latency}
    return results  # type: ignore[return-value]


def summarize(results: Sequence[dict[str, Any]]) -> dict[str, float]:
    """``{"n", "accuracy", "format_rate", "timeouts", "errors"}`` over per-item result dicts."""
    n = len(results)
    if n == 0:
        return {"n": 0, "accuracy": 0.0, "format_rate": 0.0, "timeouts": 0, "errors": 0}
    return {
        "n": n,
        "accuracy": sum(r["score"] for r in results) / n,
        "format_rate": sum(r["format"] for r in results) / n,
        "timeouts": int(sum(r["timeout"] for r in results)),
        "errors": int(sum(r["error"] for r in results)),
    }
