"""The LLM2Vec recipe on a real LLM (SmolLM2-135M-Instruct), side by side with the official llm2vec pipeline.

Both stacks train the same stages on the same data with the same hyper-parameters, on the same CPU threads:
ours (`llm2vec train`) and the official pipeline (the llm2vec repository's experiments/run_mntp.py,
run_simcse.py and run_supervised.py at a pinned commit, run unmodified, with PyTorch + transformers + PEFT
from the scripts venv). Every model of both stacks is then evaluated by the same evaluator (`llm2vec eval`;
on SmolLM2 it equals the official package's encode to 4 decimals of Spearman, README) on
  - SICK-R TEST (Spearman, 4,906 pairs),
  - retrieval: a BEIR collection built from the start of WikiText-2 test (a paragraph's first sentence as the
    query, the rest of the paragraph as its one relevant document; nDCG@10),
  - clustering: 12 WikiText-2 test articles x 8 paragraphs (k-means V-measure),
for the rows of the paper's ablation: Uni + mean, Uni + weighted mean, Bi + mean (no training), Bi + MNTP,
Bi + MNTP + SimCSE, Bi + MNTP + supervised.

Data (no downloads): MNTP on WikiText-2 valid (the paper: WikiText-103 train); SimCSE on WikiText-2 valid
sentences (the paper: Wiki1M); supervised on SICK TRAIN entailment pairs with a contradiction partner as the
hard negative where one exists (the paper: the E5 mix, whose "allnli" part is NLI pairs; written here as
the E5 loader's allnli.jsonl, with its two instructions alternating, the other E5 files empty). The
evaluation data is disjoint from the training data (WikiText-2 test; SICK TEST).

Scale (the paper's recipe, scaled to fit about an hour on 2 cores; --steps-scale multiplies every step count):
  MNTP       100 steps x 8 blocks x 128 tokens   (paper: 1000 x 32 x 512), lr 5e-5, 20% masked, "_" mask
  SimCSE     100 steps x 32 sentences x <= 128    (paper: 1000 x 128),      lr 3e-5, dropout 0.3, scale 20
  supervised 100 steps x 16 triples x <= 128      (paper: 1000 x 64 x 512), lr 2e-4, 30 warmup steps (paper 300)
LoRA r 16, alpha 32, dropout 0.05 on all seven projections; gradient checkpointing; bf16 weights on both sides
(the paper's torch_dtype; ours: bf16 GEMMs with fp32 accumulation, PyTorch: the model loaded in bfloat16);
constant learning rate after warmup on both sides (the paper's runs stop at 1000 steps of a schedule that
spans 3 epochs, so their rate stays within 5% of the peak). One seed (42): differences between the stacks
of the size of seed-to-seed variation are noise.

    scripts/experiment_smollm2.sh [--llm2vec-repo DIR] [--steps-scale X] [--threads 2] [--work DIR]
                                  [--stacks ours,llm2vec]

Writes WORK/results.json, WORK/results.md (the Markdown table) and WORK/experiment.png (loss curves and the
scores); every command's output goes to WORK/logs/.
"""
import argparse
import glob
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LLM2VEC_COMMIT = "312adcf"  # McGill-NLP/llm2vec "version update" (0.2.3), whose experiments/ are run
E5_FILES = ["allnli", "dureader", "eli5_question_answer", "fever", "hotpot_qa", "miracl", "mrtydi",
            "msmarco_passage", "msmarco_document", "nq", "quora_duplicates", "squad", "t2ranking", "trivia_qa"]
# E5Data's allnli instructions, alternating by line (the official loader adds them itself; ours reads them from
# the JSONL's instruction field).
ALLNLI_INSTRUCTIONS = ["Given a premise, retrieve a hypothesis that is entailed by the premise",
                       "Retrieve semantically similar text"]


