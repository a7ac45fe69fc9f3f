"""The one training loop: trials and ``hpo2 train`` both run it.

It trains a task with an optimizer config under a budget (epochs, steps, wall
seconds or gradient-equivalents, whichever is reached first), evaluates on the
validation split every epoch (or every ``eval_every_steps`` steps), and reports
each evaluation through a callback -- the loop knows nothing of Optuna or MLflow.

Cost is counted in **gradient-equivalents**: hpo2's optimizers report theirs per
step (gradients + curvature products + forward passes / 3, see
:mod:`hpo2.optim.base`); a first-order step counts one.  The unit is one gradient
on the task's batch.

**Data regime.**  An optimizer whose settings carry ``batch_size``
(:class:`~hpo2.optim.settings.DataRegimeSettings`, e.g. Hessian-free's ``"full"``:
the gradient on the whole training set, Martens 2010) gets batches of that size;
an epoch is still one pass over the samples (fewer, larger steps), and its
gradient-equivalents are scaled by its batch over the task's, so budgets in
seconds or gradient-equivalents and time-to-target compare with Adam's.

**Data.**  A split of tensors (:class:`~hpo2.tasks.base.Split`) is placed on the
device once and batched there (:class:`~hpo2.tasks.placement.DeviceBatches`); a
``Dataset`` split is read through a ``DataLoader`` in the same seeded order
(:class:`~hpo2.tasks.loading.DatasetBatches`: the task's ``loader_workers``, pinned
memory and non-blocking copies on CUDA).  On a Dataset, a data regime larger than
the task's batch is **streamed**: each step's batch is an
:class:`~hpo2.tasks.loading.IndexWindow` read a task batch at a time, and the
optimizer gets a :class:`~hpo2.optim.closure.StreamingClosure` that accumulates the
gradient over it (memory bounded by the task's batch; curvature on a chunk of at
most one task batch).  Only optimizers that stream (Hessian-free, Newton-CG) can;
any other is refused before training with one clear line.  Validation streams the
validation split in batches (2048 samples for tensors, the task's batch for a
Dataset).

**The optimizer's hooks** are declared once, with their defaults, by
:class:`~hpo2.optim.base.LoopOptimizer`, and the loop steps through
:func:`~hpo2.optim.stepping.take_step` and :func:`~hpo2.optim.stepping.take_snapshot`
(the contract test calls the same two).  **Snapshots**: an optimizer that
``takes_snapshots`` (SVRG) gets ``snapshot(data, batch_size)`` called at each epoch
start with a :class:`~hpo2.optim.closure.BatchClosure` over the training set (a
:class:`~hpo2.optim.closure.StreamingClosure` on a Dataset); the
gradient-equivalents it returns are added and its wall time is training time.

**Schedules.**  An optimizer config with ``settings.schedule``
(:mod:`hpo2.optim.schedules`) has its learning rate set after every step for the
next one, at the share of the budget that step will have used when it ends
(exact for epochs and steps, from the pace so far for seconds and
gradient-equivalents); each step's diagnostics carry the rate it took (``lr``).

Time-to-target is the
wall time and gradient-equivalents until the task's target validation metric is
first reached.

A run that diverges (non-finite loss, or a loss above ``divergence_factor`` times
its first value) stops early with ``status="diverged"`` and the reason; it never
raises for that.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import torch
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from torch import Tensor

from hpo2.errors import SettingsError
from hpo2.optim import BatchClosure, CurvatureOptimizer, LoopOptimizer, from_config, schedule_from_config
from hpo2.optim.closure import DataClosure, StreamingClosure
from hpo2.optim.settings import DataRegimeSettings
from hpo2.optim.stepping import take_snapshot, take_step
from hpo2.tasks import Task, loss_and_metric
from hpo2.tasks.base import Split, SplitData, mean_loss_and_metric
from hpo2.tasks.loading import DatasetBatches, IndexWindow
from hpo2.tasks.placement import DeviceBatches, fits, free_bytes, split_bytes
from hpo2.tasks.source import TaskSection, resolve_task

MAX_SECONDS = 30 * 24 * 3600  # 30 days: a longer budget is a typo, not a plan
#: devices a trial can train on: auto (CUDA when there is one), the CPU, a CUDA GPU, Apple's MPS
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?|mps")


def check_device(value: str) -> str:
    """A config's ``device``: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (``meta`` and
    typos are refused when the file is read, not as a traceback in the first trial)."""
    if not DEVICE_PATTERN.fullmatch(value):
        raise ValueError("allowed: auto, cpu, cuda, cuda:N (a GPU's index), mps")
    return value


#: a config's device, checked by :func:`check_device`
Device = Annotated[str, AfterValidator(check_device)]


class Budget(BaseModel):
    """Stop when any set limit is reached; every limit is finite and bounded, so a
    typo (``epochs: 1e9``, ``.inf``) is refused instead of running for ever."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    epochs: float | None = Field(default=None, gt=0, le=100_000)
    steps: int | None = Field(default=None, ge=1, le=1_000_000_000)
    seconds: float | None = Field(default=None, gt=0, le=MAX_SECONDS)
    grad_equivalents: float | None = Field(default=None, gt=0, le=1e12)

    @model_validator(mode="after")
    def _at_least_one(self) -> Budget:
        if all(v is None for v in (self.epochs, self.steps, self.seconds, self.grad_equivalents)):
            raise ValueError("set at least one of epochs, steps, seconds, grad_equivalents")
        return self


