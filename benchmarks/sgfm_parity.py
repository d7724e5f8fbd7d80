"""Our released protocol against the authors' code (dongzhuoyao/sgfm): one training step, then ten, side by side.

Run: `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sgfm_parity.py --sgfm /tmp/sgfm [--commit SHA]`, /tmp/sgfm a local
copy of their repository (`git -C <clone> archive HEAD | tar -x -C /tmp/sgfm`; never committed here). Their model,
loss helpers and EMA come from its `libs/uvit_online.py`, `flow_matching.py` and `tools/utils_uvit.py`; their step, a
closure in `train()` of `train_sgfm_hydra.py`, is re-enacted in `their_step`. Needs torch, torchdiffeq, torchvision
(in .venv), einops and absl-py: with those (a throwaway venv: `python3 -m venv /tmp/sgfmenv`, a .pth there running
`site.addsitedir(<.venv site-packages>)`, `pip install einops absl-py`) their files run as released; under .venv
alone their einops patterns and absl.logging are stubbed (the md says which). Our side is our code as `train()` calls
it: `build_model` (protocol "released"), `step_inputs`, `amortised_inputs`, `_Step`, `ema_update`. Same weights (their
state dict mapped onto ours: token order, names, signs: their time runs from noise 0 to data 1, so t_theirs = 1 - t,
their time embedding is fed 1 - t, and our decoder and the final conv's bias are negated: our velocity is minus
theirs), same batch, noise, t and CFG drops (theirs drawn in their forward from the reseeded global RNG, ours the same).
Writes outputs/bench/sgfm_parity.csv (quantity, step, max_abs, max_rel, note) and outputs/bench/sgfm_parity.md.
"""
import argparse, copy, csv, importlib.util, logging, subprocess, sys, types
from pathlib import Path
import torch, torch.nn as nn, torch.nn.functional as F
from selfguide.config import TrainConfig, protocol_values
from selfguide.uvit import PRESETS, token_roles
from selfguide.paths import get_path
from selfguide.sinkhorn import sinkhorn
from selfguide.train import build_model, step_inputs, step_generator, _Step
from selfguide.online import check_online, sk_weight
from selfguide.protocol import ema_bootstrap, ema_decay
from selfguide.amortise import amortised_inputs
from selfguide.runs import ema_update, lr_at
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, describe

OUT = Path("outputs/bench")
NEG = ("decoder_pred.weight", "decoder_pred.bias", "final_layer.bias")  # our velocity is minus theirs
RENAME = {"prototypes.weight": "bootstrap.protos.weight", "null_cfg_embed": "null_emb",
          "unconditional_embed": "uncond_emb"}
THEIR_TOKENS = {"cls": 0, "time": 1, "cond": 2}  # UViT_Embed.forward: cat(cls, time, label, patches)
PRE_BN = ("bootstrap.head.net.0.bias", "bootstrap.head.net.1.running_mean")  # a bias before train-mode BatchNorm
# (gradient 0 in exact arithmetic, rounding noise that AdamW turns into steps of ~lr) and the BN mean that carries it
ROWS = []

def _stubs():
    "einops (the patterns libs/uvit_online.py uses) and absl.logging, for a venv without them"
    def rearrange(x, pattern, **k):
        B, L = x.shape[:2]
        if pattern == "B L (K H D) -> K B H L D": return x.reshape(B, L, k["K"], k["H"], -1).permute(2, 0, 3, 1, 4)
        if pattern == "B H L D -> B L (H D)": return x.transpose(1, 2).reshape(B, x.shape[2], -1)
        if pattern != "B (h w) (p1 p2 C) -> B C (h p1) (w p2)": raise NotImplementedError(pattern)
        h, p = int(L ** 0.5), k["p1"]
        return x.reshape(B, h, h, p, p, -1).permute(0, 5, 1, 3, 2, 4).reshape(B, -1, h * p, h * p)
    repeat = lambda x, pattern, b: x.expand(b, -1, -1)            # their only pattern: "1 1 d -> b 1 d"
    return types.SimpleNamespace(rearrange=rearrange, repeat=repeat, reduce=None, einsum=None), \
        types.SimpleNamespace(logging=logging)

