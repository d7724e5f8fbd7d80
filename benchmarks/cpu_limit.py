"""The CPU recipes' training step against this machine's own limit: fp32 matmul GFLOP/s, each recipe's achieved
GFLOP/s and utilisation, and whole-run candidates (torch.compile, attention backend, threads, flush-denormal).

Run: `.venv/bin/python benchmarks/cpu_limit.py [--quick] [--no-compile] [--timed 15]` on an otherwise idle machine
(full: about 17 minutes on 2 cores; --quick: cpu16 only, batch 32, 2 timed steps, into outputs/bench/quick/).

1. `matmul`: `torch.mm` of two fp32 n x n matrices (n 2048; median of 7 after one warm-up), at 1 and 2 threads, and
   one matmul of the tiny U-ViT's MLP shape (batch x 18 tokens, 128 -> 512) at 1 thread.
2. `step`: each CPU recipe (cpu16 on digits, cpu28 on Fashion-MNIST, cpu32 on Fashion-MNIST resized to 32) through
   `selfguide.train.train` itself, timed with benchmarks/gpu_train.py's `Window` around the loop's batches (logging
   and checkpoint writes off): steps [a, a + timed) timed together, a = 2 (3 compiled). Online guidance is timed per
   phase (Alg. 1): warm-up (sk_sigma 0.999: the SK loss alone) and guided (sk_sigma 0: m* every step). FLOPs of one
   step: what `torch.utils.flop_counter.FlopCounterMode` counts during step 1 of the eager `math`-attention run:
   the matmuls, convolutions and attention of forward and backward, the m* and SK passes included; AdamW, the EMA
   and elementwise ops are not counted (on a CPU it does not count sdpa's kernel, hence the math twin's count).
   GFLOP/s = FLOPs / step time; utilisation = GFLOP/s / the matmul rate at the same thread count. `extra_s`: the
   first steps' seconds beyond steady steps (compilation, allocations). `load_share`: the DataLoader's part of a step.
   Variants: attention math and sdpa (`auto`), torch.compile (in a fresh process and a fresh inductor cache: cold;
   `warm`: a second process with that cache), 2 threads, flush-denormal, and two 1-thread runs side by side in two
   processes (what `make reproduce` does: --jobs 2).
3. `run`: a whole run of each recipe, extrapolated: extra_s + steps x step (online: ceil(0.5 N) warm-up steps and the
   rest guided; compiled: both phases' compilations). Setup, checkpoints and monitor passes are left out (the same for
   every candidate, except that a compiled model compiles again for the monitor pass). `x_baseline` > 1.1: >10% faster.
4. `profile`: torch.profiler over the timed steps of cpu16 none and online (guided): the ops with most self time.
Writes outputs/bench/cpu_limit.csv (one row per measurement; `kind` says which of the four).
"""
from __future__ import annotations
import argparse, json, math, os, shutil, subprocess, sys, tempfile, time
from contextlib import contextmanager
from pathlib import Path
import torch
import common
from common import ROOT, describe, median, write_csv
from gpu_train import Window, harness, sig

DATA = {"cpu16": dict(dataset="digits"), "cpu28": dict(dataset="fashion_mnist"),
        "cpu32": dict(dataset="fashion_mnist", image_size=32)}
PHASES = {"none": dict(guidance="none"), "class": dict(guidance="class"),
          "online warm-up": dict(guidance="online", sk_sigma=0.999), "online": dict(guidance="online", sk_sigma=0.0)}
CPU = torch.device("cpu")


class Clock(Window):
    "`Window` that also keeps each early step's boundary, the DataLoader's time in [a, b), and a profile of [a, b)"
    def __init__(self, a, b, count=None, profile=False):
        super().__init__(CPU, a, b, count)
        self.marks, self.load, self.profile, self.prof = [], 0.0, profile, None

    def batches(self, iterable):
        it, i = iter(iterable), 0
        try:
            while True:
                self.boundary(i)
                if i <= self.a: self.marks.append(time.perf_counter())
                if self.profile and i == self.a:
                    self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
                    self.prof.__enter__()
                if self.prof is not None and i == self.b: self.prof.__exit__(None, None, None)
                t = time.perf_counter()
                try: batch = next(it)
                except StopIteration: return
                if self.a <= i < self.b: self.load += time.perf_counter() - t
                yield batch
                i += 1
        finally: self.stop_counting()

    def extra_s(self, step: float) -> float:
        "Seconds of steps 0..a-1 beyond as many steady steps (the FLOP-counted step left out)"
        d = [y - x for k, (x, y) in enumerate(zip(self.marks, self.marks[1:])) if k != self.count]
        return sum(d) - len(d) * step