class Runner:
    """Runs commands with their output in WORK/logs/NAME.log; times them and reads their peak memory."""

    def __init__(self, work, threads):
        self.logs = os.path.join(work, "logs")
        os.makedirs(self.logs, exist_ok=True)
        self.env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
                        MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false", HF_DATASETS_OFFLINE="1",
                        TRANSFORMERS_OFFLINE="1", HF_HUB_OFFLINE="1", WANDB_DISABLED="true")

    def __call__(self, name, cmd, cwd=ROOT):
        log = os.path.join(self.logs, name + ".log")
        print(f"[{time.strftime('%H:%M:%S')}] {name}", flush=True)
        t0 = time.perf_counter()
        with open(log, "w", encoding="utf-8") as f:
            # Its own process group: an interrupted experiment stops the command too (not only /usr/bin/time),
            # so no orphan keeps the cores busy under a later run's timings.
            p = subprocess.Popen(["/usr/bin/time", "-v", *cmd], cwd=cwd, env=self.env, stdout=f,
                                 stderr=subprocess.STDOUT, text=True, start_new_session=True)
            try:
                rc = p.wait()
            except BaseException:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait()
                raise
        seconds = time.perf_counter() - t0
        text = open(log, encoding="utf-8", errors="replace").read()
        if rc != 0:
            sys.exit(f"experiment_smollm2: '{name}' failed (exit {rc}); the end of {log}:\n{text[-3000:]}")
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
        return {"seconds": round(seconds, 1), "peak_rss_mb": round(int(m.group(1)) / 1024) if m else None}


# ------------------------------------------------------------------------------------------ data
def make_data(work, run, model):
    d = os.path.join(work, "data")
    os.makedirs(d, exist_ok=True)
    valid = os.path.join(ROOT, "assets/wikitext-2/wiki.valid.raw")
    # run_mntp.py reads a .txt train_file line by line; ours reads the same file as WikiText articles.
    mntp_txt = os.path.join(d, "wiki.valid.txt")
    with open(valid, encoding="utf-8") as src, open(mntp_txt, "w", encoding="utf-8") as dst:
        dst.write(src.read())
    # SimCSE sentences: WikiText paragraphs cut at " . " (WikiText is pre-tokenized), 30..120 characters.
    sentences = []
    for line in open(valid, encoding="utf-8"):
        if line.startswith(" = "):
            continue
        for s in line.split(" . "):
            s = s.strip()
            if 30 < len(s) < 120:
                sentences.append(s + " .")
    with open(os.path.join(d, "sentences.txt"), "w", encoding="utf-8") as f:
        f.writelines(s + "\n" for s in sentences)
    # Supervised triples from SICK TRAIN: every ENTAILMENT pair in both directions; the hard negative is a
    # CONTRADICTION partner of the query where it has one, else of the positive, else a random TRAIN sentence.
    rows = [l.rstrip("\n").split("\t") for l in open(os.path.join(ROOT, "assets/sick/SICK.txt"), encoding="utf-8")]
    head, rows = rows[0], rows[1:]
    a, b, lab, split = (head.index(k) for k in ("sentence_A", "sentence_B", "entailment_label", "SemEval_set"))
    train = [r for r in rows if r[split] == "TRAIN"]
    contra = {}
    for r in train:
        if r[lab] == "CONTRADICTION":
            contra.setdefault(r[a].strip(), r[b].strip())
            contra.setdefault(r[b].strip(), r[a].strip())
    pool = sorted({r[a].strip() for r in train} | {r[b].strip() for r in train})
    rng = random.Random(42)
    triples = []
    for r in train:
        if r[lab] != "ENTAILMENT":
            continue
        for q, p in ((r[a].strip(), r[b].strip()), (r[b].strip(), r[a].strip())):
            n = contra.get(q) or contra.get(p)
            while n is None or n in (q, p):
                n = rng.choice(pool)
            triples.append({"query": q, "positive": p, "negative": n})
    rng.shuffle(triples)
    e5 = os.path.join(d, "e5")
    os.makedirs(e5, exist_ok=True)
    for name in E5_FILES:
        with open(os.path.join(e5, name + ".jsonl"), "w", encoding="utf-8") as f:
            if name == "allnli":
                f.writelines(json.dumps(t) + "\n" for t in triples)
    with open(os.path.join(d, "supervised.jsonl"), "w", encoding="utf-8") as f:
        for i, t in enumerate(triples):
            f.write(json.dumps(dict(t, instruction=ALLNLI_INSTRUCTIONS[i % 2])) + "\n")
    # Ours: shards from the same files.
    for name, src, fmt in (("wiki", mntp_txt, "wikitext"), ("sentences", os.path.join(d, "sentences.txt"),
                                                            "sentences"),
                           ("supervised", os.path.join(d, "supervised.jsonl"), "supervised")):
        run(f"prepare-{name}", ["build/llm2vec", "prepare", "--tokenizer", model, "--input", src, "--format", fmt,
                                "--out", os.path.join(d, name), "--quiet"])
    # Evaluation sets from WikiText-2 test (disjoint from the training text): retrieval over its first 1,200
    # lines (every second paragraph's first sentence a query), clustering over its first 12 long articles.
    test_head = os.path.join(d, "wiki.test.head.raw")
    with open(os.path.join(ROOT, "assets/wikitext-2/wiki.test.raw"), encoding="utf-8") as src:
        lines = src.readlines()[:1200]
    with open(test_head, "w", encoding="utf-8") as f:
        f.writelines(lines)
    py = sys.executable
    run("evalset-retrieval", [py, "scripts/make_wikitext_eval_sets.py", "retrieval", "--raw", test_head, "--every",
                              "2", "--out", os.path.join(d, "retrieval")])
    run("evalset-clustering", [py, "scripts/make_wikitext_eval_sets.py", "clustering", "--out",
                               os.path.join(d, "clustering.jsonl")])
    return {"sentences": len(sentences), "triples": len(triples)}


