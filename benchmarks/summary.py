"""The benchmark CSVs of outputs/bench/ as Markdown tables: outputs/bench/summary.md (README's Performance section).

Run: `.venv/bin/python benchmarks/summary.py [--quick]` after the other benchmarks (`make bench` runs it last).
"""
import sys
import common
from common import read_csv


HISTORY = ("before", "after", "after+former", "final")  # online_overhead labels of the sk_features work, superseded


def table(head: list[str], rows: list[list]) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] +
                     ["| " + " | ".join(str(x) for x in r) + " |" for r in rows]) + "\n"


def machine_line(r: dict) -> str:
    return (f"{r['cpu']}, {r['cores']} cores, {r['threads']} torch threads, 1-min load {r['load_1min']} when written, "
            f"native bf16: {r.get('cpu_bf16', '?')}, torch {r['torch']}, device {r['device']}")


def main():
    if "--quick" in sys.argv[1:]: common.use_quick()
    out = []
    machine = lambda rows: f"Machine: {machine_line(rows[0])}.\n"
    tr = [r for r in read_csv("train_throughput.csv") if not r.get("error")]
    if tr:
        out += ["### Training throughput (`benchmarks/train_speed.py`)\n", machine(tr),
                table(["recipe", "model, batch", "mode", "ms / step", "images / s", "x none (q25-q75)",
                       "x none, whole run (sigma 0.5)", "data share", "peak RSS MB (+ in loop)"],
                      [[r["recipe"], f"{r['preset']}/{r['patch']} ({int(r['params']) / 1e6:.2f}M), {r['batch']}"
                        if r["params"] else f"{r['preset']}/{r['patch']}, {r['batch']}",
                        r["mode"] + (" (guided)" if r["phase"] == "guided" else ""),
                        f"{float(r['step_s']) * 1000:.0f}", r["images_per_s"],
                        f"{r['ratio_vs_none']} ({r['ratio_q25']}-{r['ratio_q75']})",
                        r.get("ratio_run_sigma_0.5", ""), f"{float(r['load_share']):.1%}",
                        f"{r['rss_peak_mb']} (+{r['rss_step_mb']})" if r["rss_peak_mb"] else ""] for r in tr])]
    pr = [r for r in read_csv("precision.csv") if not r.get("error")]
    if pr:
        out += ["\n### fp32 eager against bf16 autocast and torch.compile (cpu16, no guidance)\n", machine(pr),
                table(["case", "ms / step", "images / s", "x fp32 eager", "measured", "first step s"],
                      [[r["case"], f"{float(r['step_s']) * 1000:.0f}", r["images_per_s"], r["ratio_vs_fp32_eager"],
                        r["how"], r["first_step_s"]] for r in pr])]
    sk = read_csv("sinkhorn.csv")
    if sk:
        ks = sorted({int(r["k"]) for r in sk}); bs = sorted({int(r["batch"]) for r in sk})
        ms = {(int(r["batch"]), int(r["k"])): r["ms"] for r in sk}
        out += [f"\n### Sinkhorn-Knopp, {sk[0]['iters']} iterations: ms per call (`benchmarks/sinkhorn_speed.py`)\n",
                machine(sk), table(["batch \\ K", *map(str, ks)], [[b, *[ms.get((b, k), "") for k in ks]] for b in bs])]
    sa = read_csv("sampler.csv")
    if sa:
        ok = [r for r in sa if not r.get("error")]
        out += [f"\n### Samplers (`benchmarks/sampler_speed.py`): {ok[0]['model']}, {ok[0]['n']} samples, "
                f"g {ok[0]['g']}, fixed steps {ok[0]['steps'] or '-'}, rtol/atol {ok[0]['rtol']}\n", machine(sa),
                table(["solver", "NFE", "wall s", "ms / NFE"],
                      [[r["solver"], r.get("nfe", ""), r.get("wall_s", ""), r.get("ms_per_nfe", r.get("error", ""))]
                       for r in sa])]
    dl = read_csv("data_loading.csv")
    if dl:
        out += ["\n### Data loading (`benchmarks/data_speed.py`)\n", machine(dl),
                table(["dataset", "kind", "batch", "ms / batch", "items / s", "share of the step it feeds"],
                      [[r["dataset"], r["kind"], r["batch"], f"{float(r['batch_s']) * 1000:.2f}", r["items_per_s"],
                        f"{100 * float(r['load_over_step']):.2g}% of a {r['step_of']} step"
                        if r["load_over_step"] else ""]
                       for r in dl])]
    cl = read_csv("classifier_speed.csv")
    if cl:
        out += ["\n### The offline metric's classifier (`benchmarks/classifier_speed.py`)\n", machine(cl),
                table(["dataset", "case", "train images", "epochs", "steps", "s (with test accuracy)", "test accuracy"],
                      [[r["dataset"], r["case"], r["n_train"], r["epochs"], r["steps"], r["train_s"], r["test_acc"]]
                       for r in cl])]
    runs = {}                                   # label -> its newest run (a block of rows; a new block repeats one)
    for r in read_csv("online_overhead.csv"):
        block = runs.setdefault(r["label"], [])
        if any((x["run"], x["phase"]) == (r["run"], r["phase"]) for x in block): block.clear()
        block.append(r)
    for label, rows in runs.items():
        if label in HISTORY: continue
        m = rows[0]
        out += [f"\n### Online guidance against `none` (`benchmarks/online_overhead.py`, label `{label}`)\n",
                f"Machine: {m['cpu']}, {m['cores']} cores, {m['threads']} torch thread, load {m['load_before']} -> "
                f"{m['load_after']}, torch {m['torch']}; options: {m['options'] or 'none'}.\n",
                table(["run", "phase", "steps", "ms / step", "x none", "x none, per run"],
                      [[r["run"], r["phase"], r["steps"], f"{float(r['median_s']) * 1000:.0f}", r["ratio_to_none"],
                        r["per_run_ratio"]] for r in rows])]
    cpu = read_csv("cpu_limit.csv")
    if cpu:
        from cpu_limit import markdown
        out.append(markdown(cpu, machine_line, table))
    (common.OUT / "summary.md").write_text("\n".join(out))
    print(f"wrote {common.OUT / 'summary.md'}")


if __name__ == "__main__":
    main()