@contextmanager
def settings(threads: int, denormal: bool):
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    if denormal and not torch.set_flush_denormal(True): raise RuntimeError("this CPU cannot flush denormals")
    try: yield
    finally: torch.set_num_threads(old); torch.set_flush_denormal(False)


def measure(case: dict) -> dict:
    "One `train()` run of `case` (recipe, phase, backend, compile, threads, denormal) in this process; its timings"
    import selfguide.train as T
    a = (3 if case["compile"] else 2) + case.get("slack", 0)       # side by side: both in their loops while timed
    w = Clock(a, a + case["timed"], None if case["compile"] else 1, case.get("profile", False))
    out = Path(case["tmp"]) / f"run{time.monotonic_ns()}"
    out.mkdir(parents=True)
    root = {"data_root": case["fashion_root"]} if case.get("fashion_root") and case["recipe"] != "cpu16" else {}
    spec = dict(DATA[case["recipe"]], **PHASES[case["phase"]], attn_backend=case["backend"], compile=case["compile"],
                steps=a + case["timed"] + 1 + case.get("slack", 0), out_dir=str(out), resume=False, monitor_images=64,
                **case["extra"], **root)
    load = os.getloadavg()[0]
    try:
        with settings(case["threads"], case["denormal"]), harness(w, CPU): T.train(**spec)
    finally: shutil.rmtree(out, ignore_errors=True)
    if w.t1 is None: raise RuntimeError("the run ended before its timed steps")
    step = (w.t1 - w.t0) / case["timed"]
    r = dict(step_s=step, load_s=w.load / case["timed"], extra_s=w.extra_s(step), flops=w.flops, load_at_start=load)
    if w.prof is not None:
        ev = sorted(w.prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:case["top"]]
        r["profile"] = [(e.key, e.self_cpu_time_total / 1e3 / case["timed"]) for e in ev]
    return r


def worker_env(case: dict) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(case["threads"]),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    if case.get("inductor"): env["TORCHINDUCTOR_CACHE_DIR"] = case["inductor"]     # cold: empty; warm: cold's
    return env


def in_processes(case: dict, n: int = 1) -> dict:
    "`measure(case)` in `n` fresh processes at once (n 2: side by side); the mean of their timings"
    cmd = [sys.executable, __file__, "--worker", json.dumps(case)]
    ps = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=worker_env(case))
          for _ in range(n)]
    outs = [p.communicate(timeout=1800) for p in ps]
    for p, (o, e) in zip(ps, outs):
        if p.returncode: raise RuntimeError((e.strip().splitlines() or [f"exit status {p.returncode}"])[-1])
    rs = [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]
    return {k: (sum(r[k] for r in rs) / n if isinstance(rs[0][k], float) else rs[0][k]) for k in rs[0]}


def matmul_rows(n: int, reps: int, tokens_rows: int) -> list[dict]:
    "fp32 `torch.mm` GFLOP/s: n^3 at 1 and 2 threads, and the tiny U-ViT's MLP shape at 1 thread"
    rows, g = [], torch.Generator().manual_seed(0)
    for case, (m, k, nn), threads in ((f"torch.mm {n}x{n} @ {n}x{n}", (n, n, n), 1),
                                      (f"torch.mm {n}x{n} @ {n}x{n}", (n, n, n), 2),
                                      (f"MLP shape {tokens_rows}x128 @ 128x512", (tokens_rows, 128, 512), 1)):
        x, y = torch.randn(m, k, generator=g), torch.randn(k, nn, generator=g)
        z = torch.empty(m, nn)
        with settings(threads, False):
            ts = common.timed(lambda: torch.mm(x, y, out=z), CPU, reps=reps if m == n else 5 * reps, warmup=1)
        s = median(ts)
        rows.append(dict(kind="matmul", case=case, n_threads=threads, reps=len(ts), step_ms=sig(s * 1e3),
                         gflops=sig(2 * m * k * nn / s / 1e9), gflops_best=sig(2 * m * k * nn / min(ts) / 1e9)))
        print(f"  {case}, {threads} thread(s): {rows[-1]['gflops']} GFLOP/s (best {rows[-1]['gflops_best']})")
    return rows


