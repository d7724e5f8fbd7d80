"""What a result table may claim (selfguide.compare): budgets counted from scratch, verdicts from paired seeds, and
the pretrained-start block read from its committed CSV; every notebook that compares guidance sources states them."""
import json
from pathlib import Path
import pandas as pd, pytest
from selfguide.compare import (verdict_word, compare_rows, comparison_sentence, run_budget, budget_table,
                               budget_caption, pretrained_rows, pretrained_block, PRETRAINED_PAIRS)

ROOT = Path(__file__).resolve().parents[1]


def _run(folder, steps, guidance, train_s, init=None):
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps(dict(
        params=dict(steps=steps, batch_size=128, guidance=guidance, init=None if init is None else str(init)),
        timings=dict(train_s=train_s, step_s_median=train_s / steps), metrics=dict(final_loss=0.1))))
    return folder


def test_a_verdict_needs_three_seeds_agreeing_by_more_than_their_spread():
    assert verdict_word([-3.0, -2.0, -2.5], "lower") == "as in the paper"
    assert verdict_word([3.0, 2.0, 2.5], "lower") == "disagrees"
    assert verdict_word([-3.0, -2.0], "lower") == "within noise"          # two seeds, however clear
    assert verdict_word([-5.0, -0.1, -0.2], "lower") == "within noise"    # |mean| 1.77 < std 2.83
    assert verdict_word([-3.0, 0.5, -2.5], "lower") == "within noise"     # one seed against
    rows = [dict(row=r, run_seed=s, fd_cls=v) for r, vs in (("a", (1.0, 2.0, 1.5)), ("b", (3.0, 4.5, 3.0)))
            for s, v in enumerate(vs)]
    t = compare_rows(rows, {"a - b": ("a", "b", "lower")}, "fd_cls")
    assert (t.per_seed[0], t.agree[0], t.verdict[0]) == ("-2.00, -2.50, -1.50", "3/3", "as in the paper")
    assert "a - b: as in the paper (fd_cls -2.00 ± 0.50; per seed -2.00, -2.50, -1.50; 3/3" in comparison_sentence(t)


def test_the_budget_counts_the_init_and_the_caption_states_it(tmp_path):
    half = _run(tmp_path / "digits_none_half_s0", 750, "none", 240.0)
    _run(tmp_path / "digits_offline_s0", 750, "offline", 300.0, init=half)
    _run(tmp_path / "digits_online_s0", 1500, "online", 900.0)
    assert run_budget(tmp_path / "digits_offline_s0")["steps"] == 1500
    bt = budget_table(tmp_path, {"offline guidance": "digits_offline", "online": "digits_online"}, [0])
    assert list(bt.steps) == [1500, 1500] and list(bt.train_min) == [9.0, 15.0]
    assert budget_caption(bt).startswith("Budget, counted from scratch: 1,500 steps x batch 128 for every row "
                                         "(offline guidance: 750 (none) + 750 (offline))")


def test_the_pretrained_block_reads_the_committed_csv():
    csv = ROOT / "outputs" / "pretrained_start" / "runs.csv"
    raw = pd.read_csv(csv)
    rows = pretrained_rows(csv, "digits")
    assert len(rows) == len(raw[raw.dataset == "digits"].drop_duplicates(["row", "seed"]))
    own = raw[raw.dataset == "digits"].drop_duplicates(["row", "seed"], keep="last").set_index(["row", "seed"]).train_min
    ft = rows.set_index(["row", "seed"]).train_min
    for (r, s), m in ft.items():  # a fine-tuning's minutes from scratch: its own and its init's, same seed
        init = {"ft_online_none": "init_none", "ft_online_class": "init_class", "cont_none": "init_none"}.get(r)
        assert m == pytest.approx(own[(r, s)] + (own.get((init, s), float("nan")) if init else 0), nan_ok=True)
    st, _, cmp, caption = pretrained_block(csv, "digits")[1:]
    seeds = rows.groupby("row").seed.nunique()
    assert set(st.seeds) == set(seeds) and "1,500 steps for the inits and 3,000" in caption, caption
    assert "† backbone trained with labels" in caption and len(cmp) == len(PRETRAINED_PAIRS)
    if (seeds[["ft_online_none", "cont_none"]] < 3).any(): assert cmp.verdict[0] == "within noise", cmp


@pytest.mark.parametrize("name", ["table1_guidance", "table2_ablations", "table3_datasets", "fig04_training",
                                  "fig07_nfe", "fig11_guidance", "autoguidance"])
def test_every_notebook_that_compares_guidance_sources_states_its_budget(name):
    src = "".join("".join(c["source"]) for c in json.loads((ROOT / "nbs" / f"{name}.ipynb").read_text())["cells"])
    assert "budget_table(" in src and "budget_caption(budget" in src and "budget_caption(budget, short=True)" in src
