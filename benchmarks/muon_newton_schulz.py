"""Muon at its real cost: Newton-Schulz in float32 against bfloat16, and a whole Muon step
of hpo2 against ``torch.optim.Muon`` (which always iterates in bfloat16), on one matrix.

* five quintic Newton-Schulz iterations (:func:`hpo2.optim.muon.newton_schulz`) on a
  ``--rows`` x ``--cols`` matrix (784x500 by default: ``fmnist_mlp``'s first layer,
  transposed), in float32 and in bfloat16: median seconds of ``--repeats`` runs;
* one optimizer step on a parameter of that shape: ``torch.optim.Muon`` and
  ``hpo2.optim.MuonWithAdamW`` with ``ns_dtype`` auto (float32 on a CPU, bfloat16 on
  a GPU), float32 and bfloat16, each paired back to back with torch's step.

The speed of bfloat16 matrix products on a CPU depends on the CPU: with native
support (AVX512-BF16, AMX) they run at float32's speed or faster, without it they are
emulated and far slower (issue 24 measured 4.0 s against 0.14 s).  The table's
machine line names the CPU; the load average is printed beside it (a loaded machine
makes every number larger).

Run: ``python benchmarks/muon_newton_schulz.py [--device cpu|cuda] [--repeats 7] [--threads N] [--no-write]``
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median_seconds, paired_ratio, publish  # noqa: E402

from hpo2.optim import MuonWithAdamW  # noqa: E402
from hpo2.optim.muon import newton_schulz  # noqa: E402


def newton_schulz_rows(matrix: torch.Tensor, repeats: int) -> tuple[list[str], dict[str, float]]:
    seconds = {}
    for dtype in (torch.float32, torch.bfloat16):
        seconds[str(dtype)] = median_seconds(lambda: newton_schulz(matrix, 5, dtype), matrix.device, repeats)
    ratio = seconds["torch.bfloat16"] / seconds["torch.float32"]
    rows = [f"| Newton-Schulz x5, {dtype.removeprefix('torch.')} | {s * 1e3:.1f} | |" for dtype, s in seconds.items()]
    rows.append(f"| bfloat16 / float32 | | {ratio:.2f} |")
    return rows, seconds


def step_rows(shape: tuple[int, int], device: torch.device, repeats: int) -> tuple[list[str], dict[str, float]]:
    torch.manual_seed(0)
    reference = torch.nn.Parameter(torch.randn(shape, device=device))
    reference.grad = torch.randn(shape, device=device)
    theirs = torch.optim.Muon([reference], lr=1e-4)
    raw: dict[str, float] = {}
    rows = []
    for ns_dtype in ("auto", "float32", "bfloat16"):
        param = torch.nn.Parameter(reference.detach().clone())
        param.grad = reference.grad.clone()
        ours = MuonWithAdamW([param], lr=1e-4, ns_dtype=ns_dtype)  # type: ignore[arg-type]  # a literal
        seconds, ratio = paired_ratio(ours.step, theirs.step, device, repeats)
        raw[ns_dtype] = seconds
        raw[f"{ns_dtype}/torch"] = ratio
        rows.append(f"| hpo2 Muon step, ns_dtype={ns_dtype} | {seconds * 1e3:.1f} | {ratio:.2f} |")
    raw["torch"] = median_seconds(theirs.step, device, repeats)
    rows.insert(0, f"| torch.optim.Muon step (bfloat16) | {raw['torch'] * 1e3:.1f} | 1.00 |")
    return rows, raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rows", type=int, default=784)
    parser.add_argument("--cols", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--no-write", action="store_true", help="print only; do not append to BENCHMARKS.md")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    matrix = torch.randn(args.rows, args.cols, generator=torch.Generator().manual_seed(0)).to(device)
    ns, ns_raw = newton_schulz_rows(matrix, args.repeats)
    steps, step_raw = step_rows((args.rows, args.cols), device, args.repeats)
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    table = "\n".join(
        ["| what | median ms | ratio |", "| --- | ---: | ---: |", *ns, *steps]
    )
    notes = (f"{args.rows}x{args.cols} matrix, {args.repeats} repeats; load average {load} while measuring. "
             "Step ratios are against torch.optim.Muon's step timed back to back.")
    publish(f"Muon: Newton-Schulz dtype and step cost ({device.type})", table, device, write=not args.no_write,
            notes=notes, raw_name=f"muon_newton_schulz_{device.type}", raw={"newton_schulz": ns_raw, "step": step_raw})
    print(notes)


if __name__ == "__main__":
    main()