def plan(args) -> list[dict]:
    "Every step case: (recipe, phase, backend, compile, threads, denormal, side by side, cache, profile)"
    recipes = ["cpu16"] + ([] if args.quick else ["cpu28", "cpu32"])
    if not (Path("/usr/share/datasets/fashion-mnist").is_dir() or args.fashion_root):
        print("cpu_limit: Fashion-MNIST is not installed (make data, or --fashion-root): cpu28 and cpu32 skipped")
        recipes = ["cpu16"]
    c = lambda recipe, phase, **k: dict(dict(recipe=recipe, phase=phase, backend="auto", compile=False, threads=1,
                                             denormal=False, pair=False, cache="", profile=False), **k)
    main = ["none", "online warm-up", "online"]
    phases = {"cpu16": main if args.quick else ["none", "class", *main[1:]]}
    out = []
    for r in recipes:                                     # math first: its FLOP count is every variant's
        for ph in phases.get(r, main): out += [c(r, ph, backend="math"), c(r, ph)]
    few = ["none"] if args.quick else main
    out += [c("cpu16", ph, threads=2) for ph in few if not args.quick] + [c("cpu16", ph, pair=True) for ph in few]
    out += [c("cpu16", ph, denormal=True) for ph in few]
    out += [c("cpu16", ph, profile=True) for ph in (["none"] if args.quick else ["none", "online"])]
    if not args.no_compile:
        out += [c(r, ph, compile=True, cache="cold") for r in recipes for ph in phases.get(r, main)
                if r != "cpu32" or ph == "none"]
        out += [c("cpu16", ph, compile=True, cache="warm") for ph in main]
    return out


def label(k: dict) -> str:
    parts = [f"{k['threads']} thread" + ("s" if k["threads"] > 1 else ""), f"attention {k['backend']}",
             f"compile ({k['cache']} cache)" if k["compile"] else "eager"]
    if k["pair"]: parts.append("2 runs side by side")
    if k["denormal"]: parts.append("flush denormal")
    if k["profile"]: parts.append("profiled")
    return ", ".join(parts)


def step_row(k: dict, r: dict, flops: dict, mm: dict, batch: int) -> dict:
    f, mine = flops.get((k["recipe"], k["phase"])), r.get("flops")
    src = "math twin" if f else "this run (sdpa not counted)" if mine else ""
    f = f or mine
    gf = f / r["step_s"] / 1e9 if f else None
    ref = mm.get(k["threads"])
    return dict(kind="step", recipe=k["recipe"], dataset=DATA[k["recipe"]]["dataset"], phase=k["phase"],
                variant=label(k), attn_backend=k["backend"], compile=k["compile"], cache=k["cache"],
                n_threads=k["threads"], side_by_side=k["pair"], flush_denormal=k["denormal"], batch=batch,
                steps_timed=k["timed"], step_ms=sig(r["step_s"] * 1e3), images_per_s=sig(batch / r["step_s"]),
                load_share=sig(r["load_s"] / r["step_s"], 3), extra_s=round(r["extra_s"], 2) + 0.0,
                gflop_per_step=sig(f / 1e9) if f else "", flops_from=src, gflops=sig(gf) if gf else "",
                matmul_gflops=ref or "", utilisation=sig(gf / ref, 3) if gf and ref else "",
                load_at_start=round(r["load_at_start"], 2))


