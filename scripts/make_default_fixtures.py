#!/usr/bin/env python3
"""Reference values for the trainer's defaults and learning-rate schedule, from the sources themselves.

Writes test/fixtures/defaults/reference.json (read by test/test_train_defaults.cpp). Nothing here is
typed in by hand: every value is read from the published sources, which need no torch:
  - Hugging Face transformers 4.44.2 (the version llm2vec 0.2.3 pins), from its wheel:
      * the field defaults of TrainingArguments (transformers/training_args.py, read with `ast`);
      * the learning-rate lambdas of get_linear_schedule_with_warmup and
        get_constant_schedule_with_warmup (transformers/optimization.py: the two module-level
        functions are executed on their own), evaluated for every step of a few schedules, and
        TrainingArguments.get_warmup_steps's rule for warmup_ratio (math.ceil(ratio * steps));
  - llm2vec (McGill-NLP/llm2vec, a checkout given with --llm2vec):
      * train_configs/{mntp,simcse,supervised}/*.json, verbatim;
      * the field defaults of the argument dataclasses of experiments/run_{mntp,simcse,supervised}.py.

Usage, from the repository root (no venv needed):
    pip download --no-deps transformers==4.44.2 -d /tmp/hf
    python3 scripts/make_default_fixtures.py --transformers-wheel /tmp/hf/transformers-4.44.2-py3-none-any.whl \\
        --llm2vec /path/to/llm2vec [--commit HEAD]
A second run writes a byte-identical file.
"""
import argparse
import ast
import json
import math
import subprocess
import zipfile
from pathlib import Path


def dataclass_defaults(source: str, class_names):
    """{field: default} of the named dataclasses, for fields whose default is a literal."""
    out = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ClassDef) or node.name not in class_names:
            continue
        for stmt in node.body:
            if not isinstance(stmt, ast.AnnAssign) or not isinstance(stmt.target, ast.Name) or stmt.value is None:
                continue
            value = stmt.value
            if isinstance(value, ast.Call) and getattr(value.func, "id", None) == "field":
                kw = {k.arg: k.value for k in value.keywords}
                if "default" not in kw:
                    continue
                value = kw["default"]
            try:
                out[stmt.target.id] = ast.literal_eval(value)
            except ValueError:
                pass  # a computed default (enum member, factory): not a literal
    return out


def schedule_lambdas(source: str):
    """The two lr lambdas of transformers/optimization.py, executed without the rest of the module."""
    tree = ast.parse(source)
    wanted = {"_get_linear_schedule_with_warmup_lr_lambda", "_get_constant_schedule_with_warmup_lr_lambda"}
    module = ast.Module(body=[n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in wanted],
                        type_ignores=[])
    scope = {}
    exec(compile(module, "transformers/optimization.py", "exec"), scope)
    return scope["_get_linear_schedule_with_warmup_lr_lambda"], scope["_get_constant_schedule_with_warmup_lr_lambda"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--transformers-wheel", required=True)
    ap.add_argument("--llm2vec", required=True, help="a git checkout (or bare repository) of McGill-NLP/llm2vec")
    ap.add_argument("--commit", default="HEAD")
    ap.add_argument("--out", default="test/fixtures/defaults/reference.json")
    a = ap.parse_args()

    wheel = zipfile.ZipFile(a.transformers_wheel)
    training_args = dataclass_defaults(wheel.read("transformers/training_args.py").decode(), {"TrainingArguments"})
    linear, constant = schedule_lambdas(wheel.read("transformers/optimization.py").decode())

    def git(*args):
        return subprocess.run(["git", "-C", a.llm2vec, *args], check=True, capture_output=True, text=True).stdout

    commit = git("rev-parse", a.commit).strip()
    stages = {}
    for stage in ("mntp", "simcse", "supervised"):
        script = git("show", f"{commit}:experiments/run_{stage}.py")
        configs = {}
        for path in sorted(git("ls-tree", "--name-only", commit, f"train_configs/{stage}/").split()):
            configs[Path(path).stem] = json.loads(git("show", f"{commit}:{path}"))
        stages[stage] = {
            "script_defaults": dataclass_defaults(script, {"ModelArguments", "DataTrainingArguments", "CustomArguments"}),
            "train_configs": configs,
        }

    # Schedules as the Trainer drives them: optimizer step k (0-based) runs at lr * lambda(k).
    schedules = []
    for kind, max_steps, lr, warmup_steps, warmup_ratio in [
        ("linear", 5, 1e-3, 0, 0.0),
        ("linear", 6, 1e-3, 2, 0.0),
        ("linear", 7, 3e-4, 0, 0.25),   # warmup from the ratio: ceil(0.25 * 7) = 2
        ("linear", 4, 1e-3, 6, 0.0),    # warmup longer than the run
        ("linear", 10, 3e-4, 3, 0.0),   # lr * (a / b) and (lr * a) / b differ here in the last bit
        ("linear", 7, 3e-4, 7, 0.0),    # ... and here, during the warmup
        ("constant", 5, 2e-3, 3, 0.0),
        ("constant", 4, 2e-3, 0, 0.1),  # ceil(0.4) = 1
    ]:
        warmup = warmup_steps if warmup_steps > 0 else math.ceil(max_steps * warmup_ratio)  # get_warmup_steps
        if kind == "linear":
            lam = [linear(k, num_warmup_steps=warmup, num_training_steps=max_steps) for k in range(max_steps)]
        else:
            lam = [constant(k, num_warmup_steps=warmup) for k in range(max_steps)]
        schedules.append({"lr_scheduler_type": kind, "max_steps": max_steps, "learning_rate": lr,
                          "warmup_steps": warmup_steps, "warmup_ratio": warmup_ratio,
                          "lr_per_step": [lr * x for x in lam]})

    out = {
        "sources": {"transformers": Path(a.transformers_wheel).name, "llm2vec_commit": commit},
        "training_arguments": training_args,
        "stages": stages,
        "schedules": schedules,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
