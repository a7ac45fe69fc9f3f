"""Timing and reporting helpers every benchmark shares: medians of repeated runs,
the machine's name, and appending a dated table to BENCHMARKS.md.

With ``HPO2_BENCH_OUT`` set (``benchmarks/gpu.sh`` sets it), tables are appended to
``$HPO2_BENCH_OUT/rows.md`` and raw numbers written there instead of BENCHMARKS.md
and ``benchmarks/results``: a run on a lent machine returns them as files."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
RESULTS = Path(__file__).resolve().parent / "results"
if os.environ.get("HPO2_BENCH_OUT"):
    RESULTS = Path(os.environ["HPO2_BENCH_OUT"])
    BENCHMARKS_MD = RESULTS / "rows.md"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 3) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    return statistics.median(_timed(fn, device) for _ in range(repeats))


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def paired_ratio(
    fn: Callable[[], object], unit: Callable[[], object], device: torch.device, repeats: int, warmup: int = 2
) -> tuple[float, float]:
    """Median seconds of ``fn`` and the median of ``fn``/``unit`` ratios, each ratio
    taken from back-to-back runs so that machine noise hits both alike."""
    for _ in range(warmup):
        fn()
        unit()
    times, ratios = [], []
    for _ in range(repeats):
        t_unit = _timed(unit, device)
        t_fn = _timed(fn, device)
        times.append(t_fn)
        ratios.append(t_fn / t_unit)
    return statistics.median(times), statistics.median(ratios)


def study_benchmark_arguments(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse ``--threads`` (torch CPU threads, 1 by default so two benchmarks can
    share a 2-core machine; the machine line records it) and ``--no-write`` beside
    the script's own arguments; set the threads, quiet Optuna, create results/."""
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--no-write", action="store_true", help="print only; do not append to BENCHMARKS.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import optuna  # here, not at the top: the benchmarks without a study run where optuna is not installed

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    RESULTS.mkdir(exist_ok=True)
    return args


def machine(device: torch.device) -> str:
    """The GPU's name, or the CPU model and the threads torch uses."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    model = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {torch.get_num_threads()} threads (torch {torch.__version__})"


def append_section(title: str, table_md: str, device: torch.device, notes: str = "") -> None:
    """Append a dated section with the command that produced it to BENCHMARKS.md."""
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0].split("/work/main/")[-1], *sys.argv[1:]])
    header = "" if BENCHMARKS_MD.exists() or BENCHMARKS_MD.name != "BENCHMARKS.md" else (
        "# Benchmarks\n\nEvery row can be rerun with the command above its table.\n")
    section = (
        f"\n## {title}\n\n"
        f"- command: `{command}`\n"
        f"- machine: {machine(device)}\n"
        f"- date: {_dt.date.today().isoformat()}\n\n"
        f"{table_md}\n"
        + (f"\n{notes}\n" if notes else "")
    )
    BENCHMARKS_MD.parent.mkdir(parents=True, exist_ok=True)
    with BENCHMARKS_MD.open("a") as fh:
        fh.write(header + section)


def publish(title: str, table_md: str, device: torch.device, *, write: bool, notes: str = "",
            raw_name: str | None = None, raw: object = None) -> None:
    """Print the table; with ``write``, append it to BENCHMARKS.md (:func:`append_section`)
    and save ``raw`` as ``results/<raw_name>.json`` when given."""
    print(table_md)
    if not write:
        return
    if raw_name is not None:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{raw_name}.json").write_text(json.dumps(raw, indent=1))
    append_section(title, table_md, device, notes)
