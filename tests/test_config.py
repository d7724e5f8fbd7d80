"""Recipes: the dataset picks one, explicit options override it, the manifest records both."""
import json
import pytest
from selfguide.config import RECIPES, TrainConfig, resolve_config, recipe_name, apply_recipe
from selfguide.cli import parser
from selfguide.train import train

def test_table4_as_data():
    for name, steps, k in (("imagenet100", 40_000, 300), ("imagenet256", 300_000, 5_000), ("lsun_churches", 100_000, 30)):
        r = RECIPES[name]
        assert (r["steps"], r["clusters"], r["preset"], r["patch_size"], r["batch_size"]) == (steps, k, "uvit_l", 2, 512)
        assert (r["lr"], r["beta1"], r["beta2"], r["weight_decay"], r["warmup_steps"]) == (5e-5, 0.9, 0.999, 0.0, 5_000)
        assert (r["feature_readout"], r["sk_mask"], r["feature_t"]) == ("token", True, 0.2)  # the paper's online readout
    assert [recipe_name(d) for d in ("lsun", "lsun_churches", "imagenet", "imagenet100")] == \
        ["lsun_churches", "lsun_churches", "imagenet256", "imagenet100"]

def test_cpu_recipes_by_image_side():
    assert [recipe_name(d, s) for d, s in (("digits", 16), ("fashion_mnist", 28), ("npz", 32), ("folder", 64))] == \
        ["cpu16", "cpu28", "cpu32", "cpu32"]
    for s in (16, 28, 32): assert s // apply_recipe(recipe_name("npz", s), {})["patch_size"] >= 4  # at least 4x4 tokens

def test_cli_passes_only_given_options():
    a = vars(parser().parse_args(["train", "--dataset", "digits", "--steps", "5", "--no-sk-mask"]))
    assert a == {"command": "train", "dataset": "digits", "steps": 5, "sk_mask": False}
    cfg, _, note = resolve_config({k: v for k, v in a.items() if k != "command"})
    assert (cfg.preset, cfg.batch_size, cfg.steps, cfg.sk_mask, note["name"]) == ("tiny", 128, 5, False, "cpu16")

def test_recipe_none_and_unknown():
    cfg, _, note = resolve_config(dict(dataset="digits", recipe="none"))
    assert (cfg.preset, cfg.batch_size, note["name"]) == (TrainConfig.preset, 512, "none")
    with pytest.raises(ValueError, match="known recipes"): resolve_config(dict(dataset="digits", recipe="huge"))

def test_online_variant_and_manifest(tmp_path):
    run = train(dataset="digits", guidance="none", steps=2, batch_size=16, out_dir=str(tmp_path / "r"))
    m = json.loads((run / "manifest.json").read_text())
    assert m["recipe"]["name"] == "cpu16" and m["recipe"]["overridden"] == ["batch_size", "steps"]
    assert m["recipe"]["values"]["steps"] == 1_500 and m["params"]["steps"] == 2 and m["params"]["preset"] == "tiny"
    assert apply_recipe("cpu16", {}, "online")["steps"] < apply_recipe("cpu16", {}, "none")["steps"]
