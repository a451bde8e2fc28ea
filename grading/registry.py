"""Every check the grader runs, declared once: id, task, part, scope and title.

The rubric (``grading/rubric.toml``) gives the points and may change titles, never invent ids.
``scope`` is ``"course"`` for what the assignment asks, ``"beyond"`` for extensions (batches,
other activations, dampening, Nesterov), worth 0 points unless the rubric says
otherwise; a beyond check never changes a course check's verdict.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Check:
    id: str
    task: str          # the gradebook column it counts for: backpropagation, train_manual_update, train, notebooks
    part: str          # who runs it: backprop, sgd (the runner), notebook (a kernel), static (the grader)
    scope: str         # course or beyond
    title: str


CHECKS = (
    # --- backpropagation.ipynb
    Check("load_backpropagation", "backpropagation", "backprop", "course",
          "MyNet and backpropagation load from backpropagation.ipynb"),
    Check("backprop_by_hand", "backpropagation", "static", "course",
          "backpropagation computes the gradients by hand (no autograd, no numerical differentiation)"),
    Check("backprop_toy", "backpropagation", "backprop", "course",
          "Toy net MyNet([2, 3, 2]), one sample at a time, SSE"),
    Check("backprop_mnist", "backpropagation", "backprop", "course",
          "MNIST net MyNet([576, 16, 10]), one sample at a time, SSE"),
    Check("backprop_square", "backpropagation", "backprop", "course",
          "Square layers MyNet([3, 3, 3, 2]) (tanh), one sample at a time, SSE"),
    Check("backprop_deep", "backpropagation", "backprop", "course",
          "Three hidden layers MyNet([2, 5, 4, 3, 2]) (tanh), one sample at a time, SSE"),
    Check("backprop_batch", "backpropagation", "backprop", "beyond",
          "Beyond the course: a batch of samples in one call"),
    Check("backprop_activations", "backpropagation", "backprop", "beyond",
          "Beyond the course: other activations per layer (sigmoid, ReLU, identity)"),
    # --- gradient_descent.ipynb
    Check("load_gradient_descent", "train_manual_update", "sgd", "course",
          "MyMLP, train and train_manual_update load from gradient_descent.ipynb"),
    Check("mymlp_architecture", "train", "sgd", "course",
          "MyMLP computes the course's 768-128-32-2 ReLU network"),
    Check("train_sgd", "train", "sgd", "course",
          "train with torch.optim.SGD follows the standard loop"),
    Check("manual_plain", "train_manual_update", "sgd", "course",
          "train_manual_update equals torch.optim.SGD: plain"),
    Check("manual_weight_decay", "train_manual_update", "sgd", "course",
          "train_manual_update equals torch.optim.SGD: weight decay"),
    Check("manual_momentum", "train_manual_update", "sgd", "course",
          "train_manual_update equals torch.optim.SGD: momentum"),
    Check("manual_combined", "train_manual_update", "sgd", "course",
          "train_manual_update equals torch.optim.SGD: momentum and weight decay"),
    Check("manual_dampening", "train_manual_update", "sgd", "beyond",
          "Beyond the course: momentum with dampening"),
    Check("manual_nesterov", "train_manual_update", "sgd", "beyond",
          "Beyond the course: Nesterov momentum"),
    # --- the notebooks, re-executed top to bottom in a sandboxed kernel
    Check("notebook_backpropagation", "notebooks", "notebook", "course",
          "backpropagation.ipynb runs top to bottom"),
    Check("notebook_gradient_descent", "notebooks", "notebook", "course",
          "gradient_descent.ipynb runs top to bottom"),
)

BY_ID = {c.id: c for c in CHECKS}
IDS = tuple(BY_ID)
STATUSES = ("pass", "partial", "fail", "error", "timeout", "skipped", "not_gradable")


def ids(part: str | None = None, task: str | None = None, scope: str | None = None) -> tuple[str, ...]:
    return tuple(c.id for c in CHECKS if (part is None or c.part == part) and (task is None or c.task == task)
                 and (scope is None or c.scope == scope))
