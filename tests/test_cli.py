import numpy as np, pytest, subprocess, sys
from selfguide.cli import main, parser

def test_train_then_sample(tmp_path, capsys):
    main(["train", "--dataset", "digits", "--preset", "tiny", "--patch-size", "4", "--steps", "2", "--batch-size", "16",
          "--out-dir", str(tmp_path / "run")])
    main(["sample", "--run", str(tmp_path / "run"), "--n", "5", "--solver", "rk4", "--steps", "2", "--out", str(tmp_path / "s.npz")])
    z = np.load(tmp_path / "s.npz")
    assert z["images"].shape == (5, 16, 16, 1) and z["images"].dtype == np.uint8 and int(z["nfe"]) == 8
    assert z["labels"].tolist() == [0, 1, 2, 3, 4]                     # labelled data: class guidance unless told
    assert "wrote 5 samples" in capsys.readouterr().out

def test_every_config_value_is_an_option():
    from dataclasses import fields
    from selfguide.train import TrainConfig
    import argparse
    train = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["train"]
    assert {a.dest for a in train._actions} - {"help"} == {f.name for f in fields(TrainConfig)}
    assert vars(parser().parse_args(["train"])) == {"command": "train"}  # unset options: the recipe decides

def test_bad_values_exit_with_usage():
    with pytest.raises(SystemExit): parser().parse_args(["sample", "--run", "x", "--out", "y", "--solver", "leapfrog"])

def test_missing_run_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="--run"):                # --debug: the exception, not the one line
        main(["--debug", "sample", "--run", str(tmp_path), "--out", str(tmp_path / "s.npz")])

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    main(["train", "--dataset", "digits", "--guidance", "class", "--preset", "tiny", "--patch-size", "4", "--steps", "2",
          "--batch-size", "16", "--out-dir", str(out)])
    return out

def test_evaluate_run_adds_metrics_to_the_manifest(tiny_run, tmp_path):
    import json
    main(["evaluate", "--run", str(tiny_run), "--n", "20", "--solver", "euler", "--steps", "2", "--out", str(tmp_path / "m.json")])
    m = json.loads((tiny_run / "manifest.json").read_text())
    saved = json.loads((tmp_path / "m.json").read_text())
    for k in ("fd_cls", "precision", "recall", "cls_score", "floor_fd_cls", "n_samples"): assert k in m["metrics"] and k in saved
    assert "fid" not in saved and "is" not in saved                     # no Inception weights, no FID/IS
    assert m["evaluation"]["n"] == 20 and m["metrics"]["n_samples"] == 20

def test_evaluate_fails_on_missing_inception_before_sampling(tiny_run, tmp_path, monkeypatch):
    import selfguide.cli as cli
    monkeypatch.setattr(cli, "sample_run", lambda *a, **k: pytest.fail("sampled before checking the Inception file"))
    with pytest.raises(FileNotFoundError) as e:
        main(["--debug", "evaluate", "--run", str(tiny_run), "--inception", str(tmp_path / "none.pt")])
    assert "--inception" in str(e.value) and "SELFGUIDE_INCEPTION" in str(e.value)

def test_evaluate_samples_needs_a_dataset(tmp_path):
    np.savez(tmp_path / "s.npz", images=np.zeros((10, 16, 16, 1), np.uint8))
    with pytest.raises(ValueError, match="--dataset"): main(["--debug", "evaluate", "--samples", str(tmp_path / "s.npz")])

def test_evaluate_takes_grey_samples_as_the_npz_dataset_does(tmp_path, capsys):
    "uint8 (N, H, W) and (N, H, W, 1), the layouts the `npz` dataset reads, give the same metrics (issue 24, item 10)"
    import json
    from selfguide.data import load_dataset
    grey = load_dataset("digits").images[:300, 0].numpy()                # 300 real digits, uint8 (N, 16, 16)
    m = {}
    for name, images in (("grey", grey), ("nhwc", grey[..., None])):
        np.savez(tmp_path / f"{name}.npz", images=images)
        main(["evaluate", "--samples", str(tmp_path / f"{name}.npz"), "--dataset", "digits"])
        m[name] = json.loads(capsys.readouterr().out)
    assert m["grey"] == m["nhwc"] and m["grey"]["n_samples"] == 300
    assert m["grey"]["fd_cls"] < 1.5 * m["grey"]["floor_fd_cls"]         # real digits score at the floor

def test_paper_scale_runs_draw_10000_samples_by_default(tmp_path, monkeypatch):
    import json, selfguide.cli as cli
    from selfguide.cli import default_n
    assert parser().parse_args(["evaluate", "--run", "x"]).n is None and parser().parse_args(["sample", "--run", "x", "--out", "y"]).n is None
    assert [default_n(d, 1000) for d in ("lsun", "lsun_churches", "imagenet", "imagenet100", "latents", "digits", None)] == \
           [10_000] * 5 + [1000] * 2
    (tmp_path / "manifest.json").write_text(json.dumps({"params": {"dataset": "imagenet100"}}))
    seen = {}
    monkeypatch.setattr(cli, "sample_run", lambda run, n, *a, **k: seen.setdefault("n", n) and None)  # a rank > 0
    assert main(["evaluate", "--run", str(tmp_path), "--dataset", "digits"]) is None and seen["n"] == 10_000

def _standin_inception(path):
    import warnings, torch, torch.nn as nn
    class StandIn(nn.Module):  # clean-fid's TorchScript interface (`layers`, `output`) with 16 random features
        def __init__(self):
            super().__init__()
            self.layers, self.output = nn.Sequential(nn.AdaptiveAvgPool2d(6), nn.Flatten(), nn.Linear(108, 16)), nn.Linear(16, 10)
        def forward(self, x): return self.output(self.layers(x))
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(StandIn()), path)
    return path

