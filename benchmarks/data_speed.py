"""Data loading against the training step: seconds to produce one batch from the training DataLoader, per dataset.

Run: `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/data_speed.py [--quick]` (after train_speed.py, whose step times
it compares with). The in-memory datasets (digits, Fashion-MNIST) are the real ones; the lazy datasets are the small
fixtures of tests/fixtures.py: an LSUN-style LMDB of WebP images and an ImageNet-style folder of JPEGs (both cropped
to 256, as for the paper), and a latents folder written by `encode` with the tiny random VAE (32x32x4, what the
paper-scale training reads). Batches come from the same `DataLoader(batch_sampler=StepBatchSampler(...))` as in
`train`, with `--num-workers` workers (0, train's default, by default). Writes outputs/bench/data_loading.csv and .png.
"""
import argparse, tempfile, time
from pathlib import Path
import torch
from torch.utils.data import DataLoader
from selfguide.data import ImageDataset, load_dataset
from selfguide.latents import LatentFolder, encode
from selfguide.train import StepBatchSampler
import common
from common import describe, median, read_csv, savefig, write_csv
from fixtures import make_imagenet, make_lsun_lmdb, make_vae


def batch_times(data, batch: int, n_batches: int, workers: int) -> list[float]:
    "Seconds for each batch the training DataLoader hands out (the first, which starts workers, left out)"
    sampler = StepBatchSampler(len(data), batch, 0, 0, n_batches + 1)
    loader = DataLoader(data, batch_sampler=sampler, num_workers=workers)
    out, t0 = [], time.perf_counter()
    for _ in loader:
        t1 = time.perf_counter(); out.append(t1 - t0); t0 = t1
    return out[1:]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true"); p.add_argument("--batches", type=int, default=10)
    p.add_argument("--num-workers", type=int, default=0)
    args = p.parse_args(argv)
    if args.quick: common.use_quick()
    if args.quick: args.batches = 3
    print(describe())
    steps = {(r["recipe"], r["mode"]): r for r in read_csv("train_throughput.csv") if not r.get("error")}
    ref = lambda recipe: steps.get((recipe, "none"))
    tmp = Path(tempfile.mkdtemp(prefix="selfguide-data-"))
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (320, 3, 64, 64), dtype=torch.uint8, generator=g)
    latents = LatentFolder(encode(ImageDataset(images, name="random64"), make_vae(tmp / "vae"), tmp / "lat",
                                  progress=False))
    wnids = [f"n{i:08d}" for i in range(8)]
    cases = [("digits", "in memory", lambda: load_dataset("digits"), 128, "cpu16"),
             ("latents folder (32x32x4)", "lazy: memory-mapped shards", lambda: latents, 4, "paper"),
             ("latents folder (32x32x4)", "lazy: memory-mapped shards", lambda: latents, 128, None),
             ("lsun LMDB, 256", "lazy: WebP decode + crop",
              lambda: load_dataset("lsun", make_lsun_lmdb(tmp / "lmdb", n=64, corrupt=0), 256), 32, None),
             ("imagenet folder, 256", "lazy: JPEG decode + crop",
              lambda: load_dataset("imagenet", make_imagenet(tmp / "in", wnids, per_class=8), 256), 32, None)]
    if Path("/usr/share/datasets/fashion-mnist").is_dir():
        cases.insert(1, ("fashion_mnist", "in memory", lambda: load_dataset("fashion_mnist"), 128, "cpu28"))
    rows = []
    for name, kind, make, batch, recipe in cases:
        data = make()
        ts = batch_times(data, batch, args.batches, args.num_workers)
        b, r = median(ts), ref(recipe) if recipe else None
        step = float(r["step_s"]) if r else float("nan")
        rows.append(dict(dataset=name, kind=kind, n_items=len(data), batch=batch, num_workers=args.num_workers,
                         batch_s=round(b, 5), ms_per_item=round(1000 * b / batch, 3), items_per_s=round(batch / b, 1),
                         step_s=round(step, 4) if r else "", step_of=f"{recipe} none" if r else "",
                         load_over_step=float(f"{b / step:.3g}") if r else ""))
        print(f"  {name:26s} batch {batch:4d}: {b * 1000:8.2f} ms ({batch / b:8.0f} items/s)"
              + (f", {b / step:.2%} of a {recipe} step" if r else ""))
    write_csv("data_loading.csv", rows)
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5))
    labels = [f"{r['dataset']}\nbatch {r['batch']}" for r in rows]
    ax.barh(labels, [r["batch_s"] * 1000 for r in rows], color="tab:purple", label="one batch from the DataLoader")
    for i, r in enumerate(rows):
        if r["step_s"] != "": ax.plot(r["step_s"] * 1000, i, "k|", ms=14, label="training step" if i == 0 else None)
    ax.set(xscale="log", xlabel="ms"); ax.tick_params(labelsize=7); ax.legend(fontsize=7)
    ax.set_title("data loading against the step it feeds", fontsize=9); fig.tight_layout()
    savefig(fig, "data_loading.png")


if __name__ == "__main__":
    main()
