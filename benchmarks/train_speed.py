"""Training throughput, step memory and data-loading share per recipe and guidance mode, and fp32 against bf16/compile.

Run: `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/train_speed.py [--quick] [--no-compile] [--steps 20]`.

Each mode is a short real `selfguide.train.train(...)` run. Per-step times come from wrapping the iterator of the
training loop's progress bar: a step is the time from asking the DataLoader for a batch to asking for the next one,
and the time spent in the DataLoader is kept apart; step 0 (allocations, lazy init, compilation) is left out.
The modes of a recipe run side by side in one process, one thread each, taking turns step by step (a baton), so
that every cycle (one step of each mode) sees the same load; a ratio is the median over cycles of a mode's step
over the `none` step of that cycle. Peak memory comes from a second, 2-step run of each mode alone in a subprocess.
Online guidance has two phases (Alg. 1): warm-up (c = 0, the SK loss only: `sk_sigma` 0.99) and guided (after warm-up,
m* from the EMA network every step: `sk_sigma` 0); a run with sigma 0.5 spends half its steps in each.
On CUDA the step is timed between synchronisations outside it, and `torch.cuda.set_sync_debug_mode("warn")` counts
the synchronising calls inside the timed steps (`syncs_in_steps`).
Writes outputs/bench/train_throughput.csv, train_steps.csv (every step), precision.csv and train_throughput.png.
"""
from __future__ import annotations
import argparse, json, os, resource, shutil, subprocess, sys, tempfile, threading, time, warnings
from pathlib import Path
import common
from common import ROOT, describe, median, savefig, write_csv, device as common_device

# name: (guidance, options): the warm-up phase alone, or the guided phase alone
MODES = {"none": ("none", {}),
         "online warm-up": ("online", dict(sk_sigma=0.99)), "online": ("online", dict(sk_sigma=0.0)),
         "online_patch warm-up": ("online_patch", dict(sk_sigma=0.99)),
         "online_patch": ("online_patch", dict(sk_sigma=0.0))}
PAPER_MODES = ("none", "online warm-up", "online")  # --paper-modes adds online_patch


class StepClock:
    "Times each step of a training loop through the iterator its progress bar wraps; optionally takes turns (`Baton`)"
    def __init__(self, baton=None, k: int = 0):
        self.baton, self.k, self.steps, self.loads, self.syncs, self.windows = baton, k, [], [], [], []
        self.rss0 = self.rss1 = self.cuda_peak = float("nan")

    def batches(self, iterable):
        import torch
        cuda, it = torch.cuda.is_available(), iter(iterable)
        while True:
            if self.baton: self.baton.wait(self.k)               # step-level interleaving: my turn
            if cuda: _sync()
            t0 = time.perf_counter()
            try: batch = next(it)
            except StopIteration: break
            t1 = time.perf_counter()
            if not self.steps and not self.loads: self.begin()
            yield batch                                          # the training step runs here
            if cuda: _sync()
            t2 = time.perf_counter()
            self.loads.append(t1 - t0); self.steps.append(t2 - t0); self.windows.append((t0, t2))
            if self.baton: self.baton.next(self.k)
        self.finish()
        if self.baton: self.baton.done(self.k)                   # and wait: no thread's epilogue runs beside a step

    def begin(self):
        import torch
        self.rss0 = peak_rss_mb()
        if torch.cuda.is_available() and self.baton is None: torch.cuda.reset_peak_memory_stats()

    def finish(self):
        import torch
        self.rss1 = peak_rss_mb()
        if torch.cuda.is_available() and self.baton is None: self.cuda_peak = torch.cuda.max_memory_allocated() / 2**20

    def result(self) -> dict:
        "Step 0 (allocations, lazy init, compilation) apart; synchronisations counted inside the timed steps"
        syncs = sum(any(a <= t <= b for a, b in self.windows[1:]) for t in self.syncs)
        return dict(first_step_s=self.steps[0], step_s=self.steps[1:], load_s=self.loads[1:], rss_start_mb=self.rss0,
                    rss_peak_mb=self.rss1, cuda_peak_mb=self.cuda_peak, syncs=syncs)