# ------------------------------------------------------------------------------------------ training
def hyper(scale):
    def steps(n):
        return max(1, int(n * scale + 0.5))
    return {
        "mntp": {"max_steps": steps(100), "batch": 8, "seq": 128, "lr": 5e-5, "warmup": 0},
        "simcse": {"max_steps": steps(100), "batch": 32, "seq": 128, "lr": 3e-5, "warmup": 0},
        "supervised": {"max_steps": steps(100), "batch": 16, "seq": 128, "lr": 2e-4, "warmup": steps(30)},
    }


LORA = {"lora_r": 16, "lora_dropout": 0.05}


def train_ours(work, run, model, h):
    d, out = os.path.join(work, "data"), os.path.join(work, "ours")
    common = ["--model_name_or_path", model, "--seed", "42", "--overwrite_output_dir", "true",
              "--save_merged_model", "false", "--logging_steps", "10", "--gradient_checkpointing", "true",
              "--torch_dtype", "bfloat16", "--lr_scheduler_type", "constant", "--lora_r", str(LORA["lora_r"]),
              "--lora_alpha", str(2 * LORA["lora_r"]), "--lora_dropout", str(LORA["lora_dropout"])]

    def stage(name, data, extra):
        p = h[name]
        return run(f"ours-{name}", ["build/llm2vec", "train", "--stage", name, *common, "--dataset_file_path",
                                    os.path.join(d, data + "-*.bin"), "--output_dir", os.path.join(out, name),
                                    "--max_steps", str(p["max_steps"]), "--save_steps", str(p["max_steps"]),
                                    "--per_device_train_batch_size", str(p["batch"]), "--max_seq_length",
                                    str(p["seq"]), "--learning_rate", str(p["lr"]), "--warmup_steps",
                                    str(p["warmup"]), *extra])

    times = {"mntp": stage("mntp", "wiki", ["--mlm_probability", "0.2", "--mask_token_type", "blank",
                                            "--data_collator_type", "default"])}
    mntp = os.path.join(out, "mntp")
    times["simcse"] = stage("simcse", "sentences", ["--peft_model_name_or_path", mntp, "--simcse_dropout", "0.3",
                                                    "--loss_scale", "20", "--pooling_mode", "mean"])
    times["supervised"] = stage("supervised", "supervised", ["--peft_model_name_or_path", mntp, "--loss_scale",
                                                             "50", "--pooling_mode", "mean"])
    losses = {}
    for name in times:
        losses[name] = [json.loads(l)["loss"] for l in open(os.path.join(out, name, "train_log.jsonl"))
                        if '"loss"' in l]
    models = {name: ["--model", os.path.join(out, name)] for name in times}
    return times, losses, models


