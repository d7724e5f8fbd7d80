"""Choosing where to read the features without the labels that score the choice (selfguide.selection): the label-free
criterion sees features only, and the selection table scores each rule's cell on labels that did not choose it."""
import numpy as np, pandas as pd, pytest, torch
from selfguide.selection import (LABEL_FREE, CRITERION, split_half_stability, label_free_scores, selection_table,
                                 selection_sentence)

DEFAULT = dict(readout="patches", t=0.05, layer=None, labels="NMI against the digits labels")


def _sweep(nmi, stability, blocks=4, ts=(0.05, 0.2)):
    "A sweep of one readout over `blocks` blocks x `ts`, cells in the order (layer, t)"
    cells = [(layer, t) for layer in range(blocks) for t in ts]
    return pd.DataFrame(dict(readout="patches", layer=[c[0] for c in cells], t=[c[1] for c in cells], nmi=nmi,
                             ari=nmi, stability=stability, seed_stability=stability, entropy=0.9))


def test_stability_separates_clusters_from_noise():
    g = torch.Generator().manual_seed(1)
    centres = torch.randn(5, 32, generator=g) * 6
    blobs = centres.repeat_interleave(60, 0) + torch.randn(300, 32, generator=g)
    noise = torch.randn(300, 32, generator=g)
    assert split_half_stability(blobs, 5) > 0.95 > 0.5 > split_half_stability(noise, 5)
    s = label_free_scores(blobs, 5)
    assert list(s) == list(LABEL_FREE) and CRITERION in s and all(0 <= v <= 1 + 1e-9 for v in s.values())
    with pytest.raises(ValueError, match="at least 4 k = 40 images"): split_half_stability(noise[:39], 10)


def test_label_free_choice_ignores_the_labels_and_the_held_out_choice_ignores_its_own():
    rng = np.random.default_rng(0)
    digits, fashion = _sweep(rng.random(8), rng.random(8)), _sweep(rng.random(8), rng.random(8))
    tab = selection_table({"digits": (digits, 4), "fashion": (fashion, 4)}, "digits", DEFAULT)
    shuffled = fashion.assign(nmi=rng.permutation(fashion.nmi.values))     # other labels, same features
    tab2 = selection_table({"digits": (digits, 4), "fashion": (shuffled, 4)}, "digits", DEFAULT)
    cell = lambda t, ds, rule: tuple(t[(t.dataset == ds) & (t.rule == rule)][["readout", "layer", "t"]].iloc[0])
    assert cell(tab, "fashion", CRITERION) == cell(tab2, "fashion", CRITERION)       # no label moved it
    assert cell(tab, "fashion", "nmi:digits") == cell(tab2, "fashion", "nmi:digits")  # fashion's labels chose nothing
    best = digits.loc[digits.nmi.idxmax()]
    assert cell(tab, "fashion", "nmi:digits") == (best.readout, best.layer, best.t)
    h = tab[(tab.dataset == "fashion") & (tab.rule == "nmi:digits")].iloc[0]
    assert h.best_nmi == fashion.nmi.max() and h.nmi == fashion[(fashion.layer == best.layer)
                                                                  & (fashion.t == best.t)].nmi.iloc[0]


def test_a_cell_is_found_by_relative_depth_and_the_verdict_names_both_nmis():
    digits = _sweep([0.1, 0.2, 0.3, 0.9, 0.4, 0.5, 0.6, 0.7], [0.9] + [0.1] * 7)        # best NMI: block 1, t 0.2
    deep = _sweep(list(np.linspace(0.1, 0.8, 16)), [0.2] * 16, blocks=8)               # 8 blocks: block 1 -> 2
    tab = selection_table({"digits": (digits, 4), "deep": (deep, 8)}, "digits", DEFAULT)
    h = tab[(tab.dataset == "deep") & (tab.rule == "nmi:digits")].iloc[0]
    assert (h.layer, h.t, h.depth) == (2, 0.2, 0.25)
    s = selection_sentence(tab, "digits")
    assert "was chosen by NMI against the digits labels" in s
    assert "held out on deep, that cell has NMI 0.33 against deep's own best 0.80" in s
    assert "on digits NMI 0.10 at its cell against 0.40 at the default's" in s       # default: block 2 of 4, t 0.05
    with pytest.raises(KeyError, match="not among the sweeps"): selection_table({"digits": (digits, 4)}, "x", DEFAULT)