def test_evaluate_with_reference_stats_needs_no_data(tmp_path, capsys):
    import json
    inc = _standin_inception(tmp_path / "standin.pt")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "s.npz", images=rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8))
    np.savez(tmp_path / "fid_stats_lsun_churches.npz", mu=np.zeros(16), sigma=np.eye(16))
    for dataset in (["--dataset", "lsun"], []):                           # LSUN's statistics without LSUN's images
        main(["evaluate", "--samples", str(tmp_path / "s.npz"), *dataset, "--inception", str(inc),
              "--reference-stats", str(tmp_path / "fid_stats_lsun_churches.npz"), "--cache-dir", str(tmp_path / "cache")])
        m = json.loads(capsys.readouterr().out)
        assert set(m) == {"n_samples", "fid", "is", "is_std"} and np.isfinite(m["fid"]) and m["n_samples"] == 12
    assert not (tmp_path / "cache").exists()                            # nothing computed from data, nothing cached
    with pytest.raises(FileNotFoundError, match="--reference-stats"):
        main(["--debug", "evaluate", "--samples", str(tmp_path / "s.npz"), "--inception", str(inc),
              "--reference-stats", str(tmp_path / "no.npz")])

@pytest.fixture(scope="module")
def kept_run(tmp_path_factory):
    "A class-guided tiny run with its checkpoints kept at steps 1 and 2, and an unconditional nano run of the same data"
    d = tmp_path_factory.mktemp("autoguide")
    common = ["--dataset", "digits", "--patch-size", "4", "--steps", "2", "--batch-size", "16"]
    main(["train", *common, "--guidance", "class", "--preset", "tiny", "--keep-checkpoints", "--ckpt-every", "1",
          "--out-dir", str(d / "run")])
    main(["train", *common, "--guidance", "none", "--preset", "nano", "--out-dir", str(d / "nano")])
    return d

def test_sample_autoguided_by_an_earlier_checkpoint(kept_run, tmp_path, capsys):
    from selfguide.runs import run_checkpoints
    run, ck = kept_run / "run", run_checkpoints(kept_run / "run")
    assert sorted(ck) == [1, 2]
    main(["sample", "--run", str(run), "--n", "4", "--solver", "dpm_solver", "--steps", "3", "--autoguide", str(ck[1]),
          "--autoguide-g", "2", "--out", str(tmp_path / "a.npz")])
    z = np.load(tmp_path / "a.npz")
    assert (int(z["nfe"]), int(z["nfe_guide"]), float(z["autoguide_g"]), str(z["autoguide"])) == (3, 3, 2.0, str(ck[1]))
    assert bool(z["autoguide_sees_c"]) and z["labels"].tolist() == [0, 1, 2, 3]   # a class guide of the same run
    assert "and 3 of the autoguide" in capsys.readouterr().out
    main(["sample", "--run", str(run), "--n", "4", "--solver", "dpm_solver", "--steps", "3",
          "--out", str(tmp_path / "b.npz")])
    z = np.load(tmp_path / "b.npz")
    assert int(z["nfe"]) == 3 and int(z["nfe_guide"]) == 0 and "autoguide" not in z.files

def test_evaluate_records_autoguidance_in_the_manifest(kept_run):
    import json
    run = kept_run / "run"
    main(["evaluate", "--run", str(run), "--n", "20", "--solver", "euler", "--steps", "2", "--autoguide",
          str(kept_run / "nano"), "--autoguide-g", "0.5"])
    ev = json.loads((run / "manifest.json").read_text())["evaluation"]
    assert (ev["autoguide"], ev["autoguide_g"], ev["nfe"], ev["nfe_guide"]) == (str(kept_run / "nano"), 0.5, 2.0, 2.0)
    assert ev["autoguide_sees_c"] is False                              # the nano run has no condition slot: fed None
    main(["evaluate", "--run", str(run), "--n", "20", "--solver", "euler", "--steps", "2"])
    ev = json.loads((run / "manifest.json").read_text())["evaluation"]
    assert ev["autoguide"] is None and ev["nfe_guide"] == 0.0

def test_bad_autoguide_input_is_one_clear_error(kept_run, tmp_path):
    run, out = kept_run / "run", ["--out", str(tmp_path / "x.npz")]
    def err(*extra):
        with pytest.raises(SystemExit) as e:
            main(["sample", "--run", str(run), "--n", "2", "--solver", "euler", *extra, *out])
        assert e.value.code == 2
    import contextlib, io
    for extra, msg in ((["--autoguide-g", "1"], "--autoguide-g needs --autoguide"),
                       (["--autoguide", str(tmp_path / "none")], "no checkpoint at"),
                       (["--autoguide", str(run)], "own final checkpoint"),
                       (["--autoguide", str(run / "checkpoints" / "last.pt")], "own final checkpoint")):
        buf = io.StringIO()
        with contextlib.redirect_stderr(buf): err(*extra)
        line = buf.getvalue()
        assert line.startswith("selfguide: error: ") and msg in line and line.count("\n") == 1
    main(["train", "--dataset", "digits", "--image-size", "8", "--patch-size", "4", "--steps", "1",
          "--batch-size", "16", "--preset", "nano", "--guidance", "none", "--out-dir", str(tmp_path / "small")])
    with pytest.raises(ValueError, match="--autoguide .*takes 1 channels at 8 px, the model 1 at 16"):
        main(["--debug", "sample", "--run", str(run), "--autoguide", str(tmp_path / "small"), *out])
    with pytest.raises(ValueError, match="--autoguide needs --run"):
        main(["--debug", "evaluate", "--samples", str(tmp_path / "x.npz"), "--dataset", "digits",
              "--autoguide", str(run)])