def peak_rss_mb() -> float:
    "Peak resident memory of this process so far: VmHWM (ru_maxrss survives exec and would report a large parent's)"
    try: return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
    except (OSError, StopIteration): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync():
    "Wait for the GPU outside the step (the debug mode that counts synchronisations paused meanwhile)"
    import torch
    mode = torch.cuda.get_sync_debug_mode(); torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize(); torch.cuda.set_sync_debug_mode(mode)


class Baton:
    "Turns for threads 0..n-1, one step each in order; a finished thread waits until every thread has finished"
    def __init__(self, n: int):
        self.cv, self.turn, self.alive, self.n = threading.Condition(), 0, set(range(n)), n
    def wait(self, k):
        with self.cv: self.cv.wait_for(lambda: self.turn == k or k not in self.alive)
    def next(self, k):
        with self.cv:
            later = sorted(self.alive - {k}, key=lambda j: (j - k) % self.n)
            self.turn = later[0] if later else k
            self.cv.notify_all()
    def done(self, k):
        with self.cv:
            self.next(k); self.alive.discard(k); self.cv.notify_all()
            self.cv.wait_for(lambda: not self.alive)


_local = threading.local()


def _patch_tqdm():
    "train()'s progress bar over the calling thread's clock (silent: several loops run in one process); once"
    import selfguide.train as T
    real = T.tqdm
    if getattr(real, "_clocked", False): return
    def bar(iterable, **kw):
        clock = getattr(_local, "clock", None)
        return real(clock.batches(iterable) if clock else iterable, **{**kw, "disable": True})
    bar._clocked = True
    T.tqdm = bar


def _count_syncs(clocks: dict):
    "On CUDA: every synchronising call becomes a warning, recorded with its time for the clock of its thread"
    import torch
    if not torch.cuda.is_available(): return
    torch.cuda.set_sync_debug_mode("warn"); warnings.simplefilter("always")
    show = warnings.showwarning
    def record(msg, *a, **k):
        clock = clocks.get(threading.get_ident())
        if clock is not None and "synchroniz" in str(msg): clock.syncs.append(time.perf_counter())
        else: show(msg, *a, **k)
    warnings.showwarning = record


def interleaved(specs: dict) -> dict:
    "Run `train(**spec)` for each mode in its own thread of this process, one step each in turn; {mode: timings}"
    import torch, selfguide.train as T
    _patch_tqdm(); baton = Baton(len(specs))
    warnings.filterwarnings("ignore", message="only .* prototypes")   # untrained runs: their prototypes collapse
    out, clocks = {}, {}
    def go(k, mode, spec):
        _local.clock = clocks[threading.get_ident()] = clock = StepClock(baton, k)
        try: T.train(**spec); out[mode] = clock.result()
        except Exception as e: out[mode] = dict(error=f"{type(e).__name__}: {e}".splitlines()[0])
        finally:
            with baton.cv:
                if k in baton.alive: baton.done(k)
    _count_syncs(clocks)
    threads = [threading.Thread(target=go, args=(k, m, s)) for k, (m, s) in enumerate(specs.items())]
    for t in threads: t.start()
    for t in threads: t.join()
    if torch.cuda.is_available(): torch.cuda.set_sync_debug_mode(0)
    return out


def worker(spec: dict) -> None:
    "One short training run alone in this process (peak memory, compile, precision); prints one JSON line"
    import selfguide.train as T
    _local.clock = clock = StepClock()
    _patch_tqdm()
    out = T.train(**spec)
    m = json.loads((Path(out) / "manifest.json").read_text())
    print(json.dumps(dict(clock.result(), **_about(m))))


def _about(m: dict) -> dict:
    "What a run's manifest says about its model and precision"
    amp = m["params"]["amp"]
    on = amp == "bf16" or (amp == "auto" and m["environment"]["device"].startswith("cuda"))
    return dict(params=m["model"]["params"], precision="bf16" if on else "fp32", device=m["environment"]["device"],
                batch=m["params"]["batch_size"], preset=m["params"]["preset"], patch=m["params"]["patch_size"],
                recipe=m["recipe"]["name"])


