"""How busy the device gets with 1, 2, 4 trials per device (``hpo2 worker --trials-per-device N``).

For each N, a fresh study (journal storage, random sampler, no pruning, a few
seconds per trial) is run by ``hpo2 worker --trials-per-device N``; once its first
trial has finished (the workers have started and loaded their data), the GPU's
utilisation (``nvidia-smi --query-gpu=utilization.gpu``: the share of time a
kernel was running) is sampled every half second for a fixed window, then the
workers are stopped with SIGINT (as Ctrl-C would).  Reported: the mean and
median utilisation, and the trials finished per minute of the window.  On a CPU
(``--device cpu``) there is no utilisation to read: the row says so and reports
the trials per minute only (the quick check that ``benchmarks/gpu.sh --dry-run`` runs).

Run: ``python benchmarks/trials_per_device.py [--device cuda] [--per-device 1 2 4] [--window 30] [--warmup 20]
[--task fmnist_mlp] [--no-write]``
"""

from __future__ import annotations

import argparse
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import publish  # noqa: E402

OPTIMIZERS = ["adam", "kfac", "hessian_free"]


def utilisation() -> float | None:
    """The GPU's utilisation in percent now (nvidia-smi; torch.cuda.utilization as a fallback), None without one."""
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, timeout=10)  # fmt: skip
        if out.returncode == 0 and out.stdout.strip():
            return float(out.stdout.split()[0])
    if torch.cuda.is_available():
        try:
            return float(torch.cuda.utilization())
        except Exception:  # noqa: BLE001 -- needs pynvml; no reading then
            return None
    return None


def write_study(folder: Path, task: str, settings: dict, seconds: float, device: str) -> Path:
    path = folder / "busy.yaml"
    path.write_text(yaml.safe_dump({
        "name": "busy", "task": {"name": task, "settings": settings}, "budget": {"seconds": seconds},
        "optimizers": OPTIMIZERS, "sampler": {"name": "random", "seed": 0}, "pruner": {"name": "none"},
        "n_trials": 10_000, "report": False, "curvature_diagnostics": False, "device": device,
        "storage": f"journal:{folder / 'busy.journal'}",
    }))  # fmt: skip
    return path


def finished_trials(folder: Path) -> int:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal = folder / "busy.journal"
    if not journal.exists():
        return 0
    study = optuna.load_study(study_name="busy", storage=JournalStorage(JournalFileBackend(str(journal))))
    return sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.get_trials(deepcopy=False))


def measure(per_device: int, args: argparse.Namespace) -> dict:
    """Run the workers for warm-up + window seconds, sampling utilisation in the window."""
    with tempfile.TemporaryDirectory(prefix="hpo2-busy-") as tmp:
        folder = Path(tmp)
        settings = {} if args.n_train is None else {"n_train": args.n_train, "n_valid": args.n_train}
        study = write_study(folder, args.task, settings, args.trial_seconds, args.device)
        command = [sys.executable, "-m", "hpo2", "worker", str(study), "--trials-per-device", str(per_device),
                   "--device", args.device]  # fmt: skip
        log = (folder / "workers.log").open("w")
        proc = subprocess.Popen(command, cwd=folder, stdout=log, stderr=subprocess.STDOUT)
        samples: list[float] = []
        try:
            waited = time.monotonic()
            while time.monotonic() - waited < args.warmup and proc.poll() is None and finished_trials(folder) == 0:
                time.sleep(1.0)  # until the first trial finished: the workers have started and loaded their data
            done_before = finished_trials(folder)
            start = time.monotonic()
            while time.monotonic() - start < args.window and proc.poll() is None:
                reading = utilisation()
                if reading is not None:
                    samples.append(reading)
                time.sleep(0.5)
            window = time.monotonic() - start
            done = finished_trials(folder) - done_before
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            try:
                code = proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
            log.close()
        tail = (folder / "workers.log").read_text()[-2000:]
    return {"per_device": per_device, "samples": samples, "window_seconds": window, "trials_finished": done,
            "exit_code": code, "log_tail": tail}


def row(result: dict) -> str:
    samples = result["samples"]
    busy = f"{statistics.fmean(samples):.0f} | {statistics.median(samples):.0f}" if samples else "n/a (no GPU) | n/a"
    per_minute = 60 * result["trials_finished"] / max(result["window_seconds"], 1e-9)
    return f"| {result['per_device']} | {busy} | {len(samples)} | {result['trials_finished']} | {per_minute:.1f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--per-device", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--task", default="fmnist_mlp")
    parser.add_argument("--n-train", type=int, help="use only the first n training samples (a quick check)")
    parser.add_argument("--trial-seconds", type=float, default=8.0, help="budget of each trial")
    parser.add_argument("--warmup", type=float, default=20.0,
                        help="sampling starts when the first trial finishes, or after this many seconds")
    parser.add_argument("--window", type=float, default=30.0, help="seconds of sampling per setting")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    results = [measure(n, args) for n in args.per_device]
    for r in results:
        if r["exit_code"] not in (0, 130):
            print(f"workers x{r['per_device']} exited {r['exit_code']}:\n{r['log_tail']}", file=sys.stderr)
    lines = ["| trials per device | GPU busy % (mean) | median | samples | trials finished | trials / minute |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [row(r) for r in results]
    notes = (f"Task {args.task}, optimizers {', '.join(OPTIMIZERS)} drawn at random, "
             f"{args.trial_seconds:g} s per trial; "
             f"sampled from the first finished trial (at most {args.warmup:g} s after the start) "
             f"for {args.window:g} s, "
             "every 0.5 s (nvidia-smi utilization.gpu).")
    device = torch.device(args.device)
    publish(f"Trials per device: GPU busy ({device.type})", "\n".join(lines), device, write=not args.no_write,
            notes=notes, raw_name="trials_per_device", raw={"args": vars(args), "results": results})
    if any(r["exit_code"] not in (0, 130) for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
