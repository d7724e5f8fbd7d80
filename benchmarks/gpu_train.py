"""gpu_check's in-process parts: training throughput and MFU through `selfguide.train.train` itself, the official
U-ViT's step beside ours, and a count of host-device synchronisations inside the step.

Every number comes from a real `train(...)` run: the loop's batch iterator (what its progress bar wraps) is wrapped by
a `Window` that marks step boundaries. Steps `a`..`b-1` are timed together, with one device synchronisation at each
end and none between (the host runs ahead as it does in a real run); step `a-1` runs under
`torch.utils.flop_counter.FlopCounterMode` (every matmul, convolution and attention of forward and backward, the m*
pass included); the last step, which reads the losses, is outside the window. For the duration of a run the harness
silences the progress bar, turns the checkpoint write into a no-op, sets `LOG_EVERY` out of reach (logging off) and,
on CUDA, builds the model under `torch.device("cuda")` (initialised on the GPU: seconds instead of a minute of CPU).
"""
from __future__ import annotations
import copy, re, shutil, statistics, time, traceback, warnings
from contextlib import contextmanager
from pathlib import Path
import torch

MODES = {"none": dict(guidance="none"),                    # online: the paper recipe's settings, guided phase
         "online": dict(guidance="online", sk_sigma=0.0)}   # (m* of the EMA every step: sk_sigma 0)


def modes(amortise: int) -> dict:
    return {**MODES, f"online amortise {amortise}": dict(guidance="online", sk_sigma=0.0, amortise=amortise)}


def sync(dev):
    if dev.type == "cuda": torch.cuda.synchronize(dev)


class Window:
    "Marks the steps of a `train()` loop: times steps [a, b), counts FLOPs of step `count`, watches syncs in [a, b)"
    def __init__(self, dev, a: int, b: int, count: int | None = None, watch: bool = False):
        self.dev, self.a, self.b, self.count, self.watch = dev, a, b, count, watch
        self.t_start = self.t0 = self.t1 = None
        self.flops, self.peak, self.fc, self.syncs = None, None, None, []

    def batches(self, iterable):
        it, i = iter(iterable), 0
        try:
            while True:
                self.boundary(i)
                try: batch = next(it)
                except StopIteration: return
                yield batch
                i += 1
        finally: self.stop_counting(); self.stop_watching()

    def boundary(self, i: int):
        cuda = self.dev.type == "cuda"
        if i == 0: sync(self.dev); self.t_start = time.perf_counter()
        if i == self.count:
            from torch.utils.flop_counter import FlopCounterMode
            self.fc = FlopCounterMode(display=False); self.fc.__enter__()
        if self.count is not None and i == self.count + 1: self.stop_counting()
        if i == self.a:
            sync(self.dev)
            if cuda: torch.cuda.reset_peak_memory_stats(self.dev)
            self.t0 = time.perf_counter()
            if self.watch and cuda: torch.cuda.set_sync_debug_mode("warn")
        if i == self.b:
            self.stop_watching(); sync(self.dev); self.t1 = time.perf_counter()
            if cuda: self.peak = torch.cuda.max_memory_allocated(self.dev) / 2**30

    def stop_counting(self):
        if self.fc is not None:
            self.fc.__exit__(None, None, None); self.flops, self.fc = self.fc.get_total_flops(), None

    def stop_watching(self):
        if self.watch and self.dev.type == "cuda": torch.cuda.set_sync_debug_mode(0)

    def record_sync(self, message: str):
        "A synchronising call: where in selfguide it came from (the innermost frame under selfguide/)"
        frames = [f for f in traceback.extract_stack() if "/selfguide/" in f.filename.replace("\\", "/")]
        where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno} {frames[-1].name}" if frames else "?"
        self.syncs.append(f"{where}: {message.splitlines()[0][:80]}")


