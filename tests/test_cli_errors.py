"""Bad input answered in one line: `selfguide: error: ...` on stderr, exit status 2, no traceback (issue 12, item 5)."""
import logging, os, socket, subprocess, sys
from pathlib import Path
import numpy as np, pytest
from PIL import Image
from selfguide.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--preset", "tiny", "--patch-size", "4", "--steps", "2", "--batch-size", "16"]

def error_line(capsys, argv) -> str:
    "The one line `main(argv)` prints before exiting with status 2"
    capsys.readouterr()
    with pytest.raises(SystemExit) as e: main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err                                         # progress bars may come before it
    line = err.replace("\r", "\n").rstrip("\n").rsplit("\n", 1)[-1]
    assert line.startswith("selfguide: error: ") and err.endswith("\n") and "Traceback" not in err, err
    return line

@pytest.fixture(scope="module")
def online_run(tmp_path_factory):
    "A tiny online run on 16x16 digits (grey)"
    out = tmp_path_factory.mktemp("errors") / "online"
    main(["train", "--dataset", "digits", "--guidance", "online", *TINY, "--clusters", "5", "--no-sk-mask",
          "--monitor-images", "64", "--out-dir", str(out)])
    return out

def test_missing_files_and_folders(tmp_path, capsys, online_run):
    nope = str(tmp_path / "nope")
    assert "--data-root" in error_line(capsys, ["train", "--dataset", "folder", "--data-root", nope, *TINY])
    (tmp_path / "file.png").write_bytes(b"x")
    assert "--data-root" in error_line(capsys,
                                       ["train", "--dataset", "folder", "--data-root", str(tmp_path / "file.png")])
    assert "--data-root" in error_line(capsys, ["train", "--dataset", "fashion_mnist", "--data-root", nope])
    assert "--run" in error_line(capsys, ["sample", "--run", nope, "--out", str(tmp_path / "s.npz")])
    assert "--samples" in error_line(capsys, ["evaluate", "--samples", nope, "--dataset", "digits"])
    assert "--samples" in error_line(capsys, ["evaluate", "--samples", str(tmp_path), "--dataset", "digits"])  # folder
    assert "--vae" in error_line(capsys, ["train", "--vae", nope, *TINY, "--out-dir", str(tmp_path / "r")])
    assert "--vae" in error_line(capsys, ["encode", "--dataset", "digits", "--vae", nope, "--out", str(tmp_path / "l")])
    assert "--init" in error_line(capsys, ["train", "--guidance", "offline", "--init", nope, *TINY,
                                           "--out-dir", str(tmp_path / "r")])
    assert "--query" in error_line(capsys, ["sample", "--run", str(online_run), "--query", nope,
                                            "--out", str(tmp_path / "q.npz")])

@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_unreadable_folder(tmp_path, capsys):
    (tmp_path / "locked").mkdir(); (tmp_path / "locked").chmod(0)
    try: assert "Permission denied" in error_line(capsys, ["train", "--dataset", "folder",
                                                           "--data-root", str(tmp_path / "locked")])
    finally: (tmp_path / "locked").chmod(0o755)

