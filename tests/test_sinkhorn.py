"""Sinkhorn-Knopp: marginals, stability, agreement with POT, and the same codes split across two processes."""
import os, numpy as np, pytest, torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from selfguide.sinkhorn import sinkhorn, sk_loss, Prototypes, ProjectionHead

def scores(b=64, k=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(b, 16, generator=g), dim=1) @ F.normalize(torch.randn(k, 16, generator=g), dim=1).T

def test_marginals():
    q = sinkhorn(scores(), n_iters=100)
    assert torch.allclose(q.sum(1), torch.ones(64), atol=1e-5) and torch.allclose(q.sum(0), torch.full((8,), 8.0), atol=1e-3)
    assert (q >= 0).all()

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_stable_for_huge_scores(dtype):
    s = (torch.randn(32, 6, generator=torch.Generator().manual_seed(1)) * 1e4).to(dtype)
    q = sinkhorn(s)
    assert torch.isfinite(q).all() and torch.allclose(q.sum(1), torch.ones(32), atol=1e-4)

def test_matches_pot():
    import ot  # POT, a test dependency (the dev extra)
    s = scores()
    plan = ot.sinkhorn(np.full(64, 1 / 64), np.full(8, 1 / 8), -s.double().numpy(), reg=0.5, numItermax=10_000, stopThr=1e-12)
    assert np.allclose(sinkhorn(s, n_iters=2000, epsilon=0.5).double().numpy(), 64 * plan, atol=1e-5)

def _worker(rank, init_file, out_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    q = sinkhorn(scores()[rank * 32:(rank + 1) * 32])              # each process holds half the batch
    torch.save(q, f"{out_file}.{rank}")
    dist.destroy_process_group()

def test_two_processes_get_the_codes_of_one(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path / "q")), nprocs=2, join=True)
    split = torch.cat([torch.load(tmp_path / f"q.{r}") for r in range(2)])
    assert torch.allclose(split, sinkhorn(scores()), atol=1e-6)

def test_sk_loss_forms_and_gradients():
    head, protos = ProjectionHead(12, 32, 8), Prototypes(5, 8)
    z = head(torch.randn(16, 12))
    codes = sinkhorn(z @ protos().T)
    for form in ("ce", "frobenius"):
        head.zero_grad(); protos.zero_grad()
        sk_loss(z, protos(), codes, form=form).backward(retain_graph=True)
        assert protos.weight.grad.abs().sum() > 0 and head.net[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="form"): sk_loss(z, protos(), codes, form="kl")
