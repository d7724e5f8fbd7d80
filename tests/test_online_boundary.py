"""experiments/online_boundary.py: its rows are the paper's method from scratch ([CLS], mask, t_s 0.2) at growing
budgets, keyed by their options, and its summary states the boundary from the committed CSVs alone."""
import importlib.util, sys
from pathlib import Path
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def _load():
    sys.path[:0] = [str(ROOT), str(ROOT / "experiments")]
    spec = importlib.util.spec_from_file_location("online_boundary", ROOT / "experiments" / "online_boundary.py")
    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
    return m


def test_rows_keep_the_cls_readout_and_the_mask():
    ob = _load()
    opts = " ".join(ob.options("paper_3000", 1))
    assert "--feature-readout token --sk-mask --feature-t 0.2" in opts and opts.endswith("--seed 1 --steps 3000"), opts
    assert "--protocol released" in " ".join(ob.options("released_6000", 0))
    assert len({ob.key(r, 0) for r in ob.ROWS}) == len(ob.ROWS) and ob.key("paper_1500", 0) != ob.key("paper_1500", 1)


def test_the_summary_states_the_boundary_from_the_csvs(tmp_path):
    ob = _load()
    row = dict(preset="tiny", ari_m_star=0.1, prototypes_used=1.0, train_min=10.0, step_s=0.4, key="k", code_rev="r",
               cpu="AMD EPYC")
    pd.DataFrame([dict(row="paper_1500", seed=0, steps=1500, nmi_m_star=0.2, nmi_max_monitored=0.3,
                       first_step_at_target=None, **row),
                  dict(row="paper_1500", seed=1, steps=1500, nmi_m_star=0.1, nmi_max_monitored=0.2,
                       first_step_at_target=None, **row)])[ob.FIELDS].to_csv(tmp_path / "runs.csv", index=False)
    pd.DataFrame([dict(row="paper_1500", seed=s, step=k, nmi_m_star=0.1, prototypes_used=1.0, key="k", cpu="x")
                  for s in (0, 1) for k in (100, 200)]).to_csv(tmp_path / "nmi.csv", index=False)
    text = ob.render(tmp_path).read_text()
    assert "in 0 of 2 runs; 0 held it at the end" in text and "largest was 0.30 monitored" in text, text
    assert "| paper_1500 | 2 | 1500 | 0.15 ± 0.07 | 0.25 ± 0.07 |" in text and (tmp_path / "nmi.png").is_file()
    df = pd.read_csv(tmp_path / "runs.csv"); df.loc[1, "first_step_at_target"] = 1200
    df.to_csv(tmp_path / "runs.csv", index=False)
    text = ob.render(tmp_path).read_text()
    assert "in 1 of 2 runs (paper_1500 seed 1 at step 1200); 0 held it at the end" in text, text
    assert "| 0.20 | 1200 | 10.00 |" in text, text                                    # the step as an integer