def run_rows(steps: list[dict]) -> list[dict]:
    "Whole runs of each recipe and guidance, extrapolated from the step rows, per candidate"
    from selfguide.config import CPU_RECIPES, TrainConfig
    by = {(s["recipe"], s["phase"], s["variant"]): s for s in steps if s.get("step_ms")}
    base = label(dict(threads=1, backend="auto", compile=False, cache="", pair=False, denormal=False, profile=False))
    cands = {"attention math": base.replace("auto", "math"), "2 threads, one run at a time": "2 threads, " +
             base.split(", ", 1)[1], "flush denormal": base + ", flush denormal",
             "1 thread, 2 runs side by side (per run: half the wall)": base + ", 2 runs side by side",
             "torch.compile, cold cache": base.replace("eager", "compile (cold cache)"),
             "torch.compile, warm cache": base.replace("eager", "compile (warm cache)")}
    rows = []
    for recipe in dict.fromkeys(s["recipe"] for s in steps):
        R = CPU_RECIPES[recipe]
        for g, phases in (("none", ["none"]), ("class", ["class"]), ("online", ["online warm-up", "online"])):
            n = R["online"]["steps"] if g == "online" else R["steps"]
            warm = math.ceil(TrainConfig.sk_sigma * n)                     # Alg. 1: warm-up while step / N < sigma
            share = {"online warm-up": warm, "online": n - warm} if g == "online" else {phases[0]: n}

            def whole(v):
                if not all((recipe, ph, v) in by for ph in phases): return None
                ss = [by[(recipe, ph, v)] for ph in phases]
                return (sum(s["extra_s"] for s in ss) + sum(share[s["phase"]] * s["step_ms"] / 1e3 for s in ss),
                        sum(share[s["phase"]] * s["step_ms"] for s in ss) / n, sum(s["extra_s"] for s in ss))
            b = whole(base)
            if b is None: continue
            pair = whole(cands["1 thread, 2 runs side by side (per run: half the wall)"])
            for name, v in [("baseline: " + base, base), *cands.items()]:
                w = whole(v)
                if w is None: continue
                run_s, ms, extra = w
                ref, refname = b[0], "baseline"
                if "side by side" in name: run_s /= 2                       # two runs finish in the wall of one
                if name.startswith("2 threads") and pair: ref, refname = pair[0] / 2, "2 runs side by side"
                rows.append(dict(kind="run", recipe=recipe, phase=g, variant=name, run_steps=n, step_ms=sig(ms),
                                 extra_s=round(extra, 1) + 0.0, run_s=round(run_s, 1), baseline=refname,
                                 x_baseline=round(ref / run_s, 3), faster_by_10pct=ref / run_s > 1.1))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true", help="cpu16 only, batch 32, 2 timed steps, no compile or 2 threads")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (about a minute a case, cold)")
    p.add_argument("--compile", action="store_true", help="with --quick: the compile cases too")
    p.add_argument("--timed", type=int, help="timed steps a case (default 15; quick 2)")
    p.add_argument("--fashion-root", help="Fashion-MNIST IDX folder (default: Debian's dataset-fashion-mnist)")
    p.add_argument("--out", help="folder of cpu_limit.csv (default outputs/bench, quick: outputs/bench/quick)")
    args = p.parse_args(argv)
    if args.worker:
        case = json.loads(args.worker)
        torch.set_num_threads(case["threads"])
        return print(json.dumps(measure(case)))
    if args.quick: common.use_quick(); args.no_compile = not args.compile
    out = Path(args.out) if args.out else common.OUT
    timed = args.timed or (2 if args.quick else 15)
    extra = dict(batch_size=32) if args.quick else {}
    batch = extra.get("batch_size", 128)
    torch.set_num_threads(1)
    print(describe()); t_all = time.perf_counter()
    print("matmul:")
    rows = matmul_rows(512 if args.quick else 2048, 3 if args.quick else 7, batch * 18)
    mm = {r["n_threads"]: r["gflops"] for r in rows if r["case"].startswith("torch.mm")}
    tmp = Path(tempfile.mkdtemp(prefix="selfguide-cpu-limit-"))
    flops, steps, prof = {}, [], []
    try:
        for k in plan(args):
            k.update(timed=timed, tmp=str(tmp), extra=extra, fashion_root=args.fashion_root, top=8,
                     slack=4 if k["pair"] else 0)
            if k["compile"]: k["inductor"] = str(tmp / f"inductor-{k['recipe']}-{k['phase']}".replace(" ", "_"))
            t0 = time.perf_counter()
            try: r = in_processes(k, 2) if k["pair"] else in_processes(k) if k["compile"] else measure(k)
            except Exception as e:                                    # one case failing leaves the others' rows
                steps.append(dict(kind="step", recipe=k["recipe"], phase=k["phase"], variant=label(k),
                                  error=f"{type(e).__name__}: {e}".splitlines()[0]))
                print(f"  {k['recipe']} {k['phase']:15s} {label(k)}: {steps[-1]['error']}"); continue
            if k["backend"] == "math" and not k["compile"] and r.get("flops"):
                flops[(k["recipe"], k["phase"])] = r["flops"]
            steps.append(step_row(k, r, flops, mm, batch))
            s = steps[-1]
            print(f"  {k['recipe']} {k['phase']:15s} {s['variant']:52s} {s['step_ms']:8.1f} ms  "
                  f"{s['gflops'] or '?':>6} GFLOP/s  util {s['utilisation'] or '?':>5}  extra {s['extra_s']:6.1f} s  "
                  f"load {s['load_share']:.1%}  ({time.perf_counter() - t0:.0f} s)", flush=True)
            for op, ms in r.get("profile", []):
                prof.append(dict(kind="profile", recipe=k["recipe"], phase=k["phase"], variant=label(k), op=op,
                                 self_ms_per_step=sig(ms), share_of_step=sig(ms / float(s["step_ms"]), 3)))
    finally: shutil.rmtree(tmp, ignore_errors=True)
    runs = run_rows(steps)
    for r in runs:
        print(f"  run {r['recipe']} {r['phase']:7s} {r['variant'][:60]:60s} {r['run_s']:8.1f} s  "
              f"x{r['x_baseline']} vs {r['baseline']}")
    write_csv("cpu_limit.csv", rows + steps + runs + prof, out)
    print(f"cpu_limit: {time.perf_counter() - t_all:.0f} s")