def load_sgfm(root: Path) -> tuple[dict, str]:
    "Their modules from the copy at `root` (time embedding fed 1 - t), and whether einops/absl ran as released"
    files = dict(uvit_online="libs/uvit_online.py", flow_matching="flow_matching.py", utils_uvit="tools/utils_uvit.py")
    missing = [f for f in files.values() if not (root / f).is_file()]
    if missing: sys.exit(f"sgfm_parity: error: --sgfm {root} is not a copy of dongzhuoyao/sgfm: no {missing[0]}")
    try: import einops, absl; env = f"einops {einops.__version__} and absl-py, as released"  # noqa: F401
    except ImportError: sys.modules["einops"], sys.modules["absl"] = _stubs(); env = "einops and absl stubbed"
    mods = {}
    for name, rel in files.items():
        spec = importlib.util.spec_from_file_location(f"sgfm_{name}", root / rel)
        mods[name] = importlib.util.module_from_spec(spec); sys.modules[spec.name] = mods[name]
        spec.loader.exec_module(mods[name])
    emb = mods["uvit_online"].timestep_embedding                  # their time is 1 - ours: embed what ours embeds
    mods["uvit_online"].timestep_embedding = lambda ts, dim, max_period=10000: emb(1 - ts, dim, max_period)
    return mods, env

def our_name(n: str) -> str:
    n = RENAME.get(n, n)
    return n.replace("patch_embed.proj.", "patch_embed.").replace("projection_head.", "bootstrap.head.net.")

def to_ours(n: str, v: torch.Tensor, roles: list) -> torch.Tensor:
    "Their tensor `v` named `n` (weight, gradient or buffer) in our layout"
    if n == "pos_embed": v = torch.cat([v[:, [THEIR_TOKENS[r] for r in roles]], v[:, 3:]], 1)
    if n in ("null_cfg_embed", "unconditional_embed"): v = v.reshape(1, -1)
    return -v if n in NEG else v

def mapped(their: nn.Module, roles: list) -> dict:
    return {our_name(k): to_ours(k, v, roles) for k, v in their.state_dict().items()}

@torch.no_grad()
def perturb(m: nn.Module, g) -> None:
    "Move every weight off its init (zero biases, unit norms would hide a sign or a mapping); BatchNorm statistics too"
    for p in m.parameters(): p.add_(0.05 * torch.randn(p.shape, generator=g))
    for bn in (x for x in m.modules() if isinstance(x, nn.BatchNorm1d)):
        bn.running_mean.copy_(0.1 * torch.randn(bn.running_mean.shape, generator=g))
        bn.running_var.copy_(0.5 + torch.rand(bn.running_var.shape, generator=g)); bn.num_batches_tracked += 7