class ConfigSection(BaseModel):
    """``{name, settings}`` of a task or an optimizer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    settings: dict[str, Any] = Field(default_factory=dict)


class TrainConfig(BaseModel):
    """What ``hpo2 train --config`` reads and ``hpo2 study best --export`` writes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: TaskSection
    optimizer: ConfigSection
    budget: Budget = Budget(epochs=1)
    seed: int = 0
    device: Device = "auto"
    eval_every_steps: int | None = Field(default=None, ge=1)
    divergence_factor: float = Field(default=1e3, gt=1)
    tracking_uri: str | None = None
    experiment: str = "hpo2-train"
    study: dict[str, Any] | None = Field(default=None, description="provenance written by `hpo2 study best --export`")
    reuse: dict[str, str] | None = Field(
        default=None, description="what a loop of your own must honour, written by `hpo2 study best --export`"
    )


@dataclass
class Evaluation:
    """One validation point of the learning curve."""

    epoch: float
    step: int
    train_loss: float
    valid_loss: float
    valid_metric: float
    wall_seconds: float
    grad_equivalents: float

    def metrics(self) -> dict[str, float]:
        """The values a tracking run logs at this evaluation's ``step`` (``hpo2 train`` and study trials alike)."""
        return {"train_loss": self.train_loss, "valid_loss": self.valid_loss, "valid_metric": self.valid_metric,
                "wall_seconds": self.wall_seconds, "grad_equivalents": self.grad_equivalents, "epoch": self.epoch}