def test_run_folder_without_checkpoint(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    assert "no checkpoint at" in error_line(capsys, ["sample", "--run", str(tmp_path / "run"),
                                                     "--out", str(tmp_path / "s.npz")])
    assert "no checkpoint at" in error_line(capsys, ["evaluate", "--run", str(tmp_path / "run")])

def test_unknown_dataset_and_preset(capsys):
    err = error_line(capsys, ["train", "--dataset", "mnist"])
    assert "unknown dataset 'mnist'" in err and "digits" in err and "imagenet100" in err and "lsun" in err
    err = error_line(capsys, ["train", "--preset", "huge"])
    assert "unknown preset 'huge'" in err and "tiny" in err and "uvit_l" in err

def test_debug_shows_the_exception(tmp_path):
    with pytest.raises(FileNotFoundError, match="--run"):
        main(["--debug", "sample", "--run", str(tmp_path), "--out", str(tmp_path / "s.npz")])

def test_samples_file_that_is_not_one(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("these are not samples\n")
    err = error_line(capsys, ["evaluate", "--samples", str(tmp_path / "notes.txt"), "--dataset", "digits"])
    assert "not an .npz of samples (--samples)" in err
    np.savez(tmp_path / "lat.npz", latents=np.zeros((2, 4, 4, 4), np.float32))
    err = error_line(capsys, ["evaluate", "--samples", str(tmp_path / "lat.npz"), "--dataset", "digits"])
    assert "no array 'images' (found: latents)" in err
    np.savez(tmp_path / "float.npz", images=np.zeros((2, 16, 16, 1), np.float32))
    assert "uint8" in error_line(capsys, ["evaluate", "--samples", str(tmp_path / "float.npz"), "--dataset", "digits"])
    np.savez(tmp_path / "flat.npz", images=np.zeros((2, 256), np.uint8))  # neither (N, H, W) nor (N, H, W, C)
    err = error_line(capsys, ["evaluate", "--samples", str(tmp_path / "flat.npz"), "--dataset", "digits"])
    assert "'images' must be uint8 (N, H, W) or (N, H, W, C), got uint8 (2, 256) (--samples)" in err

def test_corrupt_image_is_skipped_and_training_goes_on(tmp_path, capsys, caplog):
    rng = np.random.default_rng(0)
    for i in range(20):
        Image.fromarray(rng.integers(0, 256, (20 + i, 18, 3), dtype=np.uint8)).save(tmp_path / f"{i:02d}.png")
    (tmp_path / "20.png").write_bytes(b"\x89PNG garbage, not an image")
    with caplog.at_level(logging.WARNING, logger="selfguide.data"):
        main(["train", "--dataset", "folder", "--data-root", str(tmp_path), "--image-size", "16", *TINY,
              "--out-dir", str(tmp_path / "run")])
    assert (tmp_path / "run" / "checkpoints" / "last.pt").exists()
    assert "skipped 1 unreadable of 21 image files" in caplog.text and "20.png" in caplog.text

def test_query_of_another_size_and_a_query_that_is_no_image(online_run, tmp_path, capsys):
    rng = np.random.default_rng(0)                      # the run takes 16x16 grey: 40x24 RGB is cropped and resized
    Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)).save(tmp_path / "big.png")
    main(["sample", "--run", str(online_run), "--n", "2", "--solver", "euler", "--steps", "1", "--query",
          str(tmp_path / "big.png"), "--out", str(tmp_path / "q.npz")])
    z = np.load(tmp_path / "q.npz")
    assert z["images"].shape == (2, 16, 16, 1) and z["labels"][0] == z["labels"][1]
    (tmp_path / "bad.png").write_text("no image")
    err = error_line(capsys, ["sample", "--run", str(online_run), "--query", str(tmp_path / "bad.png"),
                              "--out", str(tmp_path / "b.npz")])
    assert "not an image file (--query)" in err

def test_more_clusters_than_images(online_run, tmp_path, capsys):
    err = error_line(capsys, ["train", "--guidance", "offline", "--init", str(online_run), "--clusters", "5000", *TINY,
                              "--out-dir", str(tmp_path / "r")])
    assert "5000 clusters" in err

def test_more_prototypes_than_images(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for i in range(16):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / f"{i:02d}.png")
    error_line(capsys, ["train", "--dataset", "folder", "--data-root", str(tmp_path), "--guidance", "online",
                        "--clusters", "40", *TINY, "--no-sk-mask", "--out-dir", str(tmp_path / "r")])

def test_batch_too_small_for_sinkhorn(tmp_path, capsys, monkeypatch):
    err = error_line(capsys, ["train", "--guidance", "online", *TINY[:-1], "1", "--out-dir", str(tmp_path / "r")])
    assert "at least 2 images per process" in err and "--batch-size" in err
    monkeypatch.setenv("WORLD_SIZE", "4")                                # under a launcher: 2 rows a process
    assert "over 4 processes" in error_line(capsys, ["train", "--guidance", "online", *TINY[:-1], "6"])

def _free_port() -> int:
    with socket.socket() as s: s.bind(("127.0.0.1", 0)); return s.getsockname()[1]

def test_end_to_end_and_every_rank(tmp_path):
    "`python -m selfguide`: exit status 2 and one line, alone and on both ranks of a launched pair"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "selfguide", "sample", "--run", str(tmp_path), "--device", "cpu",
           "--out", str(tmp_path / "s.npz")]
    pair = dict(WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    procs = [subprocess.Popen(cmd, env={**env, **pair, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in range(2)]
    procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 2 and err.startswith("selfguide: error: no checkpoint at") and err.count("\n") == 1, err