class Pair:
    "Their UViT_Embed, its EMA and AdamW; ours from `build_model` under the released protocol, the same weights"
    def __init__(self, args, mods):
        self.mods, self.args, self.path, self.B, P = mods, args, get_path("cv"), args.batch, PRESETS[args.preset]
        self.cfg = c = TrainConfig(guidance="online", preset=args.preset, patch_size=args.patch, clusters=args.k,
                                   batch_size=args.batch, steps=args.steps, lr=args.lr, warmup_steps=1, seed=args.seed,
                                   ema_decay=args.ema_rate, protocol="released",
                                   **protocol_values("released", args.preset))
        torch.manual_seed(args.seed)
        self.net = mods["uvit_online"].UViT_Embed(
            img_size=args.img, patch_size=args.patch, in_chans=args.chans, embed_dim=P["embed_dim"], depth=P["depth"],
            num_heads=P["num_heads"], mlp_ratio=4, p_uncond=c.p_drop, qkv_bias=False, mlp_time_embed=False, conv=True,
            num_classes=-1, nmb_prototypes=args.k, nmb_prototypes_output_dim=P["embed_dim"])  # uvit_online.yaml
        self.ema = copy.deepcopy(self.net).eval()                  # their initialize_train_state: a copy, eval mode
        g = torch.Generator().manual_seed(args.seed + 1)
        perturb(self.net, g); perturb(self.ema, g); self.spread_prototypes(g)  # the EMA differs from the online net
        self.opt = mods["utils_uvit"].get_optimizer(self.net.parameters(), self.net, "adamw", lr=args.lr,
                                                    weight_decay=0.0)
        self.fm, self.fm_ema = (mods["flow_matching"].Flow_Matching(n) for n in (self.net, self.ema))
        self.model = build_model(c, (args.chans, args.img, args.img), 0)          # ours, as train() builds it
        self.roles = token_roles(self.model)
        self.model.load_state_dict(mapped(self.net, self.roles))   # strict: every tensor has its counterpart
        self.our_ema = copy.deepcopy(self.model).requires_grad_(False).eval(); ema_bootstrap(self.our_ema, c)
        self.our_ema.load_state_dict(mapped(self.ema, self.roles))
        self.src = check_online(c, 10 ** 6)                        # 'tap': the SK rows of the training forward
        self.step_net = _Step(self.model, self.src == "tap", stopgrad=c.sk_stopgrad, epsilon=c.sk_epsilon,
                              n_iters=c.sk_iters, temperature=c.sk_temperature, form=c.sk_form)
        self.our_opt = torch.optim.AdamW(self.model.parameters(), lr=c.lr, betas=(c.beta1, c.beta2),
                                         weight_decay=c.weight_decay)
        self.warm_end, self.seen = int(args.steps * c.sk_sigma), {}  # theirs: ema_start_iters = 0.5 * n_steps
        for key, m in (("t", self.net), ("t_ema", self.ema)):      # their forward's outputs
            m.register_forward_hook(lambda mod, i, o, key=key: self.seen.__setitem__(key, o))
        for key, m in (("o", self.model.bootstrap.head), ("o_ema", self.our_ema.bootstrap.head)):  # our head's rows
            m.register_forward_hook(lambda mod, i, o, key=key: self.seen.__setitem__(key, (i[0], o)))

    @torch.no_grad()
    def spread_prototypes(self, g):
        "Their EMA prototypes along K far-apart centred EMA embeddings, norms 0.95-1.05: m* then uses every id"
        x, n = (torch.randn(self.B, self.args.chans, self.args.img, self.args.img, generator=g) for _ in range(2))
        e = torch.full((self.B,), self.args.ema_t)
        z = self.ema(e[:, None, None, None] * x + (1 - e[:, None, None, None]) * n, e)[1]  # (B, D), alike at init
        d, pick = F.normalize(z - z.mean(0), dim=1), [0]
        for _ in range(self.args.k - 1): pick.append(int((d @ d[pick].T).max(1).values.argmin()))
        self.ema.prototypes.weight.copy_(d[pick] * (0.95 + 0.1 * torch.rand(len(pick), 1, generator=g)))

    def draws(self, step):
        "x0 (a fixed-seed batch), our step's draws from `step_inputs`, and their drop (the forward's first draw)"
        x0 = torch.randn(self.B, self.args.chans, self.args.img, self.args.img,
                         generator=torch.Generator().manual_seed(10_000 + step))
        x0, noise, t, _, _, m_noise, views = step_inputs(x0, None, step_generator(self.cfg.seed, step), self.cfg,
                                                          self.path, slice(0, self.B), step >= self.warm_end)
        assert torch.equal(1 - (1 - t), t), "t and 1 - t must be exact complements"
        torch.manual_seed(self.args.seed * 1000 + step)            # reseeded the same before their forward
        drop = (torch.zeros(self.B, 1, 1).float().uniform_(0, 1) < self.cfg.p_drop).flatten()
        return x0, noise, t, m_noise, views, (drop if step >= self.warm_end else None)

