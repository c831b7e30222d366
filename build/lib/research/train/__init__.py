"""Training: `TrainState`, the pure `train_step`/`eval_step`, and the host loop."""

from research.train.loop import build_state, evaluate, load_run, train_and_evaluate
from research.train.state import TrainState
from research.train.steps import eval_step, eval_step_jit, train_step, train_step_jit

__all__ = ["TrainState", "build_state", "eval_step", "eval_step_jit", "evaluate", "load_run",
           "train_and_evaluate", "train_step", "train_step_jit"]
