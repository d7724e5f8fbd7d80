"""Training time of the offline metric's classifier (`selfguide.metrics.train_classifier`), the recipe `evaluate` runs.

Run: `.venv/bin/python benchmarks/classifier_speed.py [--quick]`. Trains the classifier as `load_classifier` does on
first use (no cache): digits (20 epochs of 1,500 images), and Fashion-MNIST when installed (2 epochs of 60,000;
about a minute on one core), plus the bounded Fashion-MNIST check of tests/test_metrics.py (10,000 images, 2
epochs). Seconds include the test-set accuracy. Writes outputs/bench/classifier_speed.csv with the machine's CPU.
--quick: digits and the bounded check only. The timing lives here, not in the tests: on a shared machine a wall
clock says nothing about correctness.
"""
import argparse, time
import torch
from selfguide.data import FASHION_MNIST_ROOT, ImageDataset
from selfguide.metrics import train_classifier, train_test
import common
from common import describe, write_csv


def subset(data: ImageDataset, n: int) -> ImageDataset:
    "`n` images of `data` drawn with seed 0, as the test draws them"
    keep = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:n]
    return ImageDataset(data.images[keep], data.labels[keep], data.name)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="digits and the bounded Fashion-MNIST check only")
    args = p.parse_args(argv)
    if args.quick: common.use_quick()
    print(describe())
    cases = [("digits", "recipe", None, None)]
    if (FASHION_MNIST_ROOT / "train-images-idx3-ubyte.gz").exists():
        cases += [("fashion_mnist", "test (10,000 images, 2 epochs)", 10_000, 2)]
        if not args.quick: cases += [("fashion_mnist", "recipe", None, None)]
    else: print(f"Fashion-MNIST is not installed in {FASHION_MNIST_ROOT}: digits only (make data installs it)")
    rows = []
    for dataset, case, n, epochs in cases:
        train, test = train_test(dataset)
        if n: train = subset(train, n)
        t0 = time.perf_counter()
        _, info = train_classifier(train, test, epochs=epochs, progress=False)
        s = time.perf_counter() - t0
        steps = info["epochs"] * (info["n_train"] // 128)
        rows.append(dict(dataset=dataset, case=case, n_train=info["n_train"], epochs=info["epochs"], steps=steps,
                         train_s=round(s, 2), n_test=info["n_test"],
                         test_acc=round(info["test_acc"], 4)))
        print(f"  {dataset:13s} {case:30s}: {s:6.1f} s ({steps} steps), test accuracy {info['test_acc']:.3f}")
    write_csv("classifier_speed.csv", rows)


if __name__ == "__main__":
    main()
