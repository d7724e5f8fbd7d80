import pytest, torch
from selfguide.paths import get_path, PATHS

def test_cv_endpoints_and_constant_target():
    p, x0, eps = get_path("cv"), torch.randn(5, 1, 8, 8), torch.randn(5, 1, 8, 8)
    assert torch.allclose(p.x_t(x0, eps, torch.zeros(5)), x0)          # t = 0 is data
    assert torch.allclose(p.x_t(x0, eps, torch.ones(5)), eps)          # t = 1 is noise
    targets = [p.target(x0, eps, torch.full((5,), t)) for t in (0.0, 0.2, 0.5, 0.99)]
    assert all(torch.allclose(v, eps - x0) for v in targets)            # the same velocity all along

@pytest.mark.parametrize("name", list(PATHS))
def test_paths_start_at_data_and_end_in_noise(name):
    p, zero, one = get_path(name), torch.tensor(0.0), torch.tensor(1.0)
    assert float(p.a(zero)) == 1.0 and float(p.s(zero)) <= 0.01       # data at t = 0 (VE keeps s_min = 0.01)
    assert float(p.a(one) / p.s(one)) < (0.07 if name == "ddpm" else 0.02)  # noise dominates at t = 1 (ddpm: 0.068)

@pytest.mark.parametrize("name", list(PATHS))
def test_estimates_invert_the_path(name):
    p, x0, eps, t = get_path(name), torch.randn(4, 3, 4, 4), torch.randn(4, 3, 4, 4), torch.tensor([0.1, 0.4, 0.7, 0.95])
    xt, v = p.x_t(x0, eps, t), p.target(x0, eps, t)
    assert torch.allclose(p.noise_estimate(xt, v, t), eps, atol=1e-3)
    assert torch.allclose(p.data_estimate(xt, v, t), x0, atol=1e-3 * float(p.s(1.0)))

def test_ddpm_noises_to_the_official_schedules_snr():
    "x_t at t = 0.2 has the SNR abar / (1 - abar) of U-ViT's discrete schedule at n = 200, exactly and measured"
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2  # the release's beta_1..1000
    abar = torch.cumprod(1 - betas, 0)[199].item()                                      # abar_200
    p, t = get_path("ddpm"), torch.tensor(0.2)
    assert abs(float(p.a(t) ** 2 / p.s(t) ** 2) / (abar / (1 - abar)) - 1) < 1e-4      # 3.09 (our cv path: 16)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(400_000, generator=g), torch.randn(400_000, generator=g)      # unit-variance data
    xt = p.x_t(x0, eps, torch.full((400_000,), 0.2))
    a = (xt * x0).mean() / (x0 * x0).mean()                                             # regression of x_t on the data
    assert abs(float(a ** 2 / (xt - a * x0).var()) / (abar / (1 - abar)) - 1) < 0.02
    between = torch.cumprod(1 - betas, 0)[199:201].log().mean().exp().item()             # n = 200.5: geometric mean
    assert abs(float(p.a(torch.tensor(0.2005)) ** 2) - between) < 1e-5
