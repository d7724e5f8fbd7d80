"""Several processes train the model one process trains: two gloo processes on the CPU, each holding half the global
batch, end where one process holding all of it ends, for guidance none and online; gradient accumulation likewise;
and only rank 0 writes the run folder. `pytest -k distributed` selects these tests."""
import json, os, socket, subprocess, sys
from pathlib import Path
import pytest, torch
from fixtures import make_digits_npz
from selfguide.train import train

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(dataset="digits", preset="tiny", patch_size=4, batch_size=32, lr=1e-3, warmup_steps=3, ema_decay=0.9,
             seed=3, steps=12, ckpt_every=8, device="cpu")
ONLINE = dict(SMALL, guidance="online", clusters=4, sk_hidden=32, sk_dim=8, monitor_images=64)  # the CPU recipe's SK
PAPER = dict(ONLINE, sk_mask=True, feature_readout="token", feature_t=0.2)                      # Alg. 1's mask, [CLS]
RELEASED = dict(SMALL, guidance="online", clusters=4, monitor_images=64, protocol="released")  # the authors' protocol
RUNS = {"none": dict(SMALL, guidance="none"), "online": ONLINE, "paper_accum": dict(PAPER, grad_accum=2),
        "released": RELEASED}
REFUSED = {"masked": dict(PAPER, sk_sinkhorn="masked"), "indivisible": dict(SMALL, grad_accum=3)}

WORKER = r'''
import json, os, sys
spec, rank, writes = json.loads(sys.argv[1]), int(os.environ["RANK"]), []
def watch(event, args):                                    # rank > 0 must not write into the run folders
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        mode, flags = args[1] or "", args[2] or 0
        if not (set(mode) & set("wax+") or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)): return
    elif event not in ("os.mkdir", "os.rename", "os.remove", "os.rmdir"): return
    if os.path.abspath(os.fsdecode(args[0])).startswith(spec["root"]): writes.append([event, os.fsdecode(args[0])])
import torch
if rank:                                                   # torch.save writes from C++: no audit event of its own
    sys.addaudithook(watch); save = torch.save
    torch.save = lambda obj, f, *a, **k: (watch("open", (f, "wb", 0)), save(obj, f, *a, **k))[1]
from selfguide.train import train
for name, cfg in spec["runs"].items(): train(**cfg, out_dir=os.path.join(spec["root"], name))
refused = {}
for name, cfg in spec["refused"].items():
    try: train(**cfg, out_dir=os.path.join(spec["root"], name)); refused[name] = "trained"
    except ValueError as e: refused[name] = str(e)
if rank: torch.save({}, os.path.join(spec["root"], "control.pt"))   # a write the watch must see
with open(spec["report"] + str(rank), "w") as f: json.dump(dict(writes=writes, refused=refused), f)
'''

def _free_port() -> int:
    with socket.socket() as s: s.bind(("127.0.0.1", 0)); return s.getsockname()[1]

