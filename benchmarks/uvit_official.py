"""Our U-ViT against the official one (baofff/U-ViT `libs/uvit.py`): fp32 forward and training step, side by side.

Run: `OMP_NUM_THREADS=2 .venv/bin/python benchmarks/uvit_official.py --official /tmp/official/uvit.py`
(a local copy of their `libs/uvit.py`, with their `libs/timm.py` beside it or not; their code is never committed here).
Both models get the same configuration (width 256, 8 blocks, 32x32x4 input, patch 2, batch 64 by default, no final
conv), with a condition (ours: `num_classes=K`, labels with 10% dropped to the null; theirs: `num_classes=K + 1`,
labels) and without one (ours: `cond_slot=False`, theirs: `num_classes=-1`). Timings are interleaved step by step so
that every model sees the same load; warm-up steps are excluded and the median is kept. Their attention mode is a
module global: `flash` (what they pick on torch >= 2: `F.scaled_dot_product_attention`) matches our `sdpa`, and their
`math` our `math`. Without `--official` only our models are timed, and the table compares with the last CSV written.
Writes outputs/bench/uvit_official.csv with the machine (CPU model, threads, torch version).
"""
import argparse, csv, importlib.util, platform, statistics, sys, time, types
from pathlib import Path
import torch, torch.nn as nn
from selfguide.uvit import UViT

CSV = Path("outputs/bench/uvit_official.csv")

def _einops_shim():
    "The few `einops.rearrange` patterns libs/uvit.py uses, as reshape/permute (for a venv without einops)"
    def rearrange(x, pattern, **k):
        if pattern == "B L (K H D) -> K B H L D": B, L, _ = x.shape; return x.reshape(B, L, k["K"], k["H"], -1).permute(2, 0, 3, 1, 4)
        if pattern == "B L (K H D) -> K B L H D": B, L, _ = x.shape; return x.reshape(B, L, k["K"], k["H"], -1).permute(2, 0, 1, 3, 4)
        if pattern == "B H L D -> B L (H D)": B, H, L, D = x.shape; return x.permute(0, 2, 1, 3).reshape(B, L, H * D)
        if pattern == "B (h w) (p1 p2 C) -> B C (h p1) (w p2)":
            B, N, _ = x.shape; h, p = int(N ** 0.5), k["p1"]
            return x.reshape(B, h, h, p, p, -1).permute(0, 5, 1, 3, 2, 4).reshape(B, -1, h * p, h * p)
        raise NotImplementedError(pattern)
    return types.SimpleNamespace(rearrange=rearrange)

def load_official(path: Path):
    "Import their libs/uvit.py as a package module (its `from .timm import ...` resolved beside it or by a stub)"
    if not path.is_file(): sys.exit(f"uvit_official: error: no file at --official {path} (a copy of U-ViT's libs/uvit.py)")
    try: import einops  # noqa: F401
    except ImportError: sys.modules["einops"] = _einops_shim()
    pkg = types.ModuleType("official_libs"); pkg.__path__ = [str(path.parent)]; sys.modules["official_libs"] = pkg
    if not (path.parent / "timm.py").is_file():
        class Mlp(nn.Module):  # timm 0.3.2's Mlp without dropout
            def __init__(self, in_features, hidden_features, act_layer=nn.GELU):
                super().__init__(); self.fc1, self.act, self.fc2 = nn.Linear(in_features, hidden_features), act_layer(), nn.Linear(hidden_features, in_features)
            def forward(self, x): return self.fc2(self.act(self.fc1(x)))
        sys.modules["official_libs.timm"] = types.SimpleNamespace(trunc_normal_=nn.init.trunc_normal_, Mlp=Mlp)
    spec = importlib.util.spec_from_file_location("official_libs.uvit", path)
    mod = importlib.util.module_from_spec(spec); sys.modules[spec.name] = mod; spec.loader.exec_module(mod)
    return mod

class Case:
    "One model and its inputs: `call()` runs a forward pass, `step()` a training step (forward, backward, AdamW)"
    def __init__(self, name, model, args, cond, official=None, mode=None):
        self.name, self.model, self.official, self.mode = name, model, official, mode
        g = torch.Generator().manual_seed(0)
        B, s = args.batch, args.img
        self.x, self.t = torch.randn(B, args.chans, s, s, generator=g), torch.rand(B, generator=g)
        self.y = torch.randint(0, args.classes, (B,), generator=g) if cond else None
        self.drop = (torch.rand(B, generator=g) < 0.1) if cond and official is None else None
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        self.fwd, self.stp = [], []
    def call(self):
        if self.official is not None:
            self.official.ATTENTION_MODE = self.mode
            return self.model(self.x, self.t * 1000, self.y)
        return self.model(self.x, self.t, self.y, self.drop)
    def step(self):
        loss = (self.call() - self.x).pow(2).mean()
        self.opt.zero_grad(set_to_none=True); loss.backward(); self.opt.step()