def run(spec: dict, timeout: float = 1200) -> dict:
    "`worker(spec)` in a fresh Python process; its JSON, or {'error': ...}"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    p = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True,
                       env=env, timeout=timeout)
    shutil.rmtree(spec["out_dir"], ignore_errors=True)
    if p.returncode != 0:
        return dict(error=(p.stderr.strip().splitlines() or ["exit status %d" % p.returncode])[-1])
    return json.loads(p.stdout.strip().splitlines()[-1])


def latent_fixture(tmp: Path, n: int = 320, size: int = 64) -> Path:
    "A LatentFolder of `n` random RGB images encoded by the tiny random VAE of tests/fixtures.py: 32x32x4 latents"
    import torch
    from fixtures import make_vae
    from selfguide.data import ImageDataset
    from selfguide.latents import encode
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return encode(ImageDataset(images, name="random64"), make_vae(tmp / "vae"), tmp / "latents", progress=False)


def recipes(args, tmp: Path) -> dict:
    "recipe label: (training options, modes)"
    out = {"cpu16": (dict(dataset="digits", monitor_images=256), tuple(MODES))}
    if Path("/usr/share/datasets/fashion-mnist").is_dir() or args.fashion_root:
        out["cpu28"] = (dict(dataset="fashion_mnist", data_root=args.fashion_root, monitor_images=256), tuple(MODES))
    else: print("train_speed: Fashion-MNIST is not installed (make data, or --fashion-root): cpu28 skipped")
    if not args.no_paper:
        lat = latent_fixture(tmp)
        out["paper"] = (dict(dataset="latents", data_root=str(lat), preset=args.paper_preset,
                             batch_size=args.paper_batch, monitor_images=2 * args.paper_batch),
                        tuple(args.paper_modes.split(",")))
    return out


def summarise(label: str, modes, timing: dict, memory: dict, batch: int) -> list[dict]:
    "One row per mode: median step, and the median over cycles of (this mode's step / the none step of that cycle)"
    rows, none = [], timing.get("none", {}).get("step_s")
    for m in modes:
        r, mem = timing[m], memory.get(m, {})
        if "error" in r: rows.append(dict(recipe=label, mode=m, error=r["error"])); continue
        s = median(r["step_s"])
        paired = [a / b for a, b in zip(r["step_s"], none)] if none else []   # the same cycle: the same load
        twin = memory.get(m.replace(" warm-up", ""), {})             # a warm-up phase: its guided run's model
        ok, about = "rss_peak_mb" in mem, next((d for d in (mem, twin, memory.get("none", {})) if "preset" in d), {})
        rows.append(dict(recipe=label, dataset_recipe=about.get("recipe", ""), preset=about.get("preset", ""),
                         patch=about.get("patch", ""), batch=batch,
                         params=(mem if "params" in mem else twin).get("params", ""), mode=m,
                         guidance=MODES[m][0], phase="warm-up" if "warm-up" in m else ("guided" if m != "none" else ""),
                         steps_timed=len(r["step_s"]), step_s=round(s, 4), images_per_s=round(batch / s, 1),
                         ratio_vs_none=round(median(paired), 3) if paired else "",
                         ratio_q25=round(quantile(paired, 0.25), 3) if paired else "",
                         ratio_q75=round(quantile(paired, 0.75), 3) if paired else "",
                         load_s=round(median(r["load_s"]), 5), load_share=round(median(r["load_s"]) / s, 4),
                         first_step_s=round(r["first_step_s"], 3),
                         rss_peak_mb=round(mem["rss_peak_mb"]) if ok else "",
                         rss_step_mb=round(mem["rss_peak_mb"] - mem["rss_start_mb"]) if ok else "",
                         cuda_peak_mb=round(mem["cuda_peak_mb"], 1) if ok else "",
                         syncs_in_steps=r["syncs"] if common_device().type == "cuda" else "",
                         precision=about.get("precision", ""), memory_error=mem.get("error", "")))
    by = {r["mode"]: r for r in rows if "error" not in r}
    for g in ("online", "online_patch"):     # a whole Alg. 1 run with sigma 0.5: half its steps in each phase
        if g in by and f"{g} warm-up" in by and by[g]["ratio_vs_none"] != "":
            by[g]["ratio_run_sigma_0.5"] = round((by[g]["ratio_vs_none"] + by[f"{g} warm-up"]["ratio_vs_none"]) / 2, 3)
    return rows


