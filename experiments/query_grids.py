"""Query-image grids (the paper's Fig. 5 and 6) and per-prototype grids for finished online runs:
    .venv/bin/python experiments/query_grids.py outputs/online/digits_online_s0 outputs/online/digits_online_patch_s0
Each run folder gets queries.png (first column: a held-out test image; the rest: samples sharing its prototype,
or its per-patch prototype map) and prototypes.png (one row per prototype; image-level runs only)."""
import sys
from pathlib import Path
import torch
from selfguide.data import load_dataset
from selfguide.report import save_grid
from selfguide.sample import sample, prototype_conditions
from selfguide.train import load_run

for run in map(Path, sys.argv[1:]):
    model, cfg = load_run(run)
    test = load_dataset(cfg.dataset, cfg.data_root, cfg.image_size, split="test")
    queries = test.images[torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:8]]
    rows = []
    for j, q in enumerate(queries):
        c, _ = prototype_conditions(model, 9, query=q, path=cfg.path)
        rows += [q[None].float() / 127.5 - 1, sample(model, 9, c=c, g=0.4, rtol=1e-3, atol=1e-3, path=cfg.path, seed=j, progress=False).x]
    print(save_grid(torch.cat(rows), run / "queries.png", nrow=10))
    if not model.bootstrap.patch:
        grid = [sample(model, 10, c=prototype_conditions(model, 10, prototype=k)[0], g=0.4, rtol=1e-3, atol=1e-3, path=cfg.path,
                       seed=k, progress=False).x for k in range(model.bootstrap.k)]
        print(save_grid(torch.cat(grid), run / "prototypes.png", nrow=10))
