r"""Learning-rate schedules as a setting of every optimizer: linear warmup, then
cosine, linear or no decay.

With progress :math:`p \in [0, 1]` (the share of training done), warmup share
:math:`w \in [0, 1)` and final fraction :math:`f`, the learning rate is
:math:`\eta(p) = m(p)\, \eta_0`, :math:`\eta_0` the optimizer's own ``lr``, with

.. math::
   m(p) = \begin{cases}
     p / w & p < w \quad\text{(linear warmup from 0, Goyal et al. 2017)}\\
     f + (1 - f)\, \tfrac12 \left(1 + \cos \pi q\right) & \text{cosine (Loshchilov \& Hutter 2017)}\\
     1 - (1 - f)\, q & \text{linear}\\
     1 & \text{constant}
   \end{cases}
   \qquad q = \frac{p - w}{1 - w},

so the decay starts at :math:`m = 1` when warmup ends and reaches :math:`f` at the
end of training.  AlgoPerf's baselines (Dahl et al. 2023) tune exactly these: a
warmup share (e.g. 0.05) and cosine decay to 0 -- the defaults here.

**Which step gets which rate.**  A step takes the rate of the progress it *ends*
at: with :math:`T` steps, step :math:`k = 1, \dots, T` takes :math:`m(k/T)`.  So
no step runs at rate 0 during warmup, warmup ends exactly at step :math:`wT`, and
the last step takes :math:`f\,\eta_0`.  In torch terms: a
``torch.optim.lr_scheduler.LambdaLR`` whose ``lr_lambda(i)`` (``i`` = steps taken)
is :math:`m((i + 1)/T)`, stepped after every ``optimizer.step(...)``
(:func:`build_schedule`, or :func:`hpo2.optim.schedule_from_config` from a config).

**How long training is** (what :math:`p` measures) is for the caller to say: a
step count in your own loop (:class:`StepProgress`), or any function of the steps
taken.  hpo2's training loop (:mod:`hpo2.train`) predicts the share of the budget
used when the next step ends, the largest over the budget's set limits: exact for
``epochs`` and ``steps`` (:math:`(k+1)/T`); for ``seconds`` and
``grad_equivalents`` from the pace so far (used share :math:`\times (k+1)/k` after
:math:`k` steps), which equals :math:`(k+1)/T` whenever the pace is steady.

**What it scales.**  Every group's ``lr`` (``LambdaLR``) and any other group entry
named ``*_lr`` (K-FAC's ``adam_lr``): whatever each optimizer's ``lr`` means --
the step size of the first-order and diagonal methods, the initial line-search
step of Newton-CG, Hessian-free and L-BFGS (Newton-CG's ``trust_region``
globalization has no step size: its steps are not scaled), the gradient step
outside saddle-free Newton's subspace.  An optimizer without an ``lr`` in its
parameter groups is refused.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from numbers import Integral
from typing import Annotated, ClassVar, Literal

from pydantic import Field
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from hpo2.errors import SettingsError
from hpo2.optim.settings import Choice, FloatRange, OptimizerSettings

SCHEDULE_KEY = "schedule"
DECAYS = ("cosine", "linear", "constant")

#: the progress (share of training done, in [0, 1]) at the end of the next step, given the steps taken so far
Progress = Callable[[int], float]


class ScheduleSettings(OptimizerSettings):
    """A warmup-then-decay learning-rate schedule (the module docstring has the math)."""

    family: ClassVar[str] = "schedule"
    reference: ClassVar[str] = (
        "Goyal et al. 2017 (arXiv 1706.02677, warmup); Loshchilov & Hutter, ICLR 2017 (cosine); "
        "AlgoPerf baselines, Dahl et al. 2023 (arXiv 2306.07179)"
    )

    warmup: Annotated[float, Field(ge=0, lt=1), FloatRange(0.0, 0.2)] = 0.05
    """Share of training over which the rate rises linearly from 0 to lr (AlgoPerf's baselines: 0.05)."""
    decay: Annotated[Literal["cosine", "linear", "constant"], Choice(DECAYS)] = "cosine"
    """After warmup: cosine or linear decay to final_fraction x lr, or constant lr."""
    final_fraction: Annotated[
        float, Field(ge=0, le=1), FloatRange(0.0, 0.3, when=("decay", ("cosine", "linear")))
    ] = 0.0
    """The rate at the end of training, as a fraction of lr (cosine and linear decay; unused by constant)."""

    def multiplier(self, progress: float) -> float:
        r""":math:`m(p)`, the rate as a fraction of ``lr`` at progress ``p`` (clamped to [0, 1])."""
        p = min(max(progress, 0.0), 1.0)
        if p < self.warmup:
            return p / self.warmup
        if self.decay == "constant":
            return 1.0
        q = (p - self.warmup) / (1.0 - self.warmup)
        f = self.final_fraction
        if self.decay == "cosine":
            return f + (1.0 - f) * 0.5 * (1.0 + math.cos(math.pi * q))
        return 1.0 - (1.0 - f) * q

    def describe(self) -> str:
        """One line for people: ``warmup 5% then cosine decay to 0.1 x lr``."""
        warmup = f"linear warmup over {self.warmup:.3g} of training, then " if self.warmup else ""
        if self.decay == "constant":
            return f"{warmup}constant lr"
        return f"{warmup}{self.decay} decay to {self.final_fraction:.3g} x lr at the end"


@dataclass(frozen=True)
class StepProgress:
    """Progress over a known number of steps: the step after ``i`` taken ends at ``(i + 1) / total_steps``."""

    total_steps: int

    def __post_init__(self) -> None:
        if isinstance(self.total_steps, bool) or not isinstance(self.total_steps, Integral) or self.total_steps < 1:
            raise SettingsError(f"total_steps = {self.total_steps!r}: give the number of optimizer steps, an int >= 1")

    def __call__(self, steps_taken: int) -> float:
        return min(1.0, (steps_taken + 1) / self.total_steps)


@dataclass(frozen=True)
class Multiplier:
    """``LambdaLR``'s ``lr_lambda``: :math:`m` at the progress ``progress`` predicts for the next step."""

    settings: ScheduleSettings
    progress: Progress

    def __call__(self, steps_taken: int) -> float:
        return self.settings.multiplier(self.progress(steps_taken))


class WarmupDecay(LambdaLR):
    """``LambdaLR`` over every group's ``lr``, that also scales each group's other
    ``*_lr`` entries (K-FAC's ``adam_lr``) by the same multiplier.  Step it after
    every ``optimizer.step(...)``; ``optimizer.param_groups[0]["lr"]`` is then the
    next step's rate."""

    def __init__(self, optimizer: Optimizer, settings: ScheduleSettings, progress: Progress) -> None:
        missing = [i for i, group in enumerate(optimizer.param_groups) if "lr" not in group]
        if missing:
            raise SettingsError(
                f"{SCHEDULE_KEY}: {type(optimizer).__name__} has no 'lr' in its parameter group(s) {missing}, so "
                "there is no learning rate to schedule; remove settings.schedule for this optimizer"
            )
        self.settings = settings
        self.other_rates = [  # initial_lr is LambdaLR's record of lr's base, not a rate
            {k: float(v) for k, v in group.items() if k.endswith("_lr") and k != "initial_lr" and _is_number(v)}
            for group in optimizer.param_groups
        ]
        super().__init__(optimizer, Multiplier(settings, progress))

    def step(self, epoch: int | None = None) -> None:
        super().step(epoch)
        for group, rates in zip(self.optimizer.param_groups, self.other_rates):
            scale = group["lr"] / group["initial_lr"]
            for key, base in rates.items():
                group[key] = base * scale


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def build_schedule(optimizer: Optimizer, settings: ScheduleSettings, progress: Progress | int) -> WarmupDecay:
    """The schedule over ``optimizer``'s groups; ``progress`` is the number of steps
    training will take, or a :data:`Progress` function (see the module docstring).

    Example:
        Ten steps at lr 1.0, warmup over the first 20%, linear decay to 0.1:

        >>> import torch
        >>> from hpo2.optim.schedules import ScheduleSettings, build_schedule
        >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        >>> schedule = build_schedule(opt, ScheduleSettings(warmup=0.2, decay="linear", final_fraction=0.1), 10)
        >>> rates = []
        >>> for _ in range(10):
        ...     rates.append(round(opt.param_groups[0]["lr"], 4))
        ...     opt.step()
        ...     schedule.step()
        >>> rates
        [0.5, 1.0, 0.8875, 0.775, 0.6625, 0.55, 0.4375, 0.325, 0.2125, 0.1]
    """
    return WarmupDecay(optimizer, settings, progress if callable(progress) else StepProgress(progress))
