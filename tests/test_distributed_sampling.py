"""Sampling split across two gloo processes on CPU gives the one-process samples; rank 0 alone writes and scores."""
import json, os, socket
import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from selfguide.uvit import build_uvit
from selfguide.sample import sample

KW = dict(n=10, batch_size=3, seed=5, g=0.4, rtol=1e-3, atol=1e-3, steps=4)  # chunks of 3, 3, 3, 1: two per rank
SOLVERS = ("euler", "dopri5", "euler_maruyama")

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]

def _env(rank: int, world: int, port: int):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)

def _model():
    torch.manual_seed(0)
    return build_uvit("tiny", img_size=8, in_chans=1, patch_size=4, num_classes=3).eval()

def _sample_worker(rank, world, port, out):
    _env(rank, world, port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model, c = _model(), torch.arange(KW["n"]) % 3
    res = {s: sample(model, KW["n"], c=c, solver=s, distributed=True, progress=False,
                     **{k: v for k, v in KW.items() if k != "n"}) for s in SOLVERS}
    torch.save({s: (r.x, r.nfe, r.chunk_nfe, r.c) for s, r in res.items()}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()

@pytest.fixture(autouse=True)
def cpu_only(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # the spawned processes: gloo on CPU even on a GPU machine

def test_distributed_sampling_two_gloo_processes_equal_one(tmp_path):
    mp.spawn(_sample_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2)
    model, c = _model(), torch.arange(KW["n"]) % 3
    for s in SOLVERS:
        one = sample(model, KW["n"], c=c, solver=s, progress=False, **{k: v for k, v in KW.items() if k != "n"})
        for rank in range(2):                                       # every rank returns the whole, gathered result
            x, nfe, chunk_nfe, cr = torch.load(tmp_path / f"rank{rank}.pt")[s]
            assert torch.equal(x, one.x), (s, rank)
            assert nfe == one.nfe and chunk_nfe == one.chunk_nfe and len(chunk_nfe) == 4 and torch.equal(cr, c)

def _cli_worker(rank, world, ports, run, out):
    _env(rank, world, ports[0])
    import selfguide.cli as cli
    common = ["--solver", "dopri5", "--rtol", "1e-3", "--atol", "1e-3", "--batch-size", "3", "--seed", "2"]
    cli.main(["sample", "--run", run, "--n", "10", *common, "--out", f"{out}/two.npz"])  # joins the group from the env
    assert not dist.is_initialized()                                # main left no group behind
    cli.evaluate_samples = lambda images, *a, **k: {"n_samples": len(images), "mean": float(images.mean())}
    os.environ["MASTER_PORT"] = str(ports[1])                       # a fresh port: the first group's may linger
    dist.init_process_group("gloo", rank=rank, world_size=world)   # as main does, and keep it to see the returns
    m = cli.evaluate(run=run, n=10, solver="euler", steps=2, batch_size=3, seed=1)
    res = cli.sample_run(run, 7, "euler", 2, batch_size=3)
    json.dump(dict(evaluate=m, sample_run=None if res is None else res["images"].shape), open(f"{out}/rank{rank}.json", "w"))
    dist.destroy_process_group()

def test_distributed_cli_sample_and_evaluate_write_on_rank_0_only(tmp_path):
    from selfguide.cli import main, sample_run
    run = tmp_path / "run"
    main(["train", "--dataset", "digits", "--guidance", "class", "--preset", "tiny", "--patch-size", "4", "--steps", "2",
          "--batch-size", "16", "--device", "cpu", "--out-dir", str(run)])
    ports = [_free_port()]
    while len(ports) < 2: ports += [p for p in [_free_port()] if p != ports[0]]
    mp.spawn(_cli_worker, args=(2, ports, str(run), str(tmp_path)), nprocs=2)
    one = sample_run(run, 10, "dopri5", rtol=1e-3, atol=1e-3, batch_size=3, seed=2)
    two = np.load(tmp_path / "two.npz")
    assert np.array_equal(two["images"], one["images"]) and np.array_equal(two["labels"], one["labels"])
    assert float(two["nfe"]) == float(one["nfe"])
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert r1 == dict(evaluate=None, sample_run=None) and r0["sample_run"] == [7, 16, 16, 1]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["metrics"].items() >= r0["evaluate"].items() and manifest["evaluation"]["processes"] == 2
    images = sample_run(run, 10, "euler", 2, batch_size=3, seed=1)["images"]
    assert r0["evaluate"] == {"n_samples": 10, "mean": float(images.mean())}  # the one-process samples, scored once