@dataclass
class TrainResult:
    """How a run ended and its learning curve."""

    status: Literal["completed", "diverged", "stopped"]
    reason: str
    history: list[Evaluation]
    steps: int
    wall_seconds: float
    grad_equivalents: float
    metric: str
    higher_is_better: bool
    time_to_target_seconds: float | None = None
    time_to_target_grad_equivalents: float | None = None
    step_diagnostics: list[dict[str, Any]] = field(default_factory=list)

    @property
    def final(self) -> Evaluation | None:
        return self.history[-1] if self.history else None

    @property
    def best_metric(self) -> float | None:
        values = [e.valid_metric for e in self.history if math.isfinite(e.valid_metric)]
        if not values:
            return None
        return max(values) if self.higher_is_better else min(values)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/None: CUDA when available, else CPU; anything else as given (a name outside
    :func:`check_device`'s is a ValueError saying what is allowed)."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, str):
        try:
            check_device(device)
        except ValueError as exc:
            raise ValueError(f"device = {device!r}: {exc}") from None
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available here; use 'cpu' or 'auto'")
    return resolved


def evaluate(
    task: Task, data: SplitData | DatasetBatches, batch_size: int | None = None, device: torch.device | None = None
) -> tuple[float, float]:
    """Mean loss and metric of the task's model over a split (eval mode, batched).

    A :class:`~hpo2.tasks.base.Split` goes in batches of ``batch_size`` (default
    2048), each copied to ``device`` when given; a ``Dataset`` (or its
    :class:`~hpo2.tasks.loading.DatasetBatches`) streams through a ``DataLoader`` in
    batches of ``batch_size`` (default the task's), onto ``device`` (default the CPU).
    """
    if isinstance(data, Split):
        return loss_and_metric(task.model, task.loss_fn, task.metric_fn, data.x, data.y, batch_size or 2048, device)
    if not isinstance(data, DatasetBatches):
        data = DatasetBatches(data, device or torch.device("cpu"), 0, task.loader_workers, task.collate_fn)
    batches = data.in_order(batch_size or task.batch_size)
    return mean_loss_and_metric(task.model, task.loss_fn, task.metric_fn, batches, len(data))


def resolve_batch_size(optimizer: LoopOptimizer, task_batch: int, n_train: int) -> int:
    """The gradient batch of an optimizer's data regime (its ``batch_size`` setting,
    :class:`~hpo2.optim.settings.DataRegimeSettings`): the task's batch when unset,
    the whole training set for ``"full"``, never more than the training set.  A
    wrapper with a ``base`` optimizer (SAM) keeps its base's regime."""
    regime = optimizer.base if optimizer.base is not None else optimizer
    settings = regime.settings if isinstance(regime, CurvatureOptimizer) else None
    wanted = settings.batch_size if isinstance(settings, DataRegimeSettings) else None
    size = task_batch if wanted is None else n_train if wanted == "full" else int(wanted)
    return max(1, min(size, n_train))


Report = Callable[[Evaluation], bool | None]
StepHook = Callable[[int, dict[str, Any]], None]


class _TrainingLoop:
    """One run of :func:`run_training`, in named steps: :meth:`train_epoch` draws the
    batches, :meth:`take_step` steps the optimizer and counts the cost,
    :meth:`divergence` and :meth:`budget_left` decide when to stop, :meth:`record`
    evaluates and reports, :meth:`result` assembles the :class:`TrainResult`."""

    def __init__(self, task: Task, optimizer_config: dict[str, Any], budget: Budget, seed: int, device: torch.device,
                 eval_every_steps: int | None, divergence_factor: float, report: Report | None,
                 on_step: StepHook | None) -> None:
        self.task, self.budget, self.report, self.on_step = task, budget, report, on_step
        self.eval_every_steps, self.divergence_factor = eval_every_steps, divergence_factor
        self.model = task.model.to(device)
        task.loss_fn.to(device)
        tensors = [split for split in (task.train, task.valid) if isinstance(split, Split)]
        resident = fits(split_bytes(*tensors), free_bytes(device))
        self.train: DeviceBatches | DatasetBatches = (
            DeviceBatches(task.train, device, seed, resident) if isinstance(task.train, Split)
            else DatasetBatches(task.train, device, seed, task.loader_workers, task.collate_fn)
        )
        # validation follows the training split's placement: resident together, or copied per batch
        self.valid: Split | DatasetBatches = (
            DatasetBatches(task.valid, device, seed, task.loader_workers, task.collate_fn)
            if not isinstance(task.valid, Split) else task.valid.to(device) if resident else task.valid
        )
        self.valid_device = None if resident else device
        self.optimizer = from_config(optimizer_config, self.model)
        n = len(self.train)
        self.batch_size = resolve_batch_size(self.optimizer, task.batch_size, n)
        self.streamed = isinstance(self.train, DatasetBatches) and self.batch_size > task.batch_size
        if self.streamed and not self.optimizer.streams:
            raise SettingsError(
                f"optimizer {optimizer_config.get('name')!r}: settings.batch_size = "
                f"{optimizer_config.get('settings', {}).get('batch_size')!r} on task {task.name!r}, whose training "
                f"split is a Dataset, needs the gradient accumulated over loader batches, which "
                f"{type(self.optimizer).__name__} cannot do; allowed: null or at most the task's batch "
                f"({task.batch_size})"
            )
        # gradient-equivalents are counted in gradients on the task's batch, whatever batch the optimizer takes
        self.unit = self.batch_size / min(task.batch_size, n)
        self.steps_per_epoch = max(1, n // self.batch_size)
        self.history: list[Evaluation] = []
        self.diagnostics_log: list[dict[str, Any]] = []
        self.grad_eq, self.step = 0.0, 0
        self.first_loss: float | None = None
        self.last_train_loss = math.nan
        self.status, self.reason = "completed", "budget reached"
        self.ttt_seconds: float | None = None
        self.ttt_grad: float | None = None
        self.start = time.perf_counter()
        self.excluded = 0.0  # seconds spent in evaluation and callbacks: not training time
        self.schedule = schedule_from_config(optimizer_config, self.optimizer, progress=self.next_step_progress)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start - self.excluded

    def budget_left(self) -> bool:
        budget = self.budget
        return not (
            (budget.epochs is not None and self.step >= budget.epochs * self.steps_per_epoch)
            or (budget.steps is not None and self.step >= budget.steps)
            or (budget.seconds is not None and self.elapsed() >= budget.seconds)
            or (budget.grad_equivalents is not None and self.grad_eq >= budget.grad_equivalents)
        )

    def record(self) -> bool:
        """Evaluate on the validation split, note time-to-target, report; True: stop."""
        paused = time.perf_counter()
        valid_loss, valid_metric = evaluate(self.task, self.valid, device=self.valid_device)
        entry = Evaluation(self.step / self.steps_per_epoch, self.step, self.last_train_loss, valid_loss, valid_metric,
                           paused - self.start - self.excluded, self.grad_eq)
        self.history.append(entry)
        if self.ttt_seconds is None and math.isfinite(valid_metric) and self.task.reached(valid_metric):
            self.ttt_seconds, self.ttt_grad = entry.wall_seconds, entry.grad_equivalents
        stop = bool(self.report(entry)) if self.report is not None else False
        self.excluded += time.perf_counter() - paused
        return stop

    def take_snapshot(self) -> None:
        """The optimizer's epoch-start snapshot (:func:`~hpo2.optim.stepping.take_snapshot`):
        its cost counts, its time is training time."""
        self.grad_eq += take_snapshot(self.optimizer, self.whole_training_set, self.batch_size)

    def whole_training_set(self) -> DataClosure:
        """A closure over the whole training split (on the device, or streamed from a Dataset)."""
        if isinstance(self.train, DeviceBatches):
            data = self.train.on_device()
            whole: tuple[Tensor, Tensor] | IndexWindow = (data.x, data.y)
        else:
            whole = self.train.window(torch.arange(len(self.train)), min(self.task.batch_size, len(self.train)))
        return self.closure(whole)

    def closure(self, batch: tuple[Tensor, Tensor] | IndexWindow) -> DataClosure:
        """The closure over a step's batch: in memory, or streamed from a Dataset."""
        if isinstance(batch, IndexWindow):
            return StreamingClosure(self.model, self.task.loss_fn, batch)
        return BatchClosure(self.model, self.task.loss_fn, *batch)

    def epoch_batches(self, order: Tensor) -> Iterator[tuple[Tensor, Tensor] | IndexWindow]:
        """The epoch's steps: ``steps_per_epoch`` batches of ``batch_size`` samples in ``order``."""
        bs = self.batch_size
        slices = (order[b * bs : (b + 1) * bs] for b in range(self.steps_per_epoch))
        if isinstance(self.train, DeviceBatches):
            return (self.train.batch(index) for index in slices)  # the resident-tensor path
        if self.streamed:
            return (self.train.window(index, self.task.batch_size) for index in slices)
        return self.train.batches(list(slices))

    def take_step(self, batch: tuple[Tensor, Tensor] | IndexWindow) -> None:
        """One optimizer step on a batch (:func:`~hpo2.optim.stepping.take_step`); its cost
        and loss are counted, its diagnostics kept."""
        diag = take_step(self.optimizer, self.closure(batch))[1]
        self.step += 1
        self.grad_eq += float(diag.get("grad_equivalents", 1.0)) * self.unit
        self.advance_schedule(diag)
        self.last_train_loss = float(diag.get("loss", math.nan))
        self.diagnostics_log.append(diag)
        if self.on_step is not None:
            self.on_step(self.step, diag)
        if self.first_loss is None and math.isfinite(self.last_train_loss):
            self.first_loss = abs(self.last_train_loss)
        self.divergence(str(diag.get("status", "")))

    def next_step_progress(self, steps_taken: int) -> float:
        """The share of the budget used when the next step ends (:mod:`hpo2.optim.schedules`): the largest
        over the set limits; exact for epochs and steps, from the pace so far for seconds and
        gradient-equivalents (a first step's pace is unknown: 0 for seconds, one gradient for the latter)."""
        budget, k = self.budget, steps_taken
        counted = (budget.steps, budget.epochs * self.steps_per_epoch if budget.epochs else None)
        shares = [(k + 1) / total for total in counted if total]
        for used, limit, first_step in ((self.elapsed(), budget.seconds, 0.0),
                                        (self.grad_eq, budget.grad_equivalents, self.unit)):
            if limit:
                shares.append((used * (k + 1) / k if k else first_step) / limit)
        return min(1.0, max(shares, default=0.0))

    def advance_schedule(self, diag: dict[str, Any]) -> None:
        """Log the rate this step took (``lr``, the first parameter group's), then set the next step's."""
        if self.schedule is not None:
            diag["lr"] = float(self.optimizer.param_groups[0]["lr"])
            self.schedule.step()

    def divergence(self, step_status: str) -> None:
        """Mark the run diverged on a non-finite loss or gradient, or a loss far above its first."""
        loss, step = self.last_train_loss, self.step
        if not math.isfinite(loss) or step_status.startswith("nonfinite"):
            self.status, self.reason = "diverged", f"non-finite loss or gradient at step {step}"
        elif self.first_loss is not None and abs(loss) > self.divergence_factor * max(self.first_loss, 1e-12):
            self.status = "diverged"
            self.reason = f"loss {loss:.4g} exceeded {self.divergence_factor:g} x its first value at step {step}"

    def due_for_evaluation(self, at_epoch_end: bool) -> bool:
        every = self.eval_every_steps
        return bool(every and self.step % every == 0) or (not every and at_epoch_end)

    def train_epoch(self) -> bool:
        """One pass over the training split in a fresh order; True: the run stops."""
        order = self.train.epoch_order()
        self.take_snapshot()
        for b, batch in enumerate(self.epoch_batches(order)):
            self.take_step(batch)
            if self.status == "diverged":
                return True
            if self.due_for_evaluation(b == self.steps_per_epoch - 1) and self.record():
                self.status, self.reason = "stopped", f"stopped by the report callback at step {self.step}"
                return True
            if not self.budget_left():
                break
        return False

    def run(self) -> TrainResult:
        self.model.train()
        while self.budget_left():
            if self.train_epoch():
                break
        unrecorded = self.status != "diverged" and (not self.history or self.history[-1].step != self.step)
        if unrecorded and self.record() and self.status == "completed":
            self.status, self.reason = "stopped", f"stopped by the report callback at step {self.step}"
        return self.result()

    def result(self) -> TrainResult:
        return TrainResult(
            status=self.status,  # type: ignore[arg-type]  # one of the Literal's values, set above
            reason=self.reason,
            history=self.history,
            steps=self.step,
            wall_seconds=self.elapsed(),
            grad_equivalents=self.grad_eq,
            metric=self.task.metric,
            higher_is_better=self.task.higher_is_better,
            time_to_target_seconds=self.ttt_seconds,
            time_to_target_grad_equivalents=self.ttt_grad,
            step_diagnostics=self.diagnostics_log,
        )


def run_training(
    task: Task,
    optimizer_config: dict[str, Any] | ConfigSection,
    budget: Budget,
    *,
    seed: int = 0,
    device: str | torch.device | None = "auto",
    eval_every_steps: int | None = None,
    divergence_factor: float = 1e3,
    report: Report | None = None,
    on_step: StepHook | None = None,
) -> TrainResult:
    """Train ``task`` under ``budget``; see the module docstring.

    A split of tensors is placed on the device once (:class:`~hpo2.tasks.placement.DeviceBatches`);
    a Dataset split is read through a ``DataLoader`` (:class:`~hpo2.tasks.loading.DatasetBatches`).

    Args:
        optimizer_config: ``{"name": ..., "settings": {...}}`` (registry names).
        report: called with each :class:`Evaluation`; returning True stops the run
            (``status="stopped"``), which is how a study prunes.
        on_step: called with ``(step, diagnostics)`` after every step.
    """
    dev = resolve_device(device)
    torch.manual_seed(seed)
    if isinstance(optimizer_config, ConfigSection):
        optimizer_config = optimizer_config.model_dump()
    loop = _TrainingLoop(task, optimizer_config, budget, seed, dev, eval_every_steps, divergence_factor, report,
                         on_step)
    return loop.run()


def train_from_config(
    config: TrainConfig, report: Report | None = None, on_step: StepHook | None = None
) -> tuple[Task, TrainResult]:
    """Build the config's task (a built-in, or the user's entrypoint, imported now) and
    run :func:`run_training` on it."""
    torch.manual_seed(config.seed)
    task = resolve_task(config.task).build(config.task.settings)
    result = run_training(
        task,
        config.optimizer,
        config.budget,
        seed=config.seed,
        device=config.device,
        eval_every_steps=config.eval_every_steps,
        divergence_factor=config.divergence_factor,
        report=report,
        on_step=on_step,
    )
    return task, result