def quantile(xs, q: float) -> float:
    xs = sorted(xs); i = q * (len(xs) - 1); lo = int(i)
    return xs[lo] + (xs[min(lo + 1, len(xs) - 1)] - xs[lo]) * (i - lo) if xs else float("nan")


def precision(args, tmp: Path) -> list[dict]:
    "cpu16, no guidance: fp32 eager against bf16 autocast (interleaved), then torch.compile in a process of its own"
    base = dict(dataset="digits", guidance="none", resume=False)
    specs = {"fp32 eager": dict(base, amp="none", steps=args.bf16_steps, out_dir=str(tmp / "p32")),
             "bf16 autocast": dict(base, amp="bf16", steps=args.bf16_steps, out_dir=str(tmp / "p16"))}
    res = interleaved(specs)
    if not args.no_compile:
        res["fp32 eager, alone"] = run(dict(base, amp="none", steps=args.steps, out_dir=str(tmp / "pe")))
        res["fp32 torch.compile, alone"] = run(dict(base, amp="none", compile=True, steps=args.steps,
                                                    out_dir=str(tmp / "pc")))
    rows, ref = [], res["fp32 eager"]
    for name, r in res.items():
        if "error" in r: rows.append(dict(case=name, error=r["error"])); print(f"  {name}: {r['error']}"); continue
        if name == "fp32 eager, alone": ref = r                # compile's reference: the eager run just before it
        paired = [a / b for a, b in zip(r["step_s"], ref["step_s"])] if "alone" not in name else []
        s = median(r["step_s"]); ratio = median(paired) if paired else s / median(ref["step_s"])
        rows.append(dict(case=name, recipe="cpu16", guidance="none", batch=128, steps_timed=len(r["step_s"]),
                         step_s=round(s, 4), images_per_s=round(128 / s, 1), ratio_vs_fp32_eager=round(ratio, 3),
                         how="interleaved, paired" if paired else "runs one after the other",
                         first_step_s=round(r["first_step_s"], 2)))
        print(f"  {name:26s} {s * 1000:8.1f} ms/step  x{ratio:.2f}  first step {r['first_step_s']:.1f} s")
    return rows


