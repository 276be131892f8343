"""Ours against PyTorch + PEFT + llm2vec on the identical model configuration, batch, sequence length and thread
count (the yardstick of the CPU-speed issue): an MNTP step, a SimCSE step, a supervised step (hard
negatives), and with a Hugging Face tokenizer the embedding of WikiText paragraphs; each run in its own
process under /usr/bin/time for its peak resident memory. Random weights on both sides (speed does not depend
on their values): ours from `llm2vec bench-step` / `llm2vec train` on the model's config.json, PyTorch's from
the same config (torch's initialisation). Run by scripts/bench_vs_pytorch.sh (the scripts venv, after `make`):

    scripts/bench_vs_pytorch.sh [--model DIR] [--threads 2] [--batch 8] [--seq 128] [--steps 5] [--work DIR]

DIR: a Hugging Face model directory (config.json; tokenizer.json for the embedding rows); default the bundled
stories260K converted by `llm2vec convert` (no downloads; no Hugging Face tokenizer, so no embedding rows),
or SmolLM2-135M-Instruct when scripts/get_smollm2.sh has fetched it. Both sides: bidirectional attention,
LoRA r 16 / alpha 32 / dropout 0.05 on q, k, v, o, gate, up, down, gradient checkpointing, AdamW; ours in
fp32 (the reference) and with --precision bf16 (bf16 base-weight GEMMs, AMX where the CPU has it), PyTorch in
fp32 and in bf16 autocast for the steps (the embedding: the model loaded in bfloat16, as llm2vec's configs
run it), as the issue's table; MNTP with 20% of positions scored; SimCSE on B pairs
(2B rows); supervised on B triples. Every text is at least --seq tokens, so every batch is B x seq on both
sides. Times are the median of --steps steps after one untimed step. The embedding has two rows: our whole
command against PyTorch's `encode` call, and our `embed`'s own time (its last progress line: packing,
tokenizing, forwards) against the same call. Prints a Markdown table and writes WORK/bench.json.
"""
import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# ------------------------------------------------------------------------------------------ PyTorch side
def torch_step(args):
    """One PyTorch process: args.stage steps; prints a JSON line with the step times."""
    import torch
    from llm2vec.loss.HardNegativeNLLLoss import HardNegativeNLLLoss
    from llm2vec.models import LlamaBiForMNTP, LlamaBiModel
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(args.model)
    config.torch_dtype = torch.float32
    mntp = args.stage == "mntp"
    model = (LlamaBiForMNTP if mntp else LlamaBiModel)(config)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=TARGETS,
                                             task_type=None))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    B, T, V = args.batch, args.seq, config.vocab_size
    loss_fn = HardNegativeNLLLoss(scale=20.0)
    bf16 = args.precision == "bf16"

    def mean_pool(ids):
        h = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
        return h.float().mean(1)

    def step():
        ids = torch.randint(3, V, (B, T))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if mntp:
                labels = torch.full((B, T), -100)
                scored = torch.rand(B, T) < 0.2
                labels[scored] = ids[scored]
                loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
            elif args.stage == "simcse":
                pooled = mean_pool(torch.repeat_interleave(ids, 2, dim=0))  # pairs: two dropout masks
                loss = loss_fn(pooled[0::2], pooled[1::2])
            else:
                q, p, n = (mean_pool(torch.randint(3, V, (B, T))) for _ in range(3))
                loss = loss_fn(q, p, n)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    times = []
    for s in range(args.steps + 1):
        t0 = time.perf_counter()
        step()
        if s > 0:
            times.append((time.perf_counter() - t0) * 1000)
    print(json.dumps({"step_ms": times}))


def torch_embed(args):
    import numpy as np
    import torch
    from llm2vec import LLM2Vec

    torch.set_num_threads(args.threads)
    texts = [l.rstrip("\n") for l in open(args.texts, encoding="utf-8")]
    l2v = LLM2Vec.from_pretrained(args.model, enable_bidirectional=False, pooling_mode="mean", max_length=args.seq,
                                  torch_dtype=torch.bfloat16 if args.precision == "bf16" else torch.float32)
    t0 = time.perf_counter()
    out = l2v.encode(texts, batch_size=16, show_progress_bar=False, convert_to_numpy=True)
    print(json.dumps({"seconds": time.perf_counter() - t0, "shape": list(np.asarray(out).shape)}))


