"""Attention backend benchmark: one U-ViT training step (forward + backward + AdamW), per backend and precision.

Run: `.venv/bin/python benchmarks/attention.py [--preset tiny --img 16 --chans 1 --patch 2 --batch 128]`.
Prints the median seconds per step and each configuration's ratio to fp32 `sdpa`, measured in the same run.
"""
import argparse, contextlib, statistics, time
import torch
from selfguide.uvit import build_uvit

def step_time(backend, amp, args):
    torch.manual_seed(0)
    m = build_uvit(args.preset, img_size=args.img, patch_size=args.patch, in_chans=args.chans, attn_backend=backend)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
    x, t = torch.randn(args.batch, args.chans, args.img, args.img), torch.rand(args.batch)
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if amp else contextlib.nullcontext
    times = []
    for i in range(args.n + 2):
        t0 = time.perf_counter()
        with ctx(): loss = (m(x, t).float() - x).pow(2).mean()
        opt.zero_grad(); loss.backward(); opt.step()
        if i >= 2: times.append(time.perf_counter() - t0)
    return statistics.median(times)

if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="tiny"); p.add_argument("--img", type=int, default=16)
    p.add_argument("--chans", type=int, default=1); p.add_argument("--patch", type=int, default=2)
    p.add_argument("--batch", type=int, default=128); p.add_argument("--n", type=int, default=8, help="timed steps")
    p.add_argument("--no-bf16", action="store_true", help="fp32 only (bf16 is 20x slower on CPUs without native bf16)")
    args = p.parse_args()
    print(f"threads={torch.get_num_threads()} {vars(args)}")
    res = {(b, a): step_time(b, a, args) for b in ("sdpa", "math") for a in ((False,) if args.no_bf16 else (False, True))}
    base = res[("sdpa", False)]
    for (b, a), s in res.items():
        print(f"{b:5s} {'bf16' if a else 'fp32'}: {s * 1000:8.1f} ms/step  x{base / s:.2f} vs fp32 sdpa")