def train_official(work, run, model, h, repo):
    d, out = os.path.join(work, "data"), os.path.join(work, "llm2vec")
    py = sys.executable
    common = ["--model_name_or_path", model, "--seed", "42", "--overwrite_output_dir", "--do_train", "--use_cpu",
              "--report_to", "none", "--logging_steps", "1", "--gradient_checkpointing", "--torch_dtype", "bfloat16",
              "--attn_implementation", "sdpa", "--lr_scheduler_type", "constant_with_warmup", "--lora_r",
              str(LORA["lora_r"]), "--lora_dropout", str(LORA["lora_dropout"]), "--save_only_model", "--save_steps"]

    def stage(name, script, extra):
        p = h[name]
        o = os.path.join(out, name)
        t = run(f"llm2vec-{name}", [py, os.path.join(repo, "experiments", script), *common, str(p["max_steps"]),
                                    "--output_dir", o, "--max_steps", str(p["max_steps"]), "--stop_after_n_steps",
                                    str(p["max_steps"]), "--per_device_train_batch_size", str(p["batch"]),
                                    "--max_seq_length", str(p["seq"]), "--learning_rate", str(p["lr"]),
                                    "--warmup_steps", str(p["warmup"]), *extra])
        ckpt = sorted(glob.glob(os.path.join(o, "**", f"checkpoint-{p['max_steps']}"), recursive=True))
        if not ckpt:
            sys.exit(f"experiment_smollm2: llm2vec {name} wrote no checkpoint-{p['max_steps']} under {o}")
        state = json.load(open(os.path.join(ckpt[0], "trainer_state.json")))
        losses = [e["loss"] for e in state["log_history"] if "loss" in e]
        return t, ckpt[0], losses

    times, ckpts, losses = {}, {}, {}
    times["mntp"], ckpts["mntp"], losses["mntp"] = stage(
        "mntp", "run_mntp.py", ["--train_file", os.path.join(d, "wiki.valid.txt"), "--mlm_probability", "0.2",
                                "--mask_token_type", "blank", "--data_collator_type", "default",
                                "--validation_split_percentage", "1"])
    times["simcse"], ckpts["simcse"], losses["simcse"] = stage(
        "simcse", "run_simcse.py", ["--peft_model_name_or_path", ckpts["mntp"], "--dataset_name", "Wiki1M",
                                    "--dataset_file_path", os.path.join(d, "sentences.txt"), "--simcse_dropout", "0.3",
                                    "--loss_scale", "20", "--pooling_mode", "mean", "--bidirectional", "true",
                                    "--remove_unused_columns", "false"])
    times["supervised"], ckpts["supervised"], losses["supervised"] = stage(
        "supervised", "run_supervised.py", ["--peft_model_name_or_path", ckpts["mntp"], "--dataset_name", "E5",
                                            "--dataset_file_path", os.path.join(d, "e5"), "--loss_scale", "50",
                                            "--pooling_mode", "mean", "--bidirectional", "true",
                                            "--remove_unused_columns", "false", "--experiment_id", "run"])
    models = {"mntp": ["--model", model, "--peft", ckpts["mntp"]],
              "simcse": ["--model", model, "--peft", ckpts["mntp"] + "," + ckpts["simcse"]],
              "supervised": ["--model", model, "--peft", ckpts["mntp"] + "," + ckpts["supervised"]]}
    return times, losses, models


# ------------------------------------------------------------------------------------------ evaluation
def evaluate(work, run, tag, model_args, sts_split):
    d, out = os.path.join(work, "data"), os.path.join(work, "eval")
    os.makedirs(out, exist_ok=True)
    common = [*model_args, "--max_length", "512", "--quiet"]
    scores = {}
    for task, extra, key in (("sts", ["--data", "assets/sick/SICK.txt", "--split", sts_split], "spearman"),
                             ("retrieval", ["--data", os.path.join(d, "retrieval"), "--no-cache"], "ndcg@10"),
                             ("clustering", ["--data", os.path.join(d, "clustering.jsonl")], "v_measure")):
        js = os.path.join(out, f"{tag}-{task}.json")
        run(f"eval-{tag}-{task}", ["build/llm2vec", "eval", task, *common, *extra, "--json-out", js])
        scores[key] = json.load(open(js))[key]
    return scores


def official_sick(args):
    """Subprocess mode: SICK-R Spearman of a model encoded by the official llm2vec package (its encode, mean
    pooling, max_length 512, bfloat16): the base with the first adapter merged (as llm2vec's training loads
    it), the second applied on top (as llm2vec's README loads a SimCSE / supervised adapter)."""
    import numpy as np
    import torch
    from llm2vec import LLM2Vec
    from peft import PeftModel
    from scipy.stats import spearmanr

    torch.set_num_threads(args.threads)
    chain = args.official_sick.split(",")
    l2v = LLM2Vec.from_pretrained(args.model, peft_model_name_or_path=chain[0], merge_peft=True,
                                  pooling_mode="mean", max_length=512, torch_dtype=torch.bfloat16)
    if len(chain) > 1:
        l2v.model = PeftModel.from_pretrained(l2v.model, chain[1])
    rows = [l.rstrip("\n").split("\t") for l in open(os.path.join(ROOT, "assets/sick/SICK.txt"), encoding="utf-8")]
    head = rows[0]
    a, b, score, split = (head.index(k) for k in ("sentence_A", "sentence_B", "relatedness_score", "SemEval_set"))
    test = [r for r in rows[1:] if r[split] == args.sts_split]
    texts = sorted({r[a] for r in test} | {r[b] for r in test})
    index = {t: i for i, t in enumerate(texts)}
    emb = l2v.encode(texts, batch_size=32, show_progress_bar=False, convert_to_numpy=True).astype(np.float64)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    cos = [float(emb[index[r[a]]] @ emb[index[r[b]]]) for r in test]
    print(json.dumps({"spearman": spearmanr(cos, [float(r[score]) for r in test]).correlation}))


