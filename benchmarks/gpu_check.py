"""One prepared GPU check (about 7 minutes on one H100): U-ViT-L/2 training throughput and model FLOP utilisation, ours
against the official U-ViT, no host-device synchronisation inside the step, and the real CLI end to end.

Run: `make gpu-check` (CUDA; `make gpu-wheels` first, here, where pip works), `make gpu-check DEVICE=cpu QUICK=1` (the
tiny preset, the test suite's run), or `python3 benchmarks/gpu_check.py --help`. Only torch, timm, torchdiffeq,
numpy, scikit-learn, pillow and tqdm are needed, plus diffusers (the VAE stand-in and DPM-Solver): when it is missing
and .gpu-wheels/ holds wheels, they are installed into a temporary folder first (no network). Parts, in this order:
throughput (1), official (2), sync (3), cli (4), compile (1, torch.compile at one batch size). Each has a time budget
(its unused seconds pass to the next); an item past its part's deadline is not started and writes a `skipped` row, and
an item that fails writes an `error` row, so the next one still runs. Rows go to --out (throughput.csv, official.csv,
sync.csv, cli.csv) as each finishes, and summary.md (card, driver, torch, date, every table) is rewritten each time.
"""
from __future__ import annotations
import argparse, atexit, csv, datetime, gc, importlib.util, os, platform, shutil, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / ".gpu-wheels"
FULL = dict(preset="uvit_l", patch=2, batches=(128, 64, 256), n=512, timed=10, amortise=4, official_batch=128,
            official_reps=8, sync_batch=32, sync_steps=8, compile_batch=128, base={},
            cli=dict(batch=64, steps=30, ckpt_every=10, n_samples=8, dpm_steps=20, extra=[]),
            budget=dict(throughput=130, official=35, sync=35, cli=150, compile=100), total=450)
QUICK = dict(preset="tiny", patch=8, batches=(4, 8), n=32, timed=3, amortise=4, official_batch=8, official_reps=3,
             sync_batch=8, sync_steps=4, compile_batch=8, base=dict(clusters=8),
             cli=dict(batch=8, steps=24, ckpt_every=8, n_samples=4, dpm_steps=10, extra=["--clusters", "8"]),
             budget=dict(throughput=150, official=60, sync=30, cli=240, compile=150), total=900)
PARTS = ("throughput", "official", "sync", "cli", "compile")
COLUMNS = {  # summary.md: (title, [(column, header)])
    "throughput": ("1. Training step through `selfguide.train.train` (32x32x4 latents, AdamW; bf16 autocast with fp32 "
                   "weights on CUDA)", [("mode", "mode"), ("batch", "batch"), ("compile", "compile"),
                   ("step_ms", "ms / step"), ("images_per_s", "images / s"), ("peak_mem_gib", "peak GiB"),
                   ("tflop_per_step", "TFLOP / step"), ("tflops", "TFLOP/s"), ("mfu", "MFU"),
                   ("of_matmul", "of matmul"), ("warmup_extra_s", "warm-up extra s"), ("status", "status")]),
    "official": ("2. Ours against the official U-ViT (libs/uvit.py), same configuration, interleaved in one process",
                 [("case", "case"), ("batch", "batch"), ("ours_ms", "ours ms"), ("official_ms", "official ms"),
                  ("ratio", "ours / official"), ("attention", "attention"), ("status", "status")]),
    "sync": ("3. Host-device synchronisations inside the training step (set_sync_debug_mode, logging off)",
             [("mode", "mode"), ("batch", "batch"), ("steps_checked", "steps"), ("syncs", "syncs"),
              ("sites", "where"), ("status", "status")]),
    "cli": ("4. The CLI end to end (torchrun train, SIGKILL, resume; sample)",
            [("stage", "stage"), ("seconds", "s"), ("nfe", "NFE"), ("status", "status"), ("detail", "detail")]),
}


def use_wheels() -> None:
    "diffusers from .gpu-wheels/ when this Python lacks it: installed into a temporary folder, on every path"
    if importlib.util.find_spec("diffusers") is not None: return
    wheels = sorted(map(str, WHEELS.glob("*.whl")))
    if not wheels: return                          # the CLI part's VAE and DPM-Solver rows will say what is missing
    site = tempfile.mkdtemp(prefix="gpu-check-site-"); atexit.register(shutil.rmtree, site, True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--no-cache-dir", "--target", site, *wheels], check=True)
    sys.path.insert(0, site)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (site, os.environ.get("PYTHONPATH")) if p)


