#!/usr/bin/env python3
"""Plot a micro-ablation: training-loss curves and SICK-R Spearman per configuration.

Input (--results), the JSON the micro-ablation run writes:
    {"model": str, "command": str,
     "rows": [{"name": str, "spearman": float, "log": str or null}, ...]}
Each non-null "log" is a JSONL training log, one object per optimizer step with at least "step" and
"loss" (lines without "loss" are ignored). A relative log path is looked up relative to the current
directory first, then to the directory of the results file.

Output (--out): a PNG with two panels: left, the loss curve of every logged row (labelled by name);
right, a bar per row with its Spearman value.

    scripts/.venv/bin/python scripts/plot_ablation.py --results ablation.json --out ablation.png

Exits with status 2 and a message naming the file (and line) when an input is missing or malformed.
"""
import argparse
import json
import math
import os
import sys
import textwrap


class InputError(Exception):
    pass


def load_results(path):
    if not os.path.isfile(path):
        raise InputError(f"{path}: results file not found")
    try:
        with open(path, encoding="utf-8") as f:
            res = json.load(f)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(res, dict) or not isinstance(res.get("rows"), list):
        raise InputError(f'{path}: expected an object with a "rows" list')
    if not res["rows"]:
        raise InputError(f"{path}: no rows")
    for i, row in enumerate(res["rows"]):
        if not isinstance(row, dict) or not isinstance(row.get("name"), str):
            raise InputError(f'{path}: rows[{i}] needs a string "name"')
        sp = row.get("spearman")
        if sp is not None and (isinstance(sp, bool) or not isinstance(sp, (int, float))):
            raise InputError(f'{path}: rows[{i}] ("{row["name"]}"): "spearman" must be a number or null')
        log = row.get("log")
        if log is not None and not isinstance(log, str):
            raise InputError(f'{path}: rows[{i}] ("{row["name"]}"): "log" must be a path or null')
    return res


def resolve_log(log, results_path):
    if os.path.isabs(log) or os.path.isfile(log):
        return log
    beside = os.path.join(os.path.dirname(os.path.abspath(results_path)), log)
    return beside if os.path.isfile(beside) else log


def load_log(path, name):
    """(steps, losses) of a JSONL training log."""
    if not os.path.isfile(path):
        raise InputError(f'{path}: training log of "{name}" not found')
    steps, losses = [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(rec, dict) or "loss" not in rec:
                continue
            if "step" not in rec:
                raise InputError(f'{path}:{n}: record with "loss" but no "step"')
            try:
                step, loss = float(rec["step"]), float(rec["loss"])
            except (TypeError, ValueError):
                raise InputError(f'{path}:{n}: "step" and "loss" must be numbers') from None
            steps.append(step)
            losses.append(loss)
    if not steps:
        raise InputError(f'{path}: no records with "step" and "loss"')
    return steps, losses


def plot(res, curves, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = res["rows"]
    fig, (ax_loss, ax_bar) = plt.subplots(1, 2, figsize=(13, max(4.5, 0.45 * len(rows) + 2)),
                                          gridspec_kw={"width_ratios": [3, 2]})

    if curves:
        for name, (steps, losses) in curves:
            ax_loss.plot(steps, losses, label=name, linewidth=1.2)
        ax_loss.set_xlabel("optimizer step")
        ax_loss.set_ylabel("training loss")
        ax_loss.grid(True, alpha=0.3)
        ax_loss.legend(fontsize="small")
    else:
        ax_loss.text(0.5, 0.5, "no training logs", ha="center", va="center", transform=ax_loss.transAxes)
        ax_loss.set_axis_off()
    ax_loss.set_title("training loss")

    names = [r["name"] for r in rows]
    values = [r.get("spearman") for r in rows]
    ypos = list(range(len(rows)))[::-1]  # first row on top
    ax_bar.barh(ypos, [v if v is not None and math.isfinite(v) else 0.0 for v in values], color="tab:blue")
    ax_bar.set_yticks(ypos)
    ax_bar.set_yticklabels(names, fontsize="small")
    finite = [v for v in values if v is not None and math.isfinite(v)]
    lo = min([0.0] + finite)
    hi = max([0.0] + finite)
    span = (hi - lo) or 1.0
    ax_bar.set_xlim(lo - 0.05 * span if lo < 0 else 0.0, hi + 0.25 * span)
    for y, v in zip(ypos, values):
        label = "n/a" if v is None or not math.isfinite(v) else f"{v:.4f}"
        ax_bar.text(max(v, 0.0) if v is not None and math.isfinite(v) else 0.0, y, " " + label,
                    va="center", fontsize="small")
    ax_bar.axvline(0.0, color="black", linewidth=0.8)
    ax_bar.set_xlabel("Spearman (SICK-R)")
    ax_bar.set_title("SICK-R Spearman")
    ax_bar.grid(True, axis="x", alpha=0.3)

    title = f"micro-ablation: {res.get('model', '?')}"
    fig.suptitle(title)
    command = res.get("command")
    if command:
        fig.text(0.01, 0.01, "\n".join(textwrap.wrap(str(command), 160)), fontsize=7, family="monospace",
                 va="bottom")
        fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    else:
        fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", required=True, help="results JSON of the micro-ablation run")
    ap.add_argument("--out", required=True, help="PNG to write")
    args = ap.parse_args(argv)
    try:
        res = load_results(args.results)
        curves, missing = [], []
        for row in res["rows"]:
            if row.get("log") is None:
                continue
            path = resolve_log(row["log"], args.results)
            if not os.path.isfile(path):
                where = "" if os.path.isabs(path) else (
                    f"; looked in {os.getcwd()} and {os.path.dirname(os.path.abspath(args.results))}")
                missing.append(f'{path} (row "{row["name"]}"{where})')
                continue
            curves.append((row["name"], load_log(path, row["name"])))
        if missing:
            raise InputError("training log(s) not found:\n  " + "\n  ".join(missing))
        out_dir = os.path.dirname(os.path.abspath(args.out))
        if not os.path.isdir(out_dir):
            raise InputError(f"{args.out}: output directory {out_dir} does not exist")
    except InputError as e:
        print(f"plot_ablation: {e}", file=sys.stderr)
        return 2
    plot(res, curves, args.out)
    print(f"wrote {args.out} ({len(curves)} loss curves, {len(res['rows'])} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