# ------------------------------------------------------------------------------------------ report
def report(work, results):
    rows = results["rows"]
    lines = [f"SmolLM2-135M-Instruct, {results['threads']} threads, {results['cpu']}; steps scale "
             f"{results['steps_scale']}; evaluated by `llm2vec eval` (bf16 GEMMs), max_length 512", "",
             "| model | SICK-R Spearman ours / llm2vec | retrieval nDCG@10 ours / llm2vec | "
             "clustering V-measure ours / llm2vec | training time ours / llm2vec | peak memory ours / llm2vec |",
             "|---|---|---|---|---|---|"]

    def pair(r, key, scale=100.0):
        vals = [r[s][key] * scale if r.get(s) else None for s in ("ours", "llm2vec")]
        if r.get("shared"):
            return f"{r['shared'][key] * scale:.2f} (no training)"
        return " / ".join("-" if v is None else f"{v:.2f}" for v in vals)

    for r in rows:
        t = results["train"]
        st = r.get("stage")
        tt = " / ".join(f"{t[s][st]['seconds']:.0f} s" if st and s in t else "-" for s in ("ours", "llm2vec")) \
            if st else "-"
        mm = " / ".join(f"{t[s][st]['peak_rss_mb']} MB" if st and s in t else "-" for s in ("ours", "llm2vec")) \
            if st else "-"
        lines.append(f"| {r['name']} | {pair(r, 'spearman')} | {pair(r, 'ndcg@10')} | {pair(r, 'v_measure')} | "
                     f"{tt} | {mm} |")
    if "crosscheck" in results:
        c = results["crosscheck"]
        lines.append(f"| (check) {c['model']} encoded by llm2vec's own encode | {100 * c['llm2vec_encode_spearman']:.2f} "
                     f"(ours: {100 * c['ours_eval_spearman']:.2f}) | | | | |")
    lines.append("")
    lines.append("scores x 100; training time: the whole `llm2vec train` / `python run_*.py` process (load, data, "
                 "steps, save); SimCSE and supervised rows train on the merged MNTP model of their own stack")
    text = "\n".join(lines) + "\n"
    open(os.path.join(work, "results.md"), "w").write(text)
    print("\n" + text)