def launch(tmp, runs, refused, world=2):
    "Start `world` processes as torchrun would (RANK, WORLD_SIZE, ...), each training `runs` into tmp/multi/<name>"
    spec = json.dumps(dict(runs=runs, refused=refused, root=str(tmp / "multi"), report=str(tmp / "report")))
    env = {**os.environ, "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return [subprocess.Popen([sys.executable, "-c", WORKER, spec], env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(world)]

def reports(tmp, procs):
    "Wait for the processes of `launch`; their reports (rank > 0: writes into the run folders; refusals)"
    outs = [p.communicate(timeout=240)[0] for p in procs]
    for r, (p, o) in enumerate(zip(procs, outs)): assert p.returncode == 0, f"rank {r} failed:\n{o[-3000:]}"
    return [json.loads((tmp / f"report{r}").read_text()) for r in range(len(procs))]

def amortised(tmp) -> dict:
    "Online runs with the m* cache on 32 digits (an .npz), so that every step of a batch of 32 revisits every image"
    npz = tmp / "few.npz"
    if not npz.exists(): make_digits_npz(npz, 32)
    few = dict(dataset="npz", data_root=str(npz), amortise=2)
    return dict(amortised=dict(ONLINE, **few), amortised_tap=dict(PAPER, **few))      # the 'ema' and 'tap' sources

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    "The same runs by two processes (half the batch each) and by one (the whole batch, or two micro-batches)"
    tmp = tmp_path_factory.mktemp("distributed")
    procs = launch(tmp, {**RUNS, **amortised(tmp)}, REFUSED)                 # meanwhile, one process:
    for name, cfg in dict(none=RUNS["none"], online=ONLINE, paper=PAPER, none_accum=dict(RUNS["none"], grad_accum=2),
                          released=RELEASED, **amortised(tmp)).items():
        train(**cfg, out_dir=str(tmp / "one" / name))
    return tmp, reports(tmp, procs)

def _state(run):
    ck = torch.load(Path(run) / "checkpoints" / "last.pt", weights_only=False)
    return ck["model"], ck["ema"], ck["losses"], ck["sk_losses"], ck.get("m_star")

PRE_BN = ("bootstrap.head.net.0.bias", "bootstrap.head.net.1.running_mean")  # released head: a bias before train-mode
# BatchNorm has gradient 0 in exact arithmetic; its rounding noise, which AdamW scales to steps of ~lr with random
# signs, differs between any two summation orders (benchmarks/sgfm_parity.py: the released code's own runs too)

def assert_same_run(a, b, tol=1e-4, skip=()):
    (ma, ea, la, sa, ca), (mb, eb, lb, sb, cb) = _state(a), _state(b)
    assert ma.keys() == mb.keys() and ea.keys() == eb.keys()
    for part, x, y in (("model", ma, mb), ("ema", ea, eb)):
        for k in set(x) - set(skip):
            if x[k].is_floating_point(): assert (x[k] - y[k]).abs().max() < tol, f"{part} {k} differs"
            else: assert torch.equal(x[k], y[k]), f"{part} {k} differs"
    assert len(la) == len(lb) == SMALL["steps"] and torch.allclose(torch.tensor(la), torch.tensor(lb), atol=tol)
    assert torch.allclose(torch.tensor(sa), torch.tensor(sb), atol=tol, equal_nan=True)
    counts = [json.loads((Path(r) / "manifest.json").read_text())["metrics"].get("prototype_counts") for r in (a, b)]
    assert counts[0] == counts[1]                                                # m* of 64 images: the same
    assert (ca is None) == (cb is None) and (ca is None or torch.equal(ca["ids"], cb["ids"]))   # the m* caches

@pytest.mark.parametrize("guidance", ["none", "online", "amortised", "amortised_tap", "released"])
def test_distributed_two_processes_train_what_one_trains(runs, guidance):
    tmp, _ = runs
    assert_same_run(tmp / "multi" / guidance, tmp / "one" / guidance, skip=PRE_BN if guidance == "released" else ())

def test_distributed_gradient_accumulation_equals_the_large_batch(runs):
    tmp, _ = runs
    assert_same_run(tmp / "one" / "none_accum", tmp / "one" / "none")            # 2 x 16 = 32 in one process
    assert_same_run(tmp / "multi" / "paper_accum", tmp / "one" / "paper")        # 2 processes x 2 x 8 = 32, online

def test_distributed_only_rank_0_writes(runs):
    tmp, reports = runs
    assert reports[1]["writes"] == [["open", str(tmp / "multi" / "control.pt")]]   # only the control write
    for name in RUNS: assert {p.name for p in (tmp / "multi" / name).iterdir()} == {"checkpoints", "loss.csv", "manifest.json"}
    m = json.loads((tmp / "multi" / "online" / "manifest.json").read_text())
    assert m["environment"]["world_size"] == 2 and [s["step"] for s in m["online"]["monitor"]] == [6, 12]

def test_distributed_refuses_clearly_on_every_rank(runs):
    _, reports = runs
    for rep in reports:
        assert "--sk-sinkhorn batch" in rep["refused"]["masked"]
        assert "must divide by 2 processes" in rep["refused"]["indivisible"]

# A real --compile step in `make test`, bounded: inductor's C++ kernels are built serially (no pool of compile workers
# to start on 2 cores) and scalar (no SIMD: the vectorized templates take most of g++'s time), into a fresh cache
# under tmp_path, so that every kernel is compiled here and none comes from an earlier run. About 45 s of CPU on a
# 2-core machine; SIMD kernels (the default) and the default worker pool are the same lowering, built more slowly.
FAST_INDUCTOR = {"compile_threads": 1, "cpp.vec_isa_ok": False}

def test_distributed_compiled_steps_equal_eager(tmp_path):
    """--compile compiles the U-ViT in place, and its forward and backward, run as inductor's C++ kernels, train as
    eager does: the losses of two steps (step 1's follows the compiled backward's update) agree within 1e-5. Float32
    kernels that fuse ops and reorder sums round differently (~1e-7 here, one ulp of the loss); a wrong kernel or
    gradient moves the loss by far more (the first step alone moves it by ~0.3)."""
    from selfguide.cli import parser
    from torch._dynamo.utils import counters
    from torch._inductor.utils import fresh_cache
    assert parser().parse_args(["train", "--compile", "--grad-accum", "2"]).compile is True
    cfg = dict(SMALL, guidance="none", steps=2)
    eager = train(**cfg, out_dir=str(tmp_path / "eager"))
    torch._dynamo.reset(); counters.clear()
    try:
        with fresh_cache(dir=str(tmp_path), delete=False), torch._inductor.config.patch(FAST_INDUCTOR):
            run = train(**cfg, compile=True, out_dir=str(tmp_path / "compiled"))
        graphs, breaks = counters["stats"]["unique_graphs"], dict(counters["graph_break"])
    finally: torch._dynamo.reset()
    assert graphs == 1 and not breaks, (graphs, breaks)            # the whole U-ViT forward in one graph
    assert len(list(tmp_path.rglob("*.so"))) > 1                   # its kernels, built here (forward and backward)
    assert json.loads((run / "manifest.json").read_text())["params"]["compile"] is True
    (le, ce) = (torch.tensor(_state(r)[2], dtype=torch.float64) for r in (eager, run))
    assert len(le) == 2 and (le[0] - le[1]).abs() > 0.05 and (le - ce).abs().max() < 1e-5, (le, ce)

def test_distributed_python_m_selfguide():
    r = subprocess.run([sys.executable, "-m", "selfguide", "train", "--help"], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert r.returncode == 0 and "--grad-accum" in r.stdout
