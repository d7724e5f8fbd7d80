import numpy as np, pytest, subprocess, sys
from selfguide.cli import main, parser

def test_train_then_sample(tmp_path, capsys):
    main(["train", "--dataset", "digits", "--preset", "tiny", "--patch-size", "4", "--steps", "2", "--batch-size", "16",
          "--out-dir", str(tmp_path / "run")])
    main(["sample", "--run", str(tmp_path / "run"), "--n", "5", "--solver", "rk4", "--steps", "2", "--out", str(tmp_path / "s.npz")])
    z = np.load(tmp_path / "s.npz")
    assert z["images"].shape == (5, 16, 16, 1) and z["images"].dtype == np.uint8 and int(z["nfe"]) == 8
    assert (z["labels"] == -1).all()
    assert "wrote 5 samples" in capsys.readouterr().out

def test_every_config_value_is_an_option():
    from dataclasses import fields
    from selfguide.train import TrainConfig
    a = parser().parse_args(["train"])
    assert set(vars(a)) - {"command"} == {f.name for f in fields(TrainConfig)}

def test_bad_values_exit_with_usage():
    with pytest.raises(SystemExit): parser().parse_args(["sample", "--run", "x", "--out", "y", "--solver", "leapfrog"])

def test_missing_run_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="--run"): main(["sample", "--run", str(tmp_path), "--out", str(tmp_path / "s.npz")])
