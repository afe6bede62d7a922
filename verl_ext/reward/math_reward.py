"""Math-verify outcome reward for verl (``compute_score``) and evaluation (``score_batch``).

Point verl at it with either form (both are verl 0.9.1 ``load_extern_object`` paths)::

    reward.custom_reward_function.path=pkg://verl_ext.reward.math_reward
    reward.custom_reward_function.path=/abs/path/verl_ext/reward/math_reward.py
    reward.custom_reward_function.name=compute_score
    +reward.custom_reward_function.reward_kwargs.timeout=5.0          # optional
    +reward.custom_reward_function.reward_kwargs.fallback_unboxed=false  # optional

Per item: the last balanced ``\\boxed{}`` of the response (``format`` = 1 iff present) is
checked against the ground truth with math-verify's ``parse`` + ``verify``, bounded in time
(default 5 s) in a process pool that kills and replaces a hung worker; a timeout, a parser
error or text that is not valid Unicode (a lone surrogate in the response or the ground
truth) scores 0 and is counted (``timeout``/``error`` keys), never raised. ``timeout`` is
seconds of grading CPU time; a worker silent for ``2 * timeout + 0.5`` wall seconds is killed. The equations,
the thread-safety argument and verl's call path are in ``verl_ext/reward/grading.py``.
"""

from verl_ext.reward import grading
from verl_ext.reward.grading import (  # noqa: F401
    DEFAULT_MAX_CHARS,
    DEFAULT_TIMEOUT_S,
    KILL_GRACE_S,
    RESULT_KEYS,
    WALL_FACTOR,
    GradeTask,
    GradingPool,
    compute_score,
    default_num_workers,
    get_pool,
    grade_task,
    prepare_item,
    score_batch,
    summarize,
)

__all__ = list(grading.__all__)