@contextmanager
def harness(window: Window, dev):
    "train() with `window` around its batches, no progress bar, no checkpoint file, no loss read-outs in the loop"
    import selfguide.train as T
    saved = dict(tqdm=T.tqdm, save_checkpoint=T.save_checkpoint, LOG_EVERY=T.LOG_EVERY, build_model=T.build_model)
    real_tqdm, real_build = T.tqdm, T.build_model
    T.tqdm = lambda iterable, **kw: real_tqdm(window.batches(iterable), **{**kw, "disable": True})
    T.save_checkpoint, T.LOG_EVERY = (lambda *a, **k: None), 10**9
    if dev.type == "cuda":
        def build_on_device(*a, **k):
            with torch.device(dev): return real_build(*a, **k)
        T.build_model = build_on_device
    show = warnings.showwarning
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", message="only .* prototypes")     # untrained runs: prototypes collapse
        def record(msg, *a, **k):
            if "synchroniz" in str(msg): window.record_sync(str(msg))
            else: show(msg, *a, **k)
        warnings.showwarning = record
        try: yield
        finally:
            for k, v in saved.items(): setattr(T, k, v)
            warnings.showwarning = show


def first_steps(opts: dict, n: int, batch: int) -> int:
    "Steps before the measured one: 1 (step 0 allocates), or the first epoch of an amortised run (every m* computed)"
    return n // batch if opts.get("amortise", 1) > 1 else 1


def run_train(ctx, opts: dict, batch: int, timed: int, compile: bool = False, watch: bool = False) -> Window:
    "One `train()` run of `opts` over ctx.base; the window around its steps"
    import selfguide.train as T
    count = first_steps(opts, ctx.n, batch)
    a = count + 1
    w = Window(ctx.dev, a, a + timed, None if compile or watch else count, watch)
    out = ctx.tmp / f"run{time.monotonic_ns()}"
    out.mkdir(parents=True)                                     # no checkpoint writes it: loss.csv and manifest need it
    spec = dict(ctx.base, **opts, batch_size=batch, steps=a + timed + 1, compile=compile, out_dir=str(out))
    try:
        with harness(w, ctx.dev): T.train(**spec)
    finally:
        shutil.rmtree(out, ignore_errors=True)
        if ctx.dev.type == "cuda": torch.cuda.empty_cache()
    if w.t1 is None: raise RuntimeError("the run ended before its timed steps")
    return w


def throughput_row(ctx, mode: str, batch: int, compile: bool = False, flops: float | None = None) -> dict:
    "Part 1: one mode at one batch size; `flops` of the eager run for a compiled one"
    w = run_train(ctx, modes(ctx.amortise)[mode], batch, ctx.timed, compile)
    step = (w.t1 - w.t0) / ctx.timed
    flops = w.flops if w.flops is not None else flops
    tfs = flops / step / 1e12 if flops else None
    return dict(mode=mode, batch=batch, compile=compile, precision=ctx.precision, steps_timed=ctx.timed,
                step_ms=sig(step * 1e3), images_per_s=sig(batch / step),
                peak_mem_gib=sig(w.peak) if w.peak is not None else "",
                tflop_per_step=sig(flops / 1e12) if flops else "", tflops=sig(tfs) if tfs else "",
                mfu=sig(tfs / ctx.peak_tflops) if tfs and ctx.peak_tflops else "",
                of_matmul=sig(tfs / ctx.matmul_tflops) if tfs and ctx.matmul_tflops else "",
                warmup_extra_s=round((w.t0 - w.t_start) - w.a * step, 2), status="ok")


def sig(x: float, n: int = 4) -> float:
    "`x` to `n` significant digits"
    return float(f"{x:.{n}g}")


def sync_row(ctx, mode: str, batch: int, steps: int) -> dict:
    "Part 3: the synchronising calls inside `steps` steps of `mode` (torch.cuda.set_sync_debug_mode('warn'))"
    w = run_train(ctx, modes(ctx.amortise)[mode], batch, steps, watch=True)
    sites = sorted(set(w.syncs))
    return dict(mode=mode, batch=batch, steps_checked=steps, syncs=len(w.syncs), sites=" | ".join(sites[:4]),
                status="ok" if not w.syncs else "FAIL: synchronises inside the step")