def plot(rows: list[dict]):
    import matplotlib.pyplot as plt
    rows = [r for r in rows if "error" not in r]
    labels = list(dict.fromkeys(r["recipe"] for r in rows))
    fig, axes = plt.subplots(2, len(labels), figsize=(4 * len(labels), 6), squeeze=False)
    for j, lab in enumerate(labels):
        rs = [r for r in rows if r["recipe"] == lab]
        names = [r["mode"].replace(" ", "\n") + ("\nguided" if r["phase"] == "guided" else "") for r in rs]
        ax = axes[0, j]; bars = ax.bar(names, [r["images_per_s"] for r in rs], color="tab:blue")
        for b, r in zip(bars, rs):
            ax.annotate(f"x{r['ratio_vs_none']}", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center",
                        va="bottom", fontsize=7)
        ax.set_title(f"{lab}: {rs[0]['preset']}/{rs[0]['patch']}, batch {rs[0]['batch']}", fontsize=9)
        ax.set_ylabel("images / s"); ax.tick_params(labelsize=7)
        mem = [(n, r["rss_peak_mb"]) for n, r in zip(names, rs) if r["rss_peak_mb"] != ""]
        ax = axes[1, j]; ax.bar([n for n, _ in mem], [v for _, v in mem], color="tab:orange")
        ax.set_ylabel("peak RSS (MB)"); ax.tick_params(labelsize=7)
    fig.suptitle("training throughput (x: step time / none's in the same cycle, median) and peak memory", fontsize=10)
    fig.tight_layout()
    savefig(fig, "train_throughput.png")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true", help="a smoke run: few steps, no cpu28 or compile")
    p.add_argument("--steps", type=int, help="steps per mode, cpu recipes, the first untimed (default 20; quick 4)")
    p.add_argument("--paper-steps", type=int, help="steps per mode of the paper-shaped step (default 4; quick 2)")
    p.add_argument("--bf16-steps", type=int, help="steps of the fp32/bf16 pair (default 8; quick 3)")
    p.add_argument("--paper-preset", default="uvit_s", help="U-ViT preset of the paper-shaped step (32x32x4 latents)")
    p.add_argument("--paper-batch", type=int, default=4)
    p.add_argument("--paper-modes", default=",".join(PAPER_MODES), help=f"of: {', '.join(MODES)}")
    p.add_argument("--no-paper", action="store_true")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (about a minute cold on a CPU)")
    p.add_argument("--fashion-root", help="Fashion-MNIST IDX folder (default: Debian's dataset-fashion-mnist)")
    args = p.parse_args(argv)
    if args.worker: return worker(json.loads(args.worker))
    q = args.quick
    if args.quick: common.use_quick()
    args.steps = args.steps or (4 if q else 20); args.paper_steps = args.paper_steps or (2 if q else 4)
    args.bf16_steps = args.bf16_steps or (3 if q else 8)
    if q: args.no_compile, args.paper_batch = True, min(args.paper_batch, 2)
    print(describe())
    t_all, tmp = time.perf_counter(), Path(tempfile.mkdtemp(prefix="selfguide-bench-"))
    rows, raw = [], []
    try:
        todo = recipes(args, tmp)
        if q: todo.pop("cpu28", None)
        for label, (base, modes) in todo.items():
            steps, t0 = (args.paper_steps if label == "paper" else args.steps), time.perf_counter()
            specs = {m: dict(base, guidance=MODES[m][0], steps=steps, out_dir=str(tmp / label / m.replace(" ", "_")),
                             resume=False, **MODES[m][1]) for m in modes}
            timing = interleaved(specs)                   # every mode in turn, one step each, in this process
            for m, r in timing.items():
                raw += [dict(recipe=label, mode=m, step=i, step_s=round(a, 5), load_s=round(b, 6))
                        for i, (a, b) in enumerate(zip(r.get("step_s", []), r.get("load_s", [])), start=1)]
            took = time.perf_counter() - t0
            print(f"  {label}: {len(modes)} modes x {steps} steps, interleaved ({took:.0f} s)", flush=True)
            memory = {m: run(dict(specs[m], steps=2, out_dir=str(tmp / "mem")))      # alone, 2 steps; warm-up
                      for m in modes if "warm-up" not in m}                            # as guided, minus m*
            rows += summarise(label, modes, timing, memory, base.get("batch_size", 128))
            shutil.rmtree(tmp / label, ignore_errors=True)
            print(f"  {label}: memory, each mode alone ({time.perf_counter() - t0:.0f} s in all)", flush=True)
        print("precision and compilation (cpu16, guidance none):")
        prec = precision(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_csv("train_throughput.csv", rows); write_csv("train_steps.csv", raw); write_csv("precision.csv", prec)
    print(f"{'recipe':7s} {'mode':22s} {'ms/step':>9s} {'img/s':>7s} {'ratio':>6s} {'q25-q75':>11s} {'run@0.5':>7s} "
          f"{'load':>6s} {'RSS MB':>7s}")
    for r in rows:
        if "error" in r: print(f"{r['recipe']:7s} {r['mode']:22s} error: {r['error']}"); continue
        print(f"{r['recipe']:7s} {r['mode']:22s} {r['step_s'] * 1000:9.1f} {r['images_per_s']:7.1f} "
              f"{r['ratio_vs_none']:6} {r['ratio_q25']:>5}-{r['ratio_q75']:<5} {r.get('ratio_run_sigma_0.5', ''):7} "
              f"{r['load_share']:6.1%} {r['rss_peak_mb']:7}")
    plot(rows)
    print(f"train_speed: {time.perf_counter() - t_all:.0f} s")


if __name__ == "__main__":
    main()
