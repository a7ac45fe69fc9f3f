"""Several worker processes per device: ``hpo2 worker --trials-per-device N``.

A small-model trial leaves a GPU mostly idle (the loop waits on Python, on the
optimizer's host-side control flow, on evaluation), so several trials at once keep
it busy.  The parent process starts ``N`` ordinary ``hpo2 worker`` processes per
visible device; each sees one GPU (``CUDA_VISIBLE_DEVICES`` set to that GPU's id, so
its ``cuda`` is that GPU) or, on a machine without one, the CPU.  They share the
study's storage, and the study's trial budget (:mod:`hpo2.study.budget`: a lock
every worker takes before it starts a trial) keeps ``n_trials`` exact however many
there are.  Processes rather than threads (the study's ``jobs``): each has its own
interpreter, so the Python side of one trial does not wait for another's.

CPU threads are shared out: a child gets ``OMP_NUM_THREADS = cores / workers`` (at
least 1) unless the variable is set already.

Ctrl-C or SIGTERM reaches the parent alone (the children run in their own process
group, so a terminal's Ctrl-C is not delivered twice); the parent forwards it once
to every child, which stops at its next safe point and queues its trial for retry
(:mod:`hpo2.study.recovery`); a second signal is forwarded too (a hard stop).  The
parent exits 130 then.  On Linux a child also gets SIGTERM if the parent dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import TextIO

INTERRUPTED_EXIT = 130  # 128 + SIGINT, the shell's convention


@dataclass(frozen=True)
class Slot:
    """One worker process: its label, the environment it adds, the ``--device`` it gets."""

    label: str
    env: dict[str, str] = field(default_factory=dict)
    device: str = "cpu"


def visible_gpus(environ: dict[str, str] | os._Environ[str] = os.environ) -> list[str]:
    """The GPU ids this process may use: ``CUDA_VISIBLE_DEVICES`` when set, else every
    GPU torch counts (``torch.cuda.device_count``, which creates no CUDA context)."""
    listed = environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip() and not g.strip().startswith("-")]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def plan_slots(per_device: int, device: str, gpus: Sequence[str], cores: int) -> list[Slot]:
    """``per_device`` worker slots on each device that ``device`` names.

    Args:
        per_device: worker processes per device (>= 1).
        device: ``auto`` (every visible GPU, else the CPU), ``cuda`` (every visible GPU),
            ``cuda:K`` (the K-th visible GPU) or ``cpu``.
        gpus: the visible GPU ids (:func:`visible_gpus`).
        cores: CPU cores to share out among all the slots.

    Raises:
        ValueError: ``device`` asks for a GPU that is not visible, or is not a device name.
    """
    if device == "cpu" or (device == "auto" and not gpus):
        chosen: list[str | None] = [None]
    elif device in ("auto", "cuda"):
        if not gpus:
            raise ValueError(f"--device {device}: no CUDA device is visible here; use cpu or auto")
        chosen = list(gpus)
    elif device.startswith("cuda:") and device[5:].isdigit():
        k = int(device[5:])
        if k >= len(gpus):
            allowed = f"cuda:0..cuda:{len(gpus) - 1}, " if gpus else ""
            raise ValueError(f"--device {device}: {len(gpus)} CUDA device(s) visible here; allowed: {allowed}cpu, auto")
        chosen = [gpus[k]]
    else:
        raise ValueError(f"--device {device!r} is not a device; allowed: cpu, cuda, cuda:N, auto")
    threads = str(max(1, cores // (per_device * len(chosen))))
    slots = []
    for gpu in chosen:
        for i in range(per_device):
            where = "cpu" if gpu is None else f"gpu {gpu}"
            # an empty CUDA_VISIBLE_DEVICES keeps a CPU worker from opening a CUDA context it does not use
            env = {"CUDA_VISIBLE_DEVICES": "" if gpu is None else gpu, "OMP_NUM_THREADS": threads}
            slots.append(Slot(f"{where} #{i}", env, "cpu" if gpu is None else "cuda"))
    return slots


def die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM when the parent dies, so no child (a worker, the dashboard's
    server) outlives a killed parent."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux: the parent's forwarding still covers signals
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1


class WorkerPool:
    """Start one ``hpo2 worker`` process per slot, relay their output line by line
    with the slot's label, forward SIGINT/SIGTERM, and wait (module docstring)."""

    def __init__(self, worker_args: Sequence[str], slots: Sequence[Slot], out: TextIO = sys.stdout) -> None:
        self.worker_args = list(worker_args)
        self.slots = list(slots)
        self.out = out
        self.processes: list[subprocess.Popen[str]] = []
        self.interrupted = False
        self._write = threading.Lock()

    def _say(self, text: str) -> None:
        with self._write:
            self.out.write(text if text.endswith("\n") else text + "\n")
            self.out.flush()

    def _relay(self, label: str, stream: TextIO) -> None:
        for line in stream:
            self._say(f"[{label}] {line}")

    def _forward(self, signum: int, frame: FrameType | None) -> None:
        self.interrupted = True
        for proc in self.processes:
            if proc.poll() is None:
                proc.send_signal(signum)

    def start(self) -> None:
        for slot in self.slots:
            if self.interrupted:  # Ctrl-C while starting: start no more
                self.slots = self.slots[: len(self.processes)]
                return
            command = [sys.executable, "-m", "hpo2", "worker", *self.worker_args, "--device", slot.device]
            env = {**os.environ, **{k: v for k, v in slot.env.items() if k != "OMP_NUM_THREADS" or k not in os.environ}}
            proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    start_new_session=True, preexec_fn=die_with_parent)  # fmt: skip
            self.processes.append(proc)
            self._say(f"started worker {slot.label} (pid {proc.pid})")

    def run(self) -> int:
        """Start, wait for every worker; 130 after a forwarded signal, else the first
        non-zero exit code of a worker, else 0."""
        previous = {sig: signal.signal(sig, self._forward) for sig in (signal.SIGINT, signal.SIGTERM)}
        relays: list[threading.Thread] = []
        try:
            self.start()
            for slot, proc in zip(self.slots, self.processes, strict=True):
                assert proc.stdout is not None  # stdout=PIPE above
                relays.append(threading.Thread(target=self._relay, args=(slot.label, proc.stdout), daemon=True))
                relays[-1].start()
            codes = [proc.wait() for proc in self.processes]
        finally:
            for proc in self.processes:  # only after an error in the parent itself: leave no worker behind
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        for relay in relays:
            relay.join(timeout=5)
        if self.interrupted or INTERRUPTED_EXIT in codes:
            return INTERRUPTED_EXIT
        return next((code for code in codes if code != 0), 0)