def official_rows(ctx, path: Path, batch: int, reps: int, warm: int = 2) -> list[dict]:
    "Part 2: a bf16 training step (forward, MSE, backward, AdamW) of ours and of the official U-ViT, interleaved"
    from uvit_official import load_official
    from selfguide.uvit import PRESETS, UViT
    mod, dev, P = load_official(path), ctx.dev, PRESETS[ctx.preset]
    cfg = dict(img_size=32, patch_size=ctx.patch, in_chans=4, embed_dim=P["embed_dim"], depth=P["depth"],
               num_heads=P["num_heads"], mlp_ratio=4.0, qkv_bias=False)
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(batch, 4, 32, 32, generator=g).to(dev), torch.rand(batch, generator=g).to(dev)
    y, drop = torch.randint(0, 1000, (batch,), generator=g).to(dev), (torch.rand(batch, generator=g) < 0.1).to(dev)
    cases = {}
    for cond in ("uncond", "cond"):
        c = cond == "cond"
        with torch.device(dev):
            torch.manual_seed(0); ours = UViT(**cfg, num_classes=1000 if c else 0, cond_slot=c, conv=False)
            torch.manual_seed(0); theirs = mod.UViT(**cfg, num_classes=1001 if c else -1, conv=False)
        cases[("ours", cond)] = (ours, lambda m=ours, c=c: m(x, t, y if c else None, drop if c else None))
        cases[("official", cond)] = (theirs, lambda m=theirs, c=c: m(x, t * 1000, y if c else None))
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, (m, _) in cases.items()}
    times = {k: [] for k in cases}
    for i in range(warm + reps):                                  # interleaved: every case sees the same machine
        for k, (m, call) in cases.items():
            sync(dev); t0 = time.perf_counter()
            with torch.autocast(dev.type, torch.bfloat16, enabled=dev.type == "cuda"): pred = call()
            loss = (pred.float() - x).pow(2).mean()
            opts[k].zero_grad(set_to_none=True); loss.backward(); opts[k].step()
            sync(dev)
            if i >= warm: times[k].append(time.perf_counter() - t0)
    rows = []
    for cond in ("uncond", "cond"):
        o, f = (statistics.median(times[(w, cond)]) for w in ("ours", "official"))
        n = [sum(p.numel() for p in cases[(w, cond)][0].parameters()) for w in ("ours", "official")]
        rows.append(dict(case=cond, preset=ctx.preset, patch=ctx.patch, batch=batch, precision=ctx.precision,
                         reps=reps, ours_ms=sig(o * 1e3), official_ms=sig(f * 1e3), ratio=round(o / f, 3),
                         ours_params=n[0], official_params=n[1], attention=f"sdpa / {mod.ATTENTION_MODE}",
                         status="ok"))
    del cases, opts
    if dev.type == "cuda": torch.cuda.empty_cache()
    return rows


def matmul_tflops(dev) -> float:
    "The card's achieved dense matmul rate: bf16 8192^3 on CUDA (3 warm-up, median of 10), fp32 1024^3 on a CPU"
    n, dt = (8192, torch.bfloat16) if dev.type == "cuda" else (1024, torch.float32)
    a, b = torch.randn(n, n, device=dev, dtype=dt), torch.randn(n, n, device=dev, dtype=dt)
    ts = []
    for i in range(13 if dev.type == "cuda" else 4):
        sync(dev); t0 = time.perf_counter(); a @ b; sync(dev)
        if i >= (3 if dev.type == "cuda" else 1): ts.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(ts) / 1e12


PEAKS = {"H100 PCIe": 756, "H100 NVL": 835, "H100": 989, "H200": 989, "A100": 312}  # dense bf16 TFLOP/s, datasheets
                                                                                    # (SXM unless named)


def peak_tflops(name: str) -> tuple[float | None, str]:
    "The datasheet dense bf16 peak of a card by its name, and which entry matched"
    for k, v in PEAKS.items():
        if re.search(k.replace(" ", r".*"), name, re.I): return v, k
    return None, "unknown card"