# ------------------------------------------------------------------------------------------ the driver
def timed(cmd, env, stderr=None):
    """Runs cmd under /usr/bin/time -v; returns (stdout, peak RSS in MB); stderr (a list) receives its stderr."""
    r = subprocess.run(["/usr/bin/time", "-v", *cmd], env=env, capture_output=True, text=True, cwd=ROOT)
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr).group(1)) / 1024
    if stderr is not None:
        stderr.append(r.stderr)
    return r.stdout, rss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--work", default=None)
    ap.add_argument("--texts", type=int, default=256, help="paragraphs embedded (models with a tokenizer)")
    ap.add_argument("--torch-stage", dest="stage", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--torch-precision", dest="precision", default="fp32", help=argparse.SUPPRESS)
    ap.add_argument("--torch-embed", dest="texts_file", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stage:
        return torch_step(args)
    if args.texts_file:
        args.texts = args.texts_file
        return torch_embed(args)

    work = args.work or tempfile.mkdtemp(prefix="l2v_bench_vs_pytorch.")
    os.makedirs(work, exist_ok=True)
    smollm2 = os.path.expanduser("~/.cache/llm2vec.cu/smollm2/SmolLM2-135M-Instruct")
    model = args.model or (smollm2 if os.path.isdir(smollm2) else None)
    if model is None:
        model = f"{work}/stories260K-hf"
        subprocess.run(["build/llm2vec", "convert", "--model", "assets/stories260K/stories260K.bin", "--out", model],
                       check=True, cwd=ROOT, capture_output=True)
    model = os.path.abspath(model)
    hf_tok = os.path.isfile(f"{model}/tokenizer.json")
    tokenizer = model if hf_tok else "assets/stories260K/tok512.bin"
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), OPENBLAS_NUM_THREADS=str(args.threads),
               MKL_NUM_THREADS=str(args.threads))
    B, T, N = args.batch, args.seq, args.steps
    lora = ["--lora_r", "16", "--lora_alpha", "32", "--lora_dropout", "0.05"]
    rows = []

    # Texts of at least T tokens: WikiText paragraphs (an article's lines joined until long enough).
    paragraphs = [l.strip() for l in open(f"{ROOT}/assets/wikitext-2/wiki.valid.raw", encoding="utf-8")
                  if len(l.split()) > 2 * T and not l.startswith(" =")]
    with open(f"{work}/long.txt", "w", encoding="utf-8") as f:
        f.writelines(p + "\n" for p in paragraphs)
    with open(f"{work}/triples.jsonl", "w", encoding="utf-8") as f:
        for i in range(len(paragraphs)):
            f.write(json.dumps({"query": paragraphs[i], "positive": paragraphs[(i + 1) % len(paragraphs)],
                                "negative": paragraphs[(i + 2) % len(paragraphs)]}) + "\n")

    def ours_train(stage, data_format, data, dtype):
        prefix = f"{work}/data-{stage}"
        subprocess.run(["build/llm2vec", "prepare", "--tokenizer", tokenizer, "--input", data, "--format",
                        data_format, "--out", prefix, "--quiet"], check=True, cwd=ROOT)
        out = f"{work}/out-{stage}"
        _, rss = timed(["build/llm2vec", "train", "--backend", "cpu", "--torch_dtype", dtype, "--stage", stage,
                        "--model_name_or_path", model,
                        "--tokenizer", tokenizer, "--dataset_file_path", f"{prefix}-*.bin", "--output_dir", out,
                        "--overwrite_output_dir", "true", "--max_steps", str(N + 1),
                        "--per_device_train_batch_size", str(B), "--max_seq_length", str(T), *lora,
                        "--save_merged_model", "false", "--save_steps", "100000", "--logging_steps", "1"], env)
        seconds = [json.loads(l)["seconds"] for l in open(f"{out}/train_log.jsonl")]
        return statistics.median(b - a for a, b in zip(seconds, seconds[1:])) * 1000, rss

    def pytorch(stage, precision):
        out, rss = timed([sys.executable, __file__, "--model", model, "--threads", str(args.threads), "--batch",
                          str(B), "--seq", str(T), "--steps", str(N), "--torch-stage", stage, "--torch-precision",
                          precision], env)
        return statistics.median(json.loads(out.strip().splitlines()[-1])["step_ms"]), rss

    ours = {}
    for precision, dtype in (("fp32", "float32"), ("bf16", "bfloat16")):
        # MNTP: bench-step (random weights and tokens, the trainer's MNTP micro-batch).
        out, rss = timed(["build/llm2vec", "bench-step", "--backend", "cpu", "--torch_dtype", dtype, "--stage", "mntp",
                          "--model_name_or_path", model, "--per_device_train_batch_size", str(B), "--max_seq_length",
                          str(T), *lora, "--max_steps", str(N)], env)
        ours["mntp", precision] = (float(re.search(r"median ([\d.]+) ms/step", out).group(1)), rss)
        ours["simcse", precision] = ours_train("simcse", "sentences", f"{work}/long.txt", dtype)
        ours["supervised", precision] = ours_train("supervised", "supervised", f"{work}/triples.jsonl", dtype)
    for stage, what in (("mntp", f"MNTP step, {B} x {T} tokens"), ("simcse", f"SimCSE step, {B} pairs x {T}"),
                        ("supervised", f"supervised step, {B} triples x {T}")):
        fp32, bf16 = pytorch(stage, "fp32"), pytorch(stage, "bf16")
        rows.append({"work": what, "ours_ms": ours[stage, "fp32"][0], "ours_rss_mb": ours[stage, "fp32"][1],
                     "ours_bf16_ms": ours[stage, "bf16"][0], "ours_bf16_rss_mb": ours[stage, "bf16"][1],
                     "torch_fp32_ms": fp32[0], "torch_fp32_rss_mb": fp32[1], "torch_bf16_ms": bf16[0],
                     "torch_bf16_rss_mb": bf16[1]})

    if hf_tok:
        texts = paragraphs[: args.texts]
        with open(f"{work}/embed.txt", "w", encoding="utf-8") as f:
            f.writelines(t + "\n" for t in texts)
        ours_embed, ours_encode = {}, {}
        for precision in ("fp32", "bf16"):
            t0, err = time.perf_counter(), []
            _, rss = timed(["build/llm2vec", "embed", "--backend", "cpu", "--precision", precision, "--model", model,
                            "--causal", "--pooling_mode", "mean", "--max_length", str(T), "--batch-size", "16",
                            "--input", f"{work}/embed.txt", "--output", f"{work}/ours.npy"], env, err)
            ours_embed[precision] = (time.perf_counter() - t0, rss)
            # The last progress line: "embedded N/N texts in S s (...)" (packing, tokenizing and forwards).
            ours_encode[precision] = float(re.findall(r"embedded \d+/\d+ texts in ([0-9.]+) s", err[0])[-1])
        torch_embed_runs = {}
        for precision in ("fp32", "bf16"):
            out, trss = timed([sys.executable, __file__, "--model", model, "--threads", str(args.threads), "--seq",
                               str(T), "--torch-embed", f"{work}/embed.txt", "--torch-precision", precision], env)
            torch_embed_runs[precision] = (json.loads(out.strip().splitlines()[-1])["seconds"] * 1000, trss)
        rows.append({"work": f"embedding {len(texts)} paragraphs (<= {T} tokens), causal mean, batch 16",
                     "ours_ms": ours_embed["fp32"][0] * 1000, "ours_rss_mb": ours_embed["fp32"][1],
                     "ours_bf16_ms": ours_embed["bf16"][0] * 1000, "ours_bf16_rss_mb": ours_embed["bf16"][1],
                     "torch_fp32_ms": torch_embed_runs["fp32"][0], "torch_fp32_rss_mb": torch_embed_runs["fp32"][1],
                     "torch_bf16_ms": torch_embed_runs["bf16"][0], "torch_bf16_rss_mb": torch_embed_runs["bf16"][1],
                     "note": "wall time of the whole command (ours: load + tokenize + embed; PyTorch: encode only)"})
        rows.append({"work": f"embedding {len(texts)} paragraphs, encode only on both sides",
                     "ours_ms": ours_encode["fp32"] * 1000, "ours_rss_mb": ours_embed["fp32"][1],
                     "ours_bf16_ms": ours_encode["bf16"] * 1000, "ours_bf16_rss_mb": ours_embed["bf16"][1],
                     "torch_fp32_ms": torch_embed_runs["fp32"][0], "torch_fp32_rss_mb": torch_embed_runs["fp32"][1],
                     "torch_bf16_ms": torch_embed_runs["bf16"][0], "torch_bf16_rss_mb": torch_embed_runs["bf16"][1],
                     "note": "ours: embed's own time (packing the weights, tokenizing, forwards; not loading the "
                             "model); PyTorch: l2v.encode (tokenizing, forwards)"})

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"\n{os.path.basename(model)}, {args.threads} threads, {cpu}\n")
    print("| work | ours fp32 | ours bf16 | PyTorch fp32 | PyTorch bf16 | ratio ours fp32: vs fp32 / bf16 | "
          "ratio ours bf16: vs fp32 / bf16 | peak memory ours fp32 / bf16 / PyTorch fp32 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        bf = f"{r['torch_bf16_ms']:.0f} ms" if r["torch_bf16_ms"] else "-"
        def ratio(ours_ms):
            return f"{r['torch_fp32_ms'] / ours_ms:.2f}x" + (
                f" / {r['torch_bf16_ms'] / ours_ms:.2f}x" if r["torch_bf16_ms"] else "")
        print(f"| {r['work']} | {r['ours_ms']:.0f} ms | {r['ours_bf16_ms']:.0f} ms | {r['torch_fp32_ms']:.0f} ms | {bf} | "
              f"{ratio(r['ours_ms'])} | {ratio(r['ours_bf16_ms'])} | {r['ours_rss_mb']:.0f} / "
              f"{r['ours_bf16_rss_mb']:.0f} / {r['torch_fp32_rss_mb']:.0f} MB |")
    print("\nratio: PyTorch's time / ours (above 1: ours is faster)")
    json.dump({"model": model, "threads": args.threads, "cpu": cpu, "rows": rows}, open(f"{work}/bench.json", "w"),
              indent=2)


if __name__ == "__main__":
    main()
