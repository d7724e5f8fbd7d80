"""What online guidance costs against an unconditional training step: `train()` itself, three runs side by side.

Run: `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/online_overhead.py [--steps-per-phase 30] [--label after]`.
Three real `selfguide.train.train` runs on digits with the CPU recipe (tiny U-ViT, patch 4, batch 128, K 10) go step
by step in turn in one process: `none`; `online-paper` (the paper's settings: [CLS] readout, the timestep mask
[0.15, 0.25], Sinkhorn over the whole batch, t_s 0.2) and `online-small` (the small-image defaults: all patch tokens, no
mask, every row noised afresh to t_s 0.05). Each run is a thread of this process; a baton passed at every step
boundary (the call of `step_generator` that opens a step) lets one run compute at a time, so every run sees the same
load; a step's time is the time its run holds the baton (data, forward, backward, AdamW, EMA, log). Steps are split at
the end of the SK warm-up (step sigma N of each online run; the same index for `none`), the first `--skip` of each
phase are dropped, and medians are kept. The per-run ratio weighs the two phases by their length (sigma = 0.5).
`--former` adds each online run with `sk_features="online"` (the SK loss's own pass of the online network, the
path before `sk_features` existed); `--amortise 1,4,8` adds each online run with m* cached (`amortise=4`, `8`;
nbs/04d_amortise.ipynb): its first epoch in each phase computes every unseen image, so leave it out with
`--steps-per-phase 40 --skip 12` (digits: 11 steps an epoch). `--profile` instead runs a few steps of each run
alone under torch.profiler with labels on the network passes and prints where the time goes. Extra train() options
of the online runs: `--set key=value` (e.g. `--set sk_features=tap`); of every run: `--base key=value`; `--images N`
trains on the first N digits only. A paper-like token count: `--runs none,online-paper --amortise 1,2,4 --images 256
--base image_size=32 --base patch_size=2 --base batch_size=32 --steps-per-phase 24 --skip 10` (256 patch tokens). Writes
outputs/bench/online_overhead.csv (appended rows carry `--label`) with the machine described.
"""
import argparse, ast, csv, os, platform, statistics, sys, tempfile, threading, time
from pathlib import Path
import torch
import selfguide.train as T

CSV = Path("outputs/bench/online_overhead.csv")
BASE = dict(dataset="digits", recipe="cpu16", ckpt_every=10**6, monitor_images=128, resume=False, device="cpu")
RUNS = {"none": dict(guidance="none"),
        "online-paper": dict(guidance="online", feature_readout="token", sk_mask=True, sk_sinkhorn="batch",
                             feature_t=0.2),
        "online-small": dict(guidance="online", feature_readout="patches", sk_mask=False, feature_t=0.05)}

class Baton:
    "Lets the runs compute one at a time, in turn; records how long each holds it per step"
    def __init__(self, names):
        self.names, self.turn, self.done, self.cv = list(names), 0, set(), threading.Condition()
        self.held, self.since = {n: [] for n in names}, {}
    def _pass(self):                                           # next run that has not finished
        for _ in self.names:
            self.turn = (self.turn + 1) % len(self.names)
            if self.names[self.turn] not in self.done: break
        self.cv.notify_all()
    def step(self, name):                                      # at every step boundary of run `name`
        with self.cv:
            if name in self.since: self.held[name].append(time.perf_counter() - self.since[name]); self._pass()
            self.cv.wait_for(lambda: self.names[self.turn] == name)
            self.since[name] = time.perf_counter()
    def finish(self, name):
        with self.cv: self.since.pop(name, None); self.done.add(name); self._pass()

def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try: cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration): pass
    return dict(cpu=cpu, cores=os.cpu_count(), threads=torch.get_num_threads(), torch=torch.__version__)

def _value(v: str):
    "A --set value as Python reads it (4, 0.5, True), else the string itself"
    try: return ast.literal_eval(v)
    except (ValueError, SyntaxError): return v

