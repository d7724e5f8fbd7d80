"""Sampler wall time and network evaluations (NFE) for every solver in `selfguide.sample.SOLVERS`.

Run: `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sampler_speed.py [--quick] [--run RUN_DIR]`. Without `--run` the
model is the `tiny` U-ViT of the digits recipe (16x16x1, patch 4, 10 classes) at its random initialisation, so the
adaptive solvers' NFE are those of an untrained velocity field; `--run` samples a trained run instead. Conditions
are classes with guidance g = 0.4 (two network passes per evaluation, one batch); the solvers are interleaved in
rounds and the median kept. Solvers added to SOLVERS later appear here without a change; one that fails is written
with its error. Writes outputs/bench/sampler.csv and .png.
"""
import argparse, time
import torch
from selfguide.sample import SOLVERS, ADAPTIVE, sample
from selfguide.uvit import build_uvit
import common
from common import describe, device, median, savefig, sync, write_csv


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true"); p.add_argument("--run", help="a trained run folder to sample")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--steps", type=int, default=20, help="steps of the fixed-step solvers")
    p.add_argument("--rtol", type=float, default=1e-3); p.add_argument("--atol", type=float, default=1e-3)
    p.add_argument("--g", type=float, default=0.4); p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    if args.quick: common.use_quick()
    if args.quick: args.n, args.rounds = 16, 1
    dev = device()
    if args.run:
        from selfguide.train import load_run
        model, cfg = load_run(args.run, device=str(dev)); path, what = cfg.path, args.run
    else:
        torch.manual_seed(0)
        model = build_uvit("tiny", img_size=16, patch_size=4, in_chans=1, num_classes=10).to(dev).eval()
        path, what = "cv", "tiny U-ViT, random init"
    classes = getattr(model, "num_classes", 0) or 0
    c = torch.arange(args.n) % classes if classes else None
    print(describe())
    print(f"{what}: {args.n} samples, g {args.g}, {args.steps} steps (fixed), rtol/atol {args.rtol}/{args.atol}")
    times, nfe, err = {s: [] for s in SOLVERS}, {}, {}
    for _ in range(args.rounds):
        for s in SOLVERS:
            if s in err: continue
            try:
                sync(dev); t0 = time.perf_counter()
                r = sample(model, args.n, c=c, g=args.g if c is not None else 0.0, solver=s, steps=args.steps,
                           rtol=args.rtol, atol=args.atol, path=path, batch_size=args.n, progress=False)
                sync(dev); times[s].append(time.perf_counter() - t0); nfe[s] = r.nfe
            except Exception as e:                                           # a solver that cannot run here
                err[s] = f"{type(e).__name__}: {e}".splitlines()[0]
    rows = []
    for s in SOLVERS:
        if s in err: rows.append(dict(solver=s, error=err[s])); print(f"  {s:15s} error: {err[s]}"); continue
        w = median(times[s])
        rows.append(dict(solver=s, kind="adaptive" if s in ADAPTIVE else "fixed", n=args.n,
                         steps="" if s in ADAPTIVE else args.steps, nfe=nfe[s], wall_s=round(w, 3),
                         ms_per_nfe=round(1000 * w / nfe[s], 2), samples_per_s=round(args.n / w, 1),
                         g=args.g, rtol=args.rtol, atol=args.atol, model=what))
        print(f"  {s:15s} NFE {nfe[s]:6.1f}  {w:7.2f} s  {1000 * w / nfe[s]:6.1f} ms/NFE")
    write_csv("sampler.csv", rows)
    import matplotlib.pyplot as plt
    ok = [r for r in rows if "error" not in r]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar([r["solver"] for r in ok], [r["wall_s"] for r in ok], color="tab:green")
    for i, r in enumerate(ok): ax.annotate(f"{r['nfe']:g}", (i, r["wall_s"]), ha="center", va="bottom", fontsize=7)
    ax.set(ylabel=f"seconds for {args.n} samples", title=f"sampling ({what}); numbers: NFE")
    ax.tick_params(axis="x", labelrotation=45, labelsize=7); fig.tight_layout()
    savefig(fig, "sampler.png")


if __name__ == "__main__":
    main()