def plot(work, results):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))
    ax = axes[0]
    for stack, style in (("ours", "-"), ("llm2vec", "--")):
        for stage, color in (("mntp", "C0"), ("simcse", "C1"), ("supervised", "C2")):
            ys = results["losses"].get(stack, {}).get(stage)
            if ys:
                ax.plot(range(1, len(ys) + 1), ys, style, color=color, label=f"{stage} ({stack})", linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.legend(fontsize=7)
    ax.set_title("training loss: ours (solid) vs llm2vec (dashed)", fontsize=9)
    names = [r["name"] for r in results["rows"]]
    for ax, key, title in zip(axes[1:], ("spearman", "ndcg@10", "v_measure"),
                              ("SICK-R Spearman", "retrieval nDCG@10", "clustering V-measure")):
        shared = [(i, r["shared"][key]) for i, r in enumerate(results["rows"]) if r.get("shared")]
        ax.bar([i for i, _ in shared], [v for _, v in shared], width=0.38, color="0.6", label="no training")
        for k, (stack, color) in enumerate((("ours", "C0"), ("llm2vec", "C3"))):
            bars = [(i + (k - 0.5) * 0.38, r[stack][key]) for i, r in enumerate(results["rows"]) if r.get(stack)]
            if bars:
                ax.bar([x for x, _ in bars], [v for _, v in bars], width=0.38, color=color, label=stack)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=35, ha="right", fontsize=7)
        ax.set_title(title, fontsize=9)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(work, "experiment.png"), dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=os.path.expanduser("~/.cache/llm2vec.cu/smollm2/SmolLM2-135M-Instruct"))
    ap.add_argument("--llm2vec-repo", default=None, help=f"a checkout of McGill-NLP/llm2vec at {LLM2VEC_COMMIT}")
    ap.add_argument("--steps-scale", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default=os.path.join(ROOT, "build/experiment_smollm2"))
    ap.add_argument("--stacks", default="ours,llm2vec")
    ap.add_argument("--sts-split", default="TEST", help="SICK split scored (TRIAL: a quick check of the pipeline)")
    ap.add_argument("--official-sick", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.official_sick:
        return official_sick(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("experiment_smollm2: terminated"))
    stacks = args.stacks.split(",")
    if not set(stacks) <= {"ours", "llm2vec"}:
        sys.exit(f"experiment_smollm2: --stacks takes ours and/or llm2vec, not {args.stacks}")
    if not os.path.isfile(os.path.join(args.model, "config.json")):
        sys.exit(f"experiment_smollm2: {args.model}: no config.json (run scripts/get_smollm2.sh)")
    if "llm2vec" in stacks and not (args.llm2vec_repo and
                                    os.path.isfile(os.path.join(args.llm2vec_repo, "experiments/run_mntp.py"))):
        sys.exit("experiment_smollm2: --llm2vec-repo DIR (a checkout of McGill-NLP/llm2vec with experiments/) "
                 "is required for the llm2vec stack")
    work = os.path.abspath(args.work)
    os.makedirs(work, exist_ok=True)
    run = Runner(work, args.threads)
    t0 = time.time()
    counts = make_data(work, run, args.model)
    h = hyper(args.steps_scale)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    results = {"model": args.model, "threads": args.threads, "cpu": cpu, "steps_scale": args.steps_scale,
               "hyper": h, "data": counts, "train": {}, "losses": {}, "rows": []}
    trained = {}
    for stack in stacks:
        if stack == "ours":
            results["train"]["ours"], results["losses"]["ours"], trained["ours"] = train_ours(work, run, args.model, h)
        else:
            results["train"]["llm2vec"], results["losses"]["llm2vec"], trained["llm2vec"] = train_official(
                work, run, args.model, h, os.path.abspath(args.llm2vec_repo))
        json.dump(results, open(os.path.join(work, "results.json"), "w"), indent=2)

    base = ["--model", args.model]
    for name, extra in (("Uni + mean", ["--causal", "--pooling_mode", "mean"]),
                        ("Uni + weighted mean", ["--causal", "--pooling_mode", "weighted_mean"]),
                        ("Bi + mean", ["--pooling_mode", "mean"])):
        tag = re.sub(r"[^a-z]+", "_", name.lower()).strip("_")
        results["rows"].append({"name": name, "shared": evaluate(work, run, tag, base + extra, args.sts_split)})
    for name, stage in (("Bi + MNTP", "mntp"), ("Bi + MNTP + SimCSE", "simcse"),
                        ("Bi + MNTP + supervised", "supervised")):
        row = {"name": name, "stage": stage}
        for stack in stacks:
            row[stack] = evaluate(work, run, f"{stack}_{stage}", trained[stack][stage] + ["--pooling_mode", "mean"],
                                  args.sts_split)
        results["rows"].append(row)
        json.dump(results, open(os.path.join(work, "results.json"), "w"), indent=2)
    if "llm2vec" in stacks:  # the evaluator itself against llm2vec's encode, on the official SimCSE model
        chain = trained["llm2vec"]["simcse"][trained["llm2vec"]["simcse"].index("--peft") + 1]
        log = os.path.join(work, "logs", "crosscheck-llm2vec-encode.log")
        run("crosscheck-llm2vec-encode", [sys.executable, os.path.abspath(__file__), "--model", args.model, "--threads",
                                          str(args.threads), "--sts-split", args.sts_split, "--official-sick", chain])
        theirs = json.loads(next(l for l in open(log) if l.startswith('{"spearman"')))["spearman"]
        results["crosscheck"] = {"model": "Bi + MNTP + SimCSE (llm2vec)", "llm2vec_encode_spearman": theirs,
                                 "ours_eval_spearman": next(r for r in results["rows"]
                                                            if r.get("stage") == "simcse")["llm2vec"]["spearman"]}
    results["wall_seconds"] = round(time.time() - t0)
    json.dump(results, open(os.path.join(work, "results.json"), "w"), indent=2)
    report(work, results)
    plot(work, results)
    print(f"results: {work}/results.json, {work}/results.md, {work}/experiment.png "
          f"({results['wall_seconds'] / 60:.0f} min)")


if __name__ == "__main__":
    main()