def markdown(rows: list[dict], machine_line, t) -> str:
    "cpu_limit.csv as summary.md's section (benchmarks/summary.py)"
    ok = [r for r in rows if not r.get("error")]
    mm, st, ru = ([r for r in ok if r["kind"] == k] for k in ("matmul", "step", "run"))
    pr = [r for r in ok if r["kind"] == "profile"]
    out = ["\n### The CPU step against this CPU's limit (`benchmarks/cpu_limit.py`)\n\n",
           f"Machine: {machine_line(rows[0])}. FLOPs: matmuls, convolutions and attention of forward and backward "
           "(FlopCounterMode; AdamW, EMA and elementwise ops not counted); utilisation: of `torch.mm` fp32 at the "
           "same thread count.\n\n",
           t(["matmul", "threads", "ms", "GFLOP/s (median)", "best"],
             [[r["case"], r["n_threads"], r["step_ms"], r["gflops"], r["gflops_best"]] for r in mm])]
    out += ["\n", t(["recipe", "phase", "variant", "ms / step", "GFLOP / step", "GFLOP/s", "utilisation",
                     "first steps extra s", "data share"],
                    [[r["recipe"], r["phase"], r["variant"], r["step_ms"], r["gflop_per_step"], r["gflops"],
                      r["utilisation"], r["extra_s"], f"{float(r['load_share']):.1%}"] for r in st])]
    out += ["\nWhole runs, extrapolated (extra s + steps x step; setup, checkpoints and monitor passes left out):\n\n",
            t(["recipe", "guidance", "candidate", "steps", "ms / step", "extra s", "run s", "x baseline", "> 10%"],
              [[r["recipe"], r["phase"], r["variant"], r["run_steps"], r["step_ms"], r["extra_s"], r["run_s"],
                f"{r['x_baseline']} ({r['baseline']})" if r["baseline"] != "baseline" else r["x_baseline"],
                "yes" if r["faster_by_10pct"] in (True, "True") else ""] for r in ru])]
    if pr: out += ["\nProfile (torch.profiler, self CPU time of the timed steps):\n\n",
                   t(["recipe", "phase", "op", "self ms / step", "share of the step"],
                     [[r["recipe"], r["phase"], r["op"], r["self_ms_per_step"], r["share_of_step"]] for r in pr])]
    return "".join(out)


if __name__ == "__main__":
    main()
