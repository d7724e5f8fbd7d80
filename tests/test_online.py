"""Online bootstrapping (Alg. 1) in the trainer: warm-up, EMA opening, conditions, checkpoints, sampling."""
import copy, json
import numpy as np, pytest, torch
from selfguide.train import train, load_run, TrainConfig
from selfguide.online import assign, sk_weight
from selfguide.cli import main, sample_run

SMALL = dict(dataset="digits", guidance="online", preset="tiny", patch_size=4, batch_size=16, lr=1e-3, warmup_steps=2,
             ema_decay=0.9, clusters=5, sk_hidden=32, sk_dim=8, monitor_images=64, sk_mask=False)

@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train(**SMALL, steps=6, out_dir=str(tmp_path_factory.mktemp("online") / "run"))

def test_manifest_and_loss_log_hold_the_sk_monitoring(run):
    m = json.loads((run / "manifest.json").read_text())
    assert m["online"]["warmup_end"] == 3 and [x["step"] for x in m["online"]["monitor"]] == [3, 6]
    for k in ("final_sk_loss", "prototypes_used", "prototype_counts", "nmi", "ari"): assert k in m["metrics"], k
    assert sum(m["metrics"]["prototype_counts"]) == 64                  # monitor_images of the training set
    header, *rows = (run / "loss.csv").read_text().splitlines()
    assert header == "step,loss,sk_loss,sk_weight" and len(rows) == 6
    assert [float(r.split(",")[3]) for r in rows] == [round(sk_weight(i, 6), 4) for i in range(6)]  # 0, 1/3, 2/3, 1, 1, 1

def test_checkpoint_keeps_head_and_prototypes(run):
    ck = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    assert any(k.startswith("bootstrap.protos") for k in ck["model"]) and not any(k.startswith("bootstrap") for k in ck["ema"])
    model, cfg = load_run(run)
    assert model.bootstrap.k == 5 and model.cond_dim == 8 and cfg.guidance == "online"
    assert torch.equal(model.bootstrap.protos.weight, ck["model"]["bootstrap.protos.weight"])

def test_ema_copies_the_model_during_warm_up_and_opens_after(tmp_path):
    warm = train(**SMALL, steps=4, sk_sigma=0.75, out_dir=str(tmp_path / "w"))  # all 3 steps run are warm-up ... then one more
    ck = torch.load(warm / "checkpoints" / "last.pt", weights_only=False)
    diff = max((ck["model"][k] - v).abs().max().item() for k, v in ck["ema"].items() if v.is_floating_point())
    assert diff > 0                                                      # step 3 (after warm-up) averaged
    warm2 = train(**SMALL, steps=4, sk_sigma=0.99, out_dir=str(tmp_path / "w2"))  # every step is warm-up
    ck2 = torch.load(warm2 / "checkpoints" / "last.pt", weights_only=False)
    assert all(torch.equal(ck2["model"][k], v) for k, v in ck2["ema"].items())

def test_paper_settings_train(tmp_path):
    r = train(**{**SMALL, "sk_mask": True, "feature_readout": "token", "feature_t": 0.2, "batch_size": 64}, steps=3,
              out_dir=str(tmp_path / "paper"))
    model, _ = load_run(r)
    assert model.cls_token is not None                                   # the [CLS] readout adds a CLS token

@pytest.mark.parametrize("opts", [dict(sk_two_view=True), dict(online_condition="index"), dict(sk_stopgrad=False),
                                  dict(sk_form="frobenius"), dict(guidance="online_patch")])
def test_every_option_trains_and_samples(tmp_path, opts):
    r = train(**{**SMALL, **opts}, steps=4, out_dir=str(tmp_path / "r"))
    res = sample_run(r, 3, solver="euler", steps=2)
    assert res["images"].shape == (3, 16, 16, 1)
    if opts.get("guidance") == "online_patch": assert res["prototype_maps"].shape == (3, 16)

def backbones_equal(a, b):
    sa, sb = load_run(a, ema=False)[0].state_dict(), load_run(b, ema=False)[0].state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa if not k.startswith("bootstrap.")), all(torch.equal(sa[k], sb[k]) for k in sa)

@pytest.mark.parametrize("stopgrad", [True, False])
def test_stop_gradient_keeps_the_backbone_out_of_the_sk_loss(tmp_path, stopgrad):
    # the same two steps with SK weights (0, 0.56) and (1, 1): with stop-gradient the backbones stay identical
    kw = dict(SMALL, sk_stopgrad=stopgrad, steps=2, sk_sigma=0.9)
    a = train(**kw, out_dir=str(tmp_path / "a"))
    b = train(**{**kw, "sk_warmup_weight": False}, out_dir=str(tmp_path / "b"))
    backbone, everything = backbones_equal(a, b)
    assert backbone == stopgrad and not everything                       # the head differs in both cases

def test_cli_prototype_and_query(run, tmp_path):
    main(["sample", "--run", str(run), "--n", "4", "--solver", "euler", "--steps", "2", "--prototype", "4", "--out", str(tmp_path / "p.npz")])
    assert np.load(tmp_path / "p.npz")["labels"].tolist() == [4] * 4
    with pytest.raises(ValueError, match=r"\[0, 4\]"): sample_run(run, 2, prototype=5)
    with pytest.raises(FileNotFoundError, match="--query"): sample_run(run, 2, query=str(tmp_path / "none.png"))

def test_online_run_cannot_change_its_length_on_resume(run):
    with pytest.raises(ValueError, match="other settings"): train(**SMALL, steps=8, out_dir=str(run))

def test_bad_online_options_are_refused():
    with pytest.raises(ValueError, match="online_condition"): TrainConfig(online_condition="onehot")
    with pytest.raises(ValueError, match="sk_sigma"): TrainConfig(sk_sigma=1.0)