def their_step(p: Pair, step, x, noise, t, sigma_min=0.0, copy_step=None):
    "train_sgfm_hydra.py's train_step (stage, m*, x_t, losses, update, EMA) re-enacted on injected draws"
    s0 = p.warm_end; copy_step = s0 if copy_step is None else copy_step
    p.opt.zero_grad()
    y_emb = ids = None
    head = copy.deepcopy(p.net.projection_head)                    # to read our [CLS] rows with their head
    if step >= s0:                                                 # stage 2: m* from the EMA at ema_t, training noise
        ema_t = torch.tensor([p.args.ema_t] * len(x), dtype=x.dtype)
        e4 = ema_t[:, None, None, None]
        y_emb, _, ids = p.fm_ema.get_cluster_info(x_t=e4 * x + (1 - (1 - sigma_min) * e4) * noise, t=ema_t)
    t4 = t[:, None, None, None]
    x_t, u = t4 * x + (1 - (1 - sigma_min) * t4) * noise, x - (1 - sigma_min) * noise
    torch.manual_seed(p.args.seed * 1000 + step)
    loss_fm, soft = p.fm.get_loss_fm(x_t=x_t, u=u, t=t, y=y_emb, is_stage2=step >= s0, config=None)
    loss_sk, _ = p.fm.get_loss_sk(_softlabel=soft, accelerator=types.SimpleNamespace(num_processes=1))
    band = (t > 0.8) & (t < 0.9)
    loss_sk = (loss_sk * band).mean()
    loss = loss_fm.mean() + loss_sk * 1.0 * min(step / s0, 1)      # swav_w 1.0
    loss.mean().backward()
    grads = {n: q.grad.clone() for n, q in p.net.named_parameters()}
    p.opt.step()
    if step == copy_step: p.ema.load_state_dict(p.net.state_dict())
    if step >= s0: p.mods["utils_uvit"].ema(p.ema, p.net, p.args.ema_rate)
    pred, z, _, drop, f = p.seen["t"]
    out = dict(f=f, z=z, codes=p.mods["flow_matching"].distributed_sinkhorn(soft.detach(), 0.05, 3, 1), sk=loss_sk,
               fm=loss_fm.mean(), loss=loss, pred=-pred, band=band, drop=drop, grads=grads, ids=ids, c=y_emb, head=head)
    if ids is not None: out.update(f_ema=p.seen["t_ema"][4], z_ema=p.seen["t_ema"][1])
    return out

def our_step(p: Pair, step, x0, noise, t, m_noise, views, drop):
    "One step of `train()`'s loop (one process, one micro-batch) with our functions, on the same draws"
    cfg, model, B, out = p.cfg, p.model, p.B, {}
    kept = None if drop is None else (~drop).nonzero()[:, 0]
    c, feats, views = amortised_inputs(model.bootstrap, p.our_ema, None, None, step, slice(0, B), x0, views, kept,
                                       m_noise, p.path, p.src, B)
    if c is not None:                                              # m*'s ids: the EMA prototype rows c holds
        hit = (c[kept][:, None] == p.our_ema.bootstrap.protos.weight[None]).all(-1)
        assert hit.sum(1).eq(1).all(), "each m* row must be one EMA prototype"
        out.update(c=c[kept], ids=hit.float().argmax(1), f_ema=p.seen["o_ema"][0], z_ema=p.seen["o_ema"][1])
    for grp in p.our_opt.param_groups: grp["lr"] = lr_at(step, cfg.lr, cfg.warmup_steps)
    w_sk = sk_weight(step, cfg.steps, cfg.sk_sigma, cfg.sk_warmup_weight)
    p.our_opt.zero_grad(set_to_none=True)
    pred, l_sk, f = p.step_net(p.path.x_t(x0, noise, t), t, c, drop, views, feats, [])
    loss = p.path.loss(pred, x0, noise, t)
    total = loss + w_sk * l_sk.float()
    total.backward()
    z = p.seen["o"][1]
    scores = z.detach() @ model.bootstrap.protos().detach().T
    grads = {n: q.grad.clone() if q.grad is not None else None for n, q in model.named_parameters()}
    p.our_opt.step()
    ema_update(p.our_ema, model, ema_decay(cfg, step, p.warm_end))     # as train() decays it
    return dict(out, f=f, z=z, scores=scores, codes=sinkhorn(scores, cfg.sk_iters, cfg.sk_epsilon), sk=l_sk,
                fm=loss, loss=total, pred=pred, band=views[0][2], drop=drop, grads=grads, kept=kept)