def cases(args, official):
    cfg = dict(img_size=args.img, patch_size=args.patch, in_chans=args.chans, embed_dim=args.width, depth=args.depth,
               num_heads=args.heads, mlp_ratio=4.0, qkv_bias=False)
    out = []
    for cond in (True, False) if args.cond == "both" else (args.cond == "yes",):
        tag = "cond" if cond else "uncond"
        for b in args.backends.split(","):
            torch.manual_seed(0)
            ours = UViT(**cfg, num_classes=args.classes if cond else 0, cond_slot=cond, attn_backend=b, conv=False)
            out.append(Case(f"ours {b} {tag}", ours, args, cond))
            if official is not None:
                mode = {"sdpa": "flash", "math": "math"}[b]
                theirs = official.UViT(**cfg, num_classes=args.classes + 1 if cond else -1, conv=False)
                out.append(Case(f"official {mode} {tag}", theirs, args, cond, official, mode))
    return out

def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try: cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration): pass
    return dict(cpu=cpu, threads=torch.get_num_threads(), torch=torch.__version__)

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--official", type=Path, help="local copy of baofff/U-ViT libs/uvit.py (never committed here)")
    p.add_argument("--width", type=int, default=256); p.add_argument("--depth", type=int, default=8)
    p.add_argument("--heads", type=int, default=4); p.add_argument("--img", type=int, default=32)
    p.add_argument("--chans", type=int, default=4); p.add_argument("--patch", type=int, default=2)
    p.add_argument("--batch", type=int, default=64); p.add_argument("--classes", type=int, default=10)
    p.add_argument("--backends", default="sdpa,math", help="ours: sdpa (theirs: flash), math (theirs: math)")
    p.add_argument("--cond", default="both", choices=("both", "yes", "no"))
    p.add_argument("--n", type=int, default=3, help="timed repetitions"); p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--csv", type=Path, default=CSV)
    args = p.parse_args(argv)
    official = load_official(args.official) if args.official else None
    prev = {}
    if official is None and args.csv.is_file():
        prev = {r["case"]: r for r in csv.DictReader(open(args.csv))}
    cs = cases(args, official)
    for i in range(args.warmup + args.n):  # interleaved: forward of each, then a step of each
        for c in cs:
            with torch.no_grad():
                t0 = time.perf_counter(); c.call(); dt = time.perf_counter() - t0
            if i >= args.warmup: c.fwd.append(dt)
        for c in cs:
            t0 = time.perf_counter(); c.step(); dt = time.perf_counter() - t0
            if i >= args.warmup: c.stp.append(dt)
    m = machine()
    print(f"{m['cpu']}, {m['threads']} threads, torch {m['torch']}; width {args.width}, depth {args.depth}, "
          f"{args.img}x{args.img}x{args.chans}, patch {args.patch}, batch {args.batch}, median of {args.n}")
    rows, med = [], {c.name: (statistics.median(c.fwd), statistics.median(c.stp)) for c in cs}
    print(f"{'case':24s} {'forward s':>10s} {'step s':>8s} {'step min':>9s} {'fwd ratio':>10s} {'step ratio':>10s}")
    for c in cs:
        f, s = med[c.name]
        if c.official is None and official is not None:  # ours / official, same attention kind, same condition
            ref = med[c.name.replace("ours sdpa", "official flash").replace("ours math", "official math")]
        elif c.official is None and c.name in prev: ref = (float(prev[c.name]["forward_s"]), float(prev[c.name]["step_s"]))
        else: ref = None
        rf, rs = (f / ref[0], s / ref[1]) if ref else (float("nan"), float("nan"))
        print(f"{c.name:24s} {f:10.3f} {s:8.3f} {min(c.stp):9.3f} {rf:10.3f} {rs:10.3f}")
        rows.append(dict(case=c.name, forward_s=f"{f:.4f}", step_s=f"{s:.4f}", step_min_s=f"{min(c.stp):.4f}", forward_ratio=f"{rf:.3f}",
                         step_ratio=f"{rs:.3f}", ratio_against="official" if official is not None else "previous csv",
                         batch=args.batch, width=args.width, depth=args.depth, n=args.n, **m))
    print("ratio = ours / official measured in this run" if official is not None else "ratio = ours / previous CSV")
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    with open(args.csv, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0])); w.writeheader(); w.writerows(rows)
    print(f"wrote {args.csv}")

if __name__ == "__main__":
    main()