class Recorder:
    "Rows per part, each CSV and summary.md rewritten at every row"
    def __init__(self, out: Path, env: dict, plan: dict, fresh: bool = True):
        self.out, self.env, self.plan, self.rows, self.spent = out, env, plan, {p: [] for p in COLUMNS}, {}
        out.mkdir(parents=True, exist_ok=True)
        for p in COLUMNS:
            if fresh: (out / f"{p}.csv").unlink(missing_ok=True)

    def add(self, part: str, row: dict):
        row = {**row, "device": self.env["card"], "torch": self.env["torch"]}
        self.rows[part].append(row)
        keys = list(dict.fromkeys(k for r in self.rows[part] for k in r))
        with open(self.out / f"{part}.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys); w.writeheader(); w.writerows(self.rows[part])
        print(f"[{part}] " + ", ".join(f"{k}={v}" for k, v in row.items() if k not in ("device", "torch", "cmd")),
              flush=True)
        self.summary()

    def summary(self):
        e = self.env
        lines = ["# GPU check (`make gpu-check`, benchmarks/gpu_check.py)", "",
                 e["note"] if "note" in e else f"Measured {e['date']} with `{e['command']}`.", "",
                 "| card | driver | CUDA | torch | python | host | date |", "|---|---|---|---|---|---|---|",
                 f"| {e['card']} | {e['driver']} | {e['cuda']} | {e['torch']} | {e['python']} | {e['host']} | "
                 f"{e['date']} |", "",
                 f"Model: `{e['preset']}`, patch {e['patch']}, on 32x32x4 latents (random, in memory). MFU: the "
                 f"FLOPs of one training step counted by torch.utils.flop_counter (forward, backward, the m* pass) / "
                 f"step time / the card's dense bf16 peak ({e['peak']}); 'of matmul': over the measured {e['matmul']}. "
                 f"Online: the paper recipe (imagenet100: K 300, [CLS] readout, timestep mask, t_s 0.2) in its guided "
                 f"phase (m* every step). 'warm-up extra s': the steps before the timed ones less as many timed steps "
                 f"(with torch.compile: the compile time).", ""]
        if self.spent: lines += ["Seconds per part (budget): " + ", ".join(
            f"{p} {s:.0f} ({b})" for p, (s, b) in self.spent.items()), ""]
        for part, (title, cols) in COLUMNS.items():
            rows = self.rows[part] or self.plan[part]
            lines += [f"## {title}", "", "| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
            lines += ["| " + " | ".join(str(r.get(k, "")) for k, _ in cols) + " |" for r in rows]
            cmds = list(dict.fromkeys(r["cmd"] for r in rows if r.get("cmd")))
            lines += [""] + [f"    {c}" for c in cmds] + ([""] if cmds else [])
        (self.out / "summary.md").write_text("\n".join(lines).rstrip() + "\n")


def plan(cfg: dict) -> dict:
    "The rows a run fills, 'not measured' (summary.md before a run, or where a part did not run)"
    from gpu_train import modes
    nm, ms = dict(status="not measured"), list(modes(cfg["amortise"]))
    return dict(
        throughput=[dict(mode=m, batch=b, compile=False, **nm) for b in cfg["batches"] for m in ms]
                   + [dict(mode=m, batch=cfg["compile_batch"], compile=True, **nm) for m in ms[:2]],
        official=[dict(case=c, batch=cfg["official_batch"], **nm) for c in ("uncond", "cond")],
        sync=[dict(mode=m, batch=cfg["sync_batch"], steps_checked=cfg["sync_steps"], **nm) for m in ms],
        cli=[dict(stage=s, **nm) for s in ("process group, world size 1", "train, SIGKILL mid-run",
                                           "train, straight twice (this process, beside the resumed one)",
                                           "train, resumed", "resumed == straight",
                                           "sample dopri5", "sample dpm_solver")])


def environment(dev, args, cfg) -> dict:
    import torch
    cpu = platform.processor() or platform.machine()
    try: cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration): pass
    e = dict(date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), torch=torch.__version__,
             python=platform.python_version(), host=f"{cpu}, {torch.get_num_threads()} threads",
             cuda=torch.version.cuda if dev.type == "cuda" else "-",
             driver="-", card=f"cpu ({cpu})", preset=cfg["preset"], patch=cfg["patch"], peak="none on a CPU",
             matmul="-", command=" ".join(["python", "benchmarks/gpu_check.py", *sys.argv[1:]]))
    if dev.type == "cuda":
        e["card"] = torch.cuda.get_device_name(dev)
        try: e["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                          capture_output=True, text=True, timeout=20).stdout.split()[0]
        except (OSError, IndexError, subprocess.SubprocessError): e["driver"] = "unknown (no nvidia-smi)"
    return e


def guarded(rec, part, key: dict, fn):
    "Rows of `fn()`, or one error row with `key`; device memory freed either way"
    try: rows = fn()
    except Exception as e: rows = [dict(key, status=f"error: {type(e).__name__}: {str(e).splitlines()[0][:300]}"
                                                     if str(e) else f"error: {type(e).__name__}")]
    for r in rows if isinstance(rows, list) else [rows]: rec.add(part, r)
    gc.collect()
    import torch
    if torch.cuda.is_available(): torch.cuda.empty_cache()


def run_part(part, ctx, rec, deadline):
    import gpu_train as G, gpu_cli as C
    cfg, dev, late = ctx.cfg, ctx.dev, lambda: time.time() > deadline
    skipped = dict(status="skipped: the part's time budget was spent")
    if part in ("throughput", "compile"):
        todo = ([(m, b, False) for b in cfg["batches"] for m in G.modes(cfg["amortise"])] if part == "throughput"
                else [(m, cfg["compile_batch"], True) for m in list(G.MODES)] if ctx.compile else [])
        if not todo: rec.add("throughput", dict(mode="(torch.compile)", status="skipped: --no-compile (quick default)"))
        for m, b, comp in todo:
            key = dict(mode=m, batch=b, compile=comp)
            if late(): rec.add("throughput", dict(key, **skipped)); continue
            guarded(rec, "throughput", key, lambda: G.throughput_row(ctx, m, b, comp, ctx.flops.get((m, b))))
            r = rec.rows["throughput"][-1]
            if r.get("tflop_per_step"): ctx.flops.setdefault((m, b), r["tflop_per_step"] * 1e12)
    elif part == "official":
        key = dict(case="uncond, cond", batch=cfg["official_batch"])
        if not ctx.official.is_file():
            rec.add(part, dict(key, status=f"skipped: no copy of U-ViT's libs/uvit.py at {ctx.official} "
                                           f"(make gpu-wheels UVIT_GIT=...)"))
        else: guarded(rec, part, key, lambda: G.official_rows(ctx, ctx.official, cfg["official_batch"],
                                                              cfg["official_reps"]))
    elif part == "sync":
        for m in G.modes(cfg["amortise"]):
            key = dict(mode=m, batch=cfg["sync_batch"], steps_checked=cfg["sync_steps"])
            if dev.type != "cuda": rec.add(part, dict(key, status="skipped: no CUDA device (set_sync_debug_mode)"))
            elif late(): rec.add(part, dict(key, **skipped))
            else: guarded(rec, part, key, lambda: G.sync_row(ctx, m, cfg["sync_batch"], cfg["sync_steps"]))
    elif part == "cli":
        row = lambda stage, s, status, detail="", **kw: rec.add(part, dict(stage=stage, seconds=round(s, 1),
                                                                          status=status, detail=detail, **kw))
        t0 = time.time()
        if late(): return rec.add(part, dict(stage="(every stage)", **skipped))
        guarded(rec, part, dict(stage="process group, world size 1"),
                lambda: dict(stage="process group, world size 1", seconds=round(time.time() - t0, 1), status="ok",
                             detail=C.nccl_smoke(dev)))
        c = dict(cfg["cli"], latents=ctx.latents, preset=cfg["preset"], patch=cfg["patch"], device=dev.type,
                 threads=ctx.threads, extra=cfg["cli"]["extra"])
        tmp = ctx.tmp / "cli"; tmp.mkdir()
        try: run = C.kill_resume(c, tmp, deadline, row)
        except Exception as e:
            row("train, kill and resume", 0, f"error: {type(e).__name__}: {e}")
            run = tmp / "straight"                                   # sample from the straight run, if it finished
            if not (run / "checkpoints" / "last.pt").exists(): return
        try:
            from fixtures import make_vae
            vae = make_vae(tmp / "vae")
        except Exception as e: row("sample", 0, f"error: no VAE stand-in ({type(e).__name__}: {e})"); return
        C.sample_all(c, run, vae, tmp, deadline, row)


class Ctx:  # what the parts share
    def __init__(self, **kw): self.__dict__.update(kw)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--quick", action="store_true", help="the tiny preset, small batches, no compile (CPU, tests)")
    p.add_argument("--out", type=Path, help="default outputs/bench/gpu/ (quick: outputs/bench/gpu/quick/)")
    p.add_argument("--official", type=Path, default=WHEELS / "official" / "uvit.py",
                   help="a copy of baofff/U-ViT's libs/uvit.py (make gpu-wheels UVIT_GIT=... puts one here)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"of {', '.join(PARTS)}, in this order")
    p.add_argument("--budget", type=float, help="seconds for the whole check (default 450; quick 900)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, help="torch.compile rows (default: not quick)")
    p.add_argument("--threads", type=int, help="CPU threads (default: 8 on CUDA, 1 quick on a CPU, else torch's)")
    p.add_argument("--placeholder", action="store_true", help="only write summary.md with 'not measured' rows")
    a = p.parse_args(argv)
    t_start, cfg = time.time(), QUICK if a.quick else FULL
    out = a.out or ROOT / "outputs" / "bench" / "gpu" / ("quick" if a.quick else "")
    parts = [s.strip() for s in a.parts.split(",") if s.strip()]
    if bad := set(parts) - set(PARTS): p.error(f"unknown part(s) {', '.join(sorted(bad))}; known: {', '.join(PARTS)}")
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    if a.placeholder:
        env = {k: "not measured" for k in ("date", "torch", "python", "host", "cuda", "driver", "card")}
        env.update(preset=cfg["preset"], patch=cfg["patch"], peak="H100 SXM 989 TFLOP/s, H200 989, A100 312",
                   matmul="bf16 8192^3 matmul rate",
                   note="Not measured yet: no GPU has run `make gpu-check`. The rows below are what it fills.")
        Recorder(out, env, plan(cfg), fresh=False).summary(); print(f"wrote {out / 'summary.md'}"); return
    os.environ.setdefault("HF_HUB_OFFLINE", "1"); os.environ.setdefault("MPLBACKEND", "Agg")
    use_wheels()
    import torch, gpu_train as G, gpu_cli as C
    if a.device == "cuda" and not torch.cuda.is_available():
        p.exit(2, "gpu_check: error: no CUDA device here: run `make gpu-check DEVICE=cpu QUICK=1` on a CPU\n")
    dev = torch.device("cuda", torch.cuda.current_device()) if a.device == "cuda" else torch.device("cpu")
    threads = a.threads or (min(8, os.cpu_count() or 1) if dev.type == "cuda" else 1 if a.quick  # 1: a busy CPU
                            else torch.get_num_threads())                                     # spins on more
    torch.set_num_threads(threads)
    env = environment(dev, a, cfg)
    peak, which = G.peak_tflops(env["card"]) if dev.type == "cuda" else (None, "")
    mm = G.matmul_tflops(dev)
    env.update(peak=f"{peak:g} TFLOP/s, datasheet entry '{which}'" if peak else "none known for this card: MFU blank",
               matmul=f"{'bf16 8192^3' if dev.type == 'cuda' else 'fp32 1024^3'} matmul rate, {mm:.3g} TFLOP/s")
    rec = Recorder(out, env, plan(cfg))
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        tmp = Path(tmp)
        ctx = Ctx(cfg=cfg, dev=dev, tmp=tmp, n=cfg["n"], preset=cfg["preset"], patch=cfg["patch"], timed=cfg["timed"],
                  amortise=cfg["amortise"], threads=threads, peak_tflops=peak, matmul_tflops=mm, flops={},
                  precision="bf16 autocast" if dev.type == "cuda" else "fp32", official=a.official,
                  compile=a.compile if a.compile is not None else not a.quick,
                  latents=C.make_latents(tmp / "latents.npz", cfg["n"]))
        ctx.base = dict(dataset="latents", data_root=str(ctx.latents), preset=cfg["preset"], patch_size=cfg["patch"],
                        device=a.device, resume=False, ckpt_every=10**9, monitor_images=min(64, cfg["n"]),
                        **cfg["base"])
        end = t_start + (a.budget or cfg["total"])
        carry = 0.0
        for part in parts:
            t0 = time.time()
            deadline = min(end, t0 + cfg["budget"][part] + carry)
            run_part(part, ctx, rec, deadline)
            spent = time.time() - t0
            carry = max(0.0, deadline - time.time()); rec.spent[part] = (spent, cfg["budget"][part]); rec.summary()
    print(f"gpu_check: {time.time() - t_start:.0f} s; wrote {out}/summary.md and "
          f"{', '.join(f'{q}.csv' for q in COLUMNS)}")


if __name__ == "__main__":
    main()