def record(quantity, step, ours, theirs, note=""):
    "max |ours - theirs| and that over max |theirs|; integer or boolean tensors: rows that differ, and their share"
    a, b = ours.detach(), theirs.detach()
    if a.shape != b.shape: raise ValueError(f"{quantity}: ours {tuple(a.shape)}, theirs {tuple(b.shape)}")
    if not a.is_floating_point():
        d = a != b
        n = int((d.flatten(1).any(1) if d.ndim > 1 else d).sum())
        ROWS.append(dict(quantity=quantity, step=step, max_abs=n, max_rel=f"{n / max(1, len(a)):.3f}",
                         note=f"rows that differ, of {len(a)}"))
        return n / max(1, len(a))
    d = (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
    s = b.double().abs().max().item() if b.numel() else 0.0
    ROWS.append(dict(quantity=quantity, step=step, max_abs=f"{d:.3e}", max_rel=f"{d / s if s else 0.0:.3e}", note=note))
    return d / s if s else d

QUANTITIES = dict(drop="drop rows (CFG null)", band="SK band rows", f="[CLS] at the mid block (training forward)",
                  z="z (normalised embedding)", codes="Sinkhorn codes", sk="SK loss", pred="velocity (ours = -theirs)",
                  fm="flow-matching loss", loss="total loss", f_ema="m* [CLS] of the EMA at t_s",
                  z_ema="m* z of the EMA head", ids="m* ids", c="m* condition vectors")

def compare_step(p: Pair, label, o, t, grads=True):
    "Every intermediate of one step, and the gradient of every parameter (mapped by name, sign flipped with NEG)"
    t = dict(t, drop=torch.zeros(0, dtype=torch.bool) if t["drop"] is None else t["drop"])
    o = dict(o, drop=t["drop"][:0] if o["drop"] is None else o["drop"])
    for q, name in QUANTITIES.items():                             # m*: of the kept (not dropped) rows
        if q in o: record(name, label, o[q], t[q][o["kept"]] if q in ("f_ema", "z_ema", "ids", "c") else t[q])
    record("z, their head on our [CLS] rows", label, o["z"], F.normalize(t["head"](o["f"]), dim=1))
    record("Sinkhorn codes, their Sinkhorn on our scores", label, o["codes"],
           p.mods["flow_matching"].distributed_sinkhorn(o["scores"], 0.05, 3, 1))
    if grads: worst("grad", label, {our_name(n): (torch.zeros_like(g) if o["grads"][our_name(n)] is None else
                                                  o["grads"][our_name(n)], to_ours(n, g, p.roles))
                                    for n, g in t["grads"].items()})   # ours None (unused): theirs exactly 0

def worst(what, label, pairs: dict, note=""):
    "A row per tensor (ours, theirs) in `pairs`, then the worst of all but PRE_BN"
    rel = {n: record(f"{what} {n}", label, a.reshape(-1), b.reshape(-1)) for n, (a, b) in pairs.items()}
    top = max((r, n) for n, r in rel.items() if n not in PRE_BN)
    ROWS.append(dict(quantity=f"{what}, worst tensor but PRE_BN", step=label, max_abs="", max_rel=f"{top[0]:.3e}",
                     note=f"{top[1]}, of {len(rel)}" + (f"; {note}" if note else "")))

def run(args, mods, label, steps, sigma_min=0.0, copy_step=None, dtype=torch.float32, exact_bias=False, note=""):
    "`steps` on a fresh pair, each compared (several: the worst step per quantity), then weights and EMA weights"
    torch.set_default_dtype(dtype)                                 # their 'flash' attention casts q, k, v to fp32,
    mods["uvit_online"].ATTENTION_MODE = "flash" if dtype == torch.float32 else "math"  # their 'math' keeps fp64
    p, start, each = Pair(args, mods), len(ROWS), len(steps) > 1
    if exact_bias:                                                 # PRE_BN's gradient: its exact value 0, both sides
        for b in (p.net.projection_head[0].bias, p.model.bootstrap.head.net[0].bias): b.register_hook(torch.zeros_like)
    for s in steps:
        x0, noise, t, m_noise, views, drop = p.draws(s)
        o = our_step(p, s, x0, noise, t, m_noise, views, drop)
        th = their_step(p, s, x0, noise, 1 - t, sigma_min, copy_step)
        compare_step(p, f"{label}: step {s}" if each else label, o, th, not each)
    for q in dict.fromkeys(r["quantity"] for r in ROWS[start:] if each):  # the worst step; the first above 1e-3
        rs, at = [r for r in ROWS[start:] if r["quantity"] == q], lambda r: r["step"].split(": ")[1]
        top, first = max(rs, key=lambda r: float(r["max_rel"])), [at(r) for r in rs if float(r["max_rel"]) > 1e-3]
        ROWS.append(dict(quantity=q, step=label, max_abs=top["max_abs"], max_rel=top["max_rel"],
                         note=f"worst of {len(rs)} steps: {at(top)}; first above 1e-3: {(first or ['none'])[0]}"
                         + ("; rows that differ" if "rows that differ" in top["note"] else "")))
    for what, theirs, ours in (("weights", p.net, p.model), ("EMA weights", p.ema, p.our_ema)):
        mine = ours.state_dict()
        worst(what, label, {our_name(n): (mine[our_name(n)], to_ours(n, v, p.roles))
                            for n, v in theirs.state_dict().items()}, note if what == "EMA weights" else "")
    torch.set_default_dtype(torch.float32)

def runs(s0: int) -> list:
    "(label, column, steps, options) of each comparison; s0 the first stage-2 step"
    one, ten, across = [s0 + 1], range(s0 + 1, s0 + 11), range(s0 - 3, s0 + 7)
    return [("stage 1 (warm-up)", "stage 1", [s0 // 4], dict(note="both EMAs frozen in warm-up")),
            ("stage 2", "stage 2", one, {}), ("stage 2, their sigma_min 1e-4", "σmin 1e-4", one, dict(sigma_min=1e-4)),
            ("10 steps, stage 2", "10 steps", ten, {}),
            ("10 steps, stage 2, PRE_BN gradient 0", "10 steps, PRE_BN grad 0", ten, dict(exact_bias=True)),
            ("10 steps, stage 2, fp64", "10 steps, fp64", ten, dict(dtype=torch.float64)),
            ("10 steps across the switch", "switch", across, {}),
            ("10 steps across the switch, fp64", "switch, fp64", across, dict(dtype=torch.float64))]

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sgfm", type=Path, required=True, help="local copy of dongzhuoyao/sgfm (never committed here)")
    ap.add_argument("--commit", default=None, help="their commit, when --sgfm is not a git checkout")
    ap.add_argument("--preset", default="nano", help="our preset (nano: width 64, depth 4 = 2 in + mid + 2 out)")
    for flag, kind, default in (("--img", int, 8), ("--chans", int, 4), ("--patch", int, 2), ("--k", int, 5),
                                ("--batch", int, 64), ("--steps", int, 40), ("--seed", int, 0), ("--out", Path, OUT),
                                ("--lr", float, 1e-3),        # constant, both sides
                                ("--ema-rate", float, 0.9),   # both sides; released 0.9999 would not move in 10 steps
                                ("--ema-t", float, 0.85)):    # their ema_t; ours t_s 0.15
        ap.add_argument(flag, type=kind, default=default)
    args = ap.parse_args(argv)
    mods, env = load_sgfm(args.sgfm)
    commit = args.commit or subprocess.run(["git", "-C", str(args.sgfm), "rev-parse", "HEAD"], capture_output=True,
                                           text=True).stdout.strip() or "unknown (pass --commit)"
    plan = runs(args.steps // 2)
    for label, _, steps, kw in plan: run(args, mods, label, steps, **kw)
    opt = torch.optim.AdamW([nn.Parameter(torch.ones(1))])
    lr = mods["utils_uvit"].customized_lr_scheduler(opt, 5000).lr_lambdas[0]  # their LambdaLR's factor
    write(args, env, commit, plan, f"learning rate / lr with warm-up 5000 at steps 0, 1, 2: ours "
          f"{[lr_at(s, 1, 5000) for s in range(3)]} (runs.lr_at), theirs {[lr(s) for s in range(3)]} (LambdaLR)")

def write(args, env, commit, plan, lr_note):
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "sgfm_parity.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["quantity", "step", "max_abs", "max_rel", "note"]); w.writeheader()
        w.writerows(ROWS + [dict(quantity="learning rate schedule", step="", max_abs="", max_rel="", note=lr_note)])
    cell, labels = {(r["quantity"], r["step"]): r for r in ROWS}, [label for label, *_ in plan]
    keep = lambda q: not q.startswith(("grad ", "weights ", "EMA weights ")) or q.endswith(
        (PRE_BN[0], "null_emb", "uncond_emb"))                    # per tensor: only those the notes discuss
    qs = [q for q in dict.fromkeys(r["quantity"] for r in ROWS if r["step"] in labels) if keep(q)]
    fmt = lambda r: "" if r is None else f"{r['max_abs']} rows" if "rows that differ" in r["note"] else r["max_rel"]
    lines = ["# Parity of `--protocol released` with the authors' code (dongzhuoyao/sgfm)", "",
             f"Their code at commit {commit} ({env}); {describe(machine())}.",
             f"Preset {args.preset}, {args.img}x{args.img}x{args.chans}, patch {args.patch}, K {args.k}, batch "
             f"{args.batch}, {args.steps} steps (switch s0 = {args.steps // 2}), AdamW lr {args.lr} constant on both "
             f"sides, EMA decay {args.ema_rate}, their ema_t {args.ema_t}; fp32 unless marked fp64. Cells: max |ours - "
             "theirs| / max |theirs| (several steps: the worst), or rows that differ; every tensor and step in "
             "sgfm_parity.csv.",
             "", "| quantity | " + " | ".join(col for _, col, *_ in plan) + " |", "|---" * (len(plan) + 1) + "|"]
    lines += [f"| {q} | " + " | ".join(fmt(cell.get((q, label))) for label in labels) + " |" for q in qs]
    lines += ["", f"The {lr_note}.", "", FINDINGS.strip()]
    (args.out / "sgfm_parity.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines)); print(f"wrote {args.out / 'sgfm_parity.csv'} and sgfm_parity.md")

FINDINGS = """
- **Matched weight for weight**: all 81 tensors of their `UViT_Embed` (BatchNorm buffers included) load strictly into
  our released-protocol model; only token order (theirs cls, time, label), names and the velocity's sign differ.
- **One step**: [CLS] rows, velocity and losses agree to 1e-6 (fp32 summation order: attention sums the tokens in
  another order); the head's train-mode BatchNorm (batch std 0.01-0.05) amplifies that to ~5e-6 in z and the codes
  and 2e-5 in the head's gradients. Fed the same [CLS] rows their head gives our z bitwise, fed the same scores their
  Sinkhorn (exp form) our codes (log form) to 4e-7; m* (ids, vectors) is equal. Their sigma_min 1e-4 moves inputs,
  losses and z by ~1e-4 (AdamW's first, sign-like step makes that up to 7e-3 in the weights). Both EMAs stay frozen
  in warm-up and copy the model at the end of s0 (`selfguide.protocol.ema_decay`).
- **PRE_BN** (`bootstrap.head.net.0.bias`, and the BatchNorm mean carrying it): the released head has a bias before
  train-mode BatchNorm, whose gradient is 0 exactly and ~1e-7 of rounding noise in fp32, which AdamW scales to steps
  of ~lr with noise-chosen signs: any two fp32 runs (theirs with itself too) walk it apart, and m* reads it through the
  EMA head in eval mode, so a near tie can flip an m* id ("10 steps"). With that gradient at its exact 0 on both
  sides, or in fp64, ten steps agree to rounding, m* included.
- **Differences**, across the switch s0 (steps s0-3 .. s0+6):
  1. (found by this check, now reproduced) m* at s0: their EMA is not updated in warm-up (`train_sgfm_hydra.py`
     l. 296) and is copied from the model (l. 291-292) only after s0's m* (l. 235) and update, so their first stage-2
     m* comes from the EMA as initialised (random init or `pretrained_path`) with its initial head and prototypes. The
     package copied the model in every warm-up step; `protocol.ema_decay` now freezes the released EMA in warm-up and
     copies it at s0, and the "switch" columns agree in m*.
  2. Tokens a stage leaves unused: their forward adds `0.0 * (... + self.null_cfg_embed.sum() +
     self.unconditional_embed.sum())` (`libs/uvit_online.py` l. 521, `UViT_Embed.forward`), so exact-zero gradients
     keep both in AdamW every step (the null token's bias correction counts the warm-up steps; the unconditional token
     drifts on its momentum after s0); ours have no gradient and AdamW skips them. Last column: `null_emb` and
     `uncond_emb` differ by ~lr, the rest only through them.
  3. Warm-up of the learning rate one step apart (line above): theirs `min(step / 5000, 1)`
     (`tools/utils_uvit.py` l. 91: lr 0 at step 0), ours `(step + 1) / 5000` (`runs.lr_at`).
  Not run here: their fp16 autocast.
"""

if __name__ == "__main__":
    main()
