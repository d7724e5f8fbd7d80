"""What the benchmark scripts share: the machine they ran on, CSV writing, timing helpers and small fixtures.

The scripts run with `python benchmarks/<name>.py`, so this file is importable as `common` from beside them.
"""
from __future__ import annotations
import csv, os, statistics, sys, time
from pathlib import Path
import torch
from selfguide.ledger import cpu_model

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "outputs" / "bench"   # `use_quick()`: outputs/bench/quick, so that a smoke run keeps the full numbers
sys.path.insert(0, str(ROOT / "tests"))  # tests/fixtures.py builds the LMDB, folder and VAE fixtures


def use_quick() -> None:
    "Write and read outputs/bench/quick/ from now on (the scripts' --quick)"
    global OUT
    OUT = ROOT / "outputs" / "bench" / "quick"


def device() -> torch.device:
    "cuda when present, else cpu (the benchmarks' 'auto')"
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def machine() -> dict:
    "The machine a measurement ran on: CPU model, cores, threads torch uses, load, torch version, device"
    cpu, flags = cpu_model(), set()                                             # the name a ledger entry records
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(next(l.split(":", 1)[1] for l in f if l.startswith("flags")).split())
    except (OSError, StopIteration): pass
    dev = device()
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    bf16 = ",".join(sorted(flags & {"avx512_bf16", "amx_bf16"})) or "none"   # native bf16 instructions of the CPU
    return dict(cpu=cpu, cores=os.cpu_count(), threads=torch.get_num_threads(), load_1min=round(os.getloadavg()[0], 2),
                cpu_bf16=bf16, torch=torch.__version__, device=name)


def describe(m: dict | None = None) -> str:
    "One line naming the machine, for prints and plot titles"
    m = m or machine()
    return (f"{m['cpu']} ({m['cores']} cores, {m['threads']} threads used, load {m['load_1min']}, "
            f"bf16: {m['cpu_bf16']}), "
            f"torch {m['torch']}, device {m['device']}")


def write_csv(name: str, rows: list[dict], out: Path | None = None) -> Path:
    "Write `rows` (dicts with the same keys) to outputs/bench/`name`, each with the machine's columns"
    if not rows: raise ValueError(f"{name}: nothing measured")
    out = out or OUT
    m = machine()
    rows = [{**r, **m} for r in rows]
    keys = list(dict.fromkeys(k for r in rows for k in r))
    out.mkdir(parents=True, exist_ok=True)
    with open(out / name, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys); w.writeheader(); w.writerows(rows)
    print(f"wrote {out / name}")
    return out / name


def read_csv(name: str, out: Path | None = None) -> list[dict]:
    "Rows of outputs/bench/`name`, or [] when it is not there"
    p = (out or OUT) / name
    return list(csv.DictReader(open(p))) if p.is_file() else []


def sync(dev: torch.device) -> None:
    "Wait for the device (CUDA timings need it; nothing on the CPU)"
    if dev.type == "cuda": torch.cuda.synchronize(dev)


def timed(fn, dev: torch.device, reps: int = 3, warmup: int = 1) -> list[float]:
    "Seconds of `reps` calls of `fn()` after `warmup` untimed ones"
    out = []
    for i in range(warmup + reps):
        sync(dev); t0 = time.perf_counter(); fn(); sync(dev)
        if i >= warmup: out.append(time.perf_counter() - t0)
    return out


def median(xs) -> float:
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def savefig(fig, name: str, out: Path | None = None) -> Path:
    "Save a matplotlib figure under outputs/bench/ with the machine in small print at its foot"
    out = out or OUT
    fig.text(0.01, -0.01, describe(), fontsize=6, color="0.4", va="top")
    fig.savefig(out / name, dpi=120, bbox_inches="tight")
    print(f"wrote {out / name}")
    return out / name
