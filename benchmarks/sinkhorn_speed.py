"""Sinkhorn-Knopp time against the number of prototypes K and the batch (`selfguide.sinkhorn.sinkhorn`, 3 iterations).

Run: `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sinkhorn_speed.py [--quick]`. Scores are cosine similarities of
random L2-normalised embeddings and prototypes (d = 128), as in training. Writes outputs/bench/sinkhorn.csv and .png.
"""
import argparse
import torch, torch.nn.functional as F
from selfguide.sinkhorn import sinkhorn
import common
from common import describe, device, median, savefig, timed, write_csv


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer sizes and repetitions")
    p.add_argument("--ks", default="10,30,100,300,1000,3000,5000"); p.add_argument("--batches", default="32,128,512")
    p.add_argument("--iters", type=int, default=3); p.add_argument("--reps", type=int, default=5)
    args = p.parse_args(argv)
    if args.quick: common.use_quick()
    ks, bs = [int(k) for k in args.ks.split(",")], [int(b) for b in args.batches.split(",")]
    if args.quick: ks, bs, args.reps = [10, 300, 5000], [32, 512], 2
    dev, g = device(), torch.Generator().manual_seed(0)
    print(describe())
    rows = []
    for b in bs:
        for k in ks:
            z = F.normalize(torch.randn(b, 128, generator=g), dim=1).to(dev)           # (B, d)
            m = F.normalize(torch.randn(k, 128, generator=g), dim=1).to(dev)           # (K, d)
            s = median(timed(lambda: sinkhorn(z @ m.T, args.iters), dev, args.reps))
            rows.append(dict(batch=b, k=k, iters=args.iters, ms=round(s * 1000, 3), reps=args.reps))
            print(f"  batch {b:4d}  K {k:5d}: {s * 1000:8.2f} ms")
    write_csv("sinkhorn.csv", rows)
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for b in bs:
        r = [x for x in rows if x["batch"] == b]
        ax.plot([x["k"] for x in r], [x["ms"] for x in r], "o-", label=f"batch {b}")
    ax.set(xscale="log", yscale="log", xlabel="prototypes K", ylabel="ms per call",
           title=f"Sinkhorn-Knopp, {args.iters} iterations, on {dev.type}")
    ax.legend(); fig.tight_layout()
    savefig(fig, "sinkhorn.png")


if __name__ == "__main__":
    main()