def configs(args) -> dict:
    extra = {k: _value(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    runs = {n: r for n, r in RUNS.items() if n in args.runs}
    online = [n for n in RUNS if n in args.runs and n != "none"]
    if args.former:                                            # the same settings through the former SK pass
        runs.update({f"{n} former": dict(RUNS[n], sk_features="online") for n in online})
    for a in args.amortise[1:]:                                # the same settings with m* cached (04d_amortise)
        runs.update({f"{n} a{a}": dict(RUNS[n], amortise=a) for n in online})
    steps = 2 * args.steps_per_phase
    base = dict(BASE, **{k: _value(v) for k, v in (kv.split("=", 1) for kv in args.base)})
    return {n: dict(base, **r, steps=steps, **(extra if n != "none" else {})) for n, r in runs.items()}

def few_digits(n: int, tmp) -> list:
    "--base options that train on the first `n` digits, written to an .npz in `tmp` (an epoch of n / batch steps)"
    import numpy as np
    from selfguide.data import load_digits
    d, path = load_digits(image_size=8), Path(tmp) / f"digits{n}.npz"
    np.savez(path, images=d.images[:n, 0].numpy(), labels=d.labels[:n].numpy())
    return ["dataset=npz", f"data_root={path}"]

def timed(args, tmp) -> dict:
    cfgs, errors, name_of = configs(args), {}, {}
    baton = Baton(cfgs)
    real = T.step_generator
    def hooked(seed, step):                                    # the step boundary of the calling run
        baton.step(name_of[threading.get_ident()]); return real(seed, step)
    def run(name):
        name_of[threading.get_ident()] = name
        try: T.train(**cfgs[name], out_dir=str(Path(tmp) / name))
        except BaseException as e: errors[name] = e
        finally: baton.finish(name)
    T.step_generator = hooked
    try:
        threads = [threading.Thread(target=run, args=(n,)) for n in cfgs]
        for th in threads: th.start()
        for th in threads: th.join()
    finally: T.step_generator = real
    if errors: raise next(iter(errors.values()))
    return baton.held                                          # name -> seconds of steps 0 .. N-2

def profile(args, tmp):
    "A few steps of each run alone under torch.profiler; time per labelled part per step"
    from torch.profiler import profile as prof, record_function, ProfilerActivity
    import selfguide.uvit as U, selfguide.online as O
    def label(owner, attr, tag):
        f = getattr(owner, attr)
        def g(*a, **k):
            with record_function(tag): return f(*a, **k)
        setattr(owner, attr, g); return (owner, attr, f)
    tags = {"forward": "uvit.forward", "features": "uvit.features (to block l)"}
    undo = [label(U.UViT, a, t) for a, t in tags.items()] + [label(O, "sinkhorn", "sinkhorn")]
    undo += [label(torch.Tensor, "backward", "backward")]
    try:
        for name, cfg in configs(args).items():
            n = cfg["steps"]
            with prof(activities=[ProfilerActivity.CPU]) as p:
                t0 = time.perf_counter(); T.train(**cfg, out_dir=str(Path(tmp) / f"p_{name}"))
                wall = time.perf_counter() - t0
            keys = set(tags.values()) | {"sinkhorn", "backward"}
            ev = {e.key: e.cpu_time_total / 1e3 / n for e in p.key_averages()
                  if e.key in keys or e.key.startswith("Optimizer.step")}
            print(f"{name}: {n} steps, wall {wall / n * 1e3:.0f} ms/step (setup included); per step: "
                  + ", ".join(f"{k} {v:.0f} ms" for k, v in sorted(ev.items(), key=lambda kv: -kv[1])))
    finally:
        for owner, attr, f in undo: setattr(owner, attr, f)

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps-per-phase", type=int, default=30, help="steps in the warm-up and as many after it")
    p.add_argument("--skip", type=int, default=3, help="first steps of each phase left out")
    p.add_argument("--runs", default="none,online-paper,online-small")
    p.add_argument("--set", action="append", default=[], help="key=value for the online runs' train() options")
    p.add_argument("--base", action="append", default=[], help="key=value for every run's train() options (e.g. "
                   "image_size=32, patch_size=2: a paper-like 256 tokens)")
    p.add_argument("--former", action="store_true",
                   help="also time each online run with sk_features='online' (its own SK pass, as before this change)")
    p.add_argument("--amortise", default="1", help="amortise values of the online runs, e.g. 1,4,8 (the first for "
                   "the plain runs; each further one adds every online run with it)")
    p.add_argument("--images", type=int, default=0, help="train on the first N digits only (short epochs: the m* "
                   "cache fills in N / batch steps)")
    p.add_argument("--label", default="", help="a name for this measurement in the CSV (e.g. before, after)")
    p.add_argument("--profile", action="store_true"); p.add_argument("--csv", type=Path, default=CSV)
    args = p.parse_args(argv)
    args.runs, args.amortise = args.runs.split(","), [int(a) for a in args.amortise.split(",")]
    if args.amortise[0] != 1: args.set.append(f"amortise={args.amortise[0]}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        shown = list(args.base) + ([f"images={args.images}"] if args.images else [])
        if args.images: args.base = few_digits(args.images, tmp) + args.base
        if args.profile: return profile(args, tmp)
        load0 = os.getloadavg()[0]
        held = timed(args, tmp)
    n, k, m = args.steps_per_phase, args.skip, machine()
    phases = {"warm-up": slice(k, n), "after warm-up": slice(n + k, None)}
    med = {(r, ph): statistics.median(held[r][s]) for r in held for ph, s in phases.items()}
    base, data = "".join(f" {kv}" for kv in shown), "digits"
    print(f"{m['cpu']}, {m['threads']} thread(s) of {m['cores']} cores, torch {m['torch']}, load average "
          f"{load0:.2f} -> {os.getloadavg()[0]:.2f}; {data}, cpu16 recipe{base}, {n} steps per phase, medians")
    rows = []
    for r in held:
        per_run = (sum(med[r, ph] for ph in phases) / sum(med["none", ph] for ph in phases)
                   if "none" in held else float("nan"))
        for ph, s in phases.items():
            ratio = med[r, ph] / med["none", ph] if "none" in held else float("nan")
            print(f"{r:18s} {ph:14s} {med[r, ph] * 1e3:8.1f} ms/step  x{ratio:.3f}  (per run x{per_run:.3f})")
            rows.append(dict(label=args.label, run=r, phase=ph, steps=len(held[r][s]), median_s=f"{med[r, ph]:.4f}",
                             ratio_to_none=f"{ratio:.3f}", per_run_ratio=f"{per_run:.3f}",
                             options=" ".join(shown + args.set),
                             load_before=f"{load0:.2f}", load_after=f"{os.getloadavg()[0]:.2f}", **m))
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    new = not args.csv.is_file()
    with open(args.csv, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        if new: w.writeheader()
        w.writerows(rows)
    print(f"wrote {args.csv}")

if __name__ == "__main__":
    main()
