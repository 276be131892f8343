#!/usr/bin/env python3
"""PEFT references for LoRA scales other than the trainer's default: lora_alpha != 2r and use_rslora.

Every other PEFT fixture (scripts/make_hf_fixtures.py) uses r = 4, lora_alpha = 8, the scale 2 that
our trainer's default alpha = 2r also gives, so a scale hard-coded to 2 or a use_rslora flag that is
ignored would pass them. This writes test/fixtures/lora_scale/ for the llama3_tiny model that
make_hf_fixtures.py wrote (run that first; this script reads its model/ and reference inputs):

  alpha6/   PEFT adapter: r = 4, lora_alpha = 6 (scale alpha / r = 1.5), use_rslora false
  rslora/   the same A and B, use_rslora true (scale alpha / sqrt(r) = 3)
  reference.safetensors (float32), for each adapter <a> in (alpha6, rslora), on llama3_tiny's
      input_ids / attention_mask / labels (copied as they are), llm2vec's LlamaBiForMNTP in train mode
      (dropout 0):
    <a>.hidden [3,12,64], <a>.logits [3,12,256], <a>.loss [1] (the shifted MNTP loss, asserted equal to
    transformers' own labels= loss), <a>.grad.<adapter key> (d loss / d LoRA parameter),
    <a>.merged.<module>.weight: PEFT's merge_and_unload weight of two modules (layer 0 q_proj and
    layer 1 down_proj), the base weight plus scale * B @ A as PEFT computes it.

Same environment as make_hf_fixtures.py (scripts/requirements.txt), from the repository root:
    scripts/.venv/bin/python scripts/make_lora_scale_fixtures.py
Deterministic (CPU, fp32, one thread, fixed seed): a rerun writes byte-identical files.
"""
import json
import os
import sys
from pathlib import Path

import safetensors.torch
import torch
from llm2vec.models import LlamaBiForMNTP
from peft import LoraConfig, get_peft_model
from transformers import LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_hf_fixtures as hf  # noqa: E402  (the shared helpers: load, Runner, save_adapter, ...)

NAME = "llama3_tiny"
R, ALPHA = 4, 6
MERGED = ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"]


def config(use_rslora):
    return LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=hf.LORA_TARGETS, bias="none",
                      task_type=None, use_rslora=use_rslora)


def main():
    os.chdir(hf.REPO)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    src = hf.FIXTURES / NAME
    model_dir = src / "model"
    out = hf.FIXTURES / "lora_scale"
    out.mkdir(parents=True, exist_ok=True)
    inputs = safetensors.torch.load_file(src / "reference.safetensors")
    ids, mask, labels = inputs["input_ids"], inputs["attention_mask"], inputs["labels"]
    ref = {"input_ids": ids, "attention_mask": mask, "labels": labels}

    gen = torch.Generator().manual_seed(600)
    weights = None
    runner = hf.Runner(NAME, "bidir", LlamaBiForMNTP, model_dir, mask4d=False)
    report = {}
    for name, use_rslora in (("alpha6", False), ("rslora", True)):
        m = get_peft_model(hf.load(LlamaForCausalLM, model_dir), config(use_rslora))
        with torch.no_grad():
            lora = [(n, p) for n, p in m.named_parameters() if "lora_" in n]
            if weights is None:
                weights = {n: 0.1 * torch.randn(p.shape, generator=gen) for n, p in lora}
            for n, p in lora:
                p.copy_(weights[n])
        keys = hf.save_adapter(m, out / name, model_dir)
        scale = ALPHA / R ** 0.5 if use_rslora else ALPHA / R
        layer = m.base_model.model.model.layers[0].self_attn.q_proj
        assert layer.scaling["default"] == scale, (layer.scaling, scale)
        acfg = json.loads((out / name / "adapter_config.json").read_text())
        assert acfg["use_rslora"] is use_rslora and acfg["lora_alpha"] == ALPHA and acfg["r"] == R, acfg

        lm, params = hf.lora_model(runner, out / name, keys)
        h, logits, loss, grads = hf.lora_loss_and_grads(runner, lm, params, ids, mask, labels)
        ref[f"{name}.hidden"], ref[f"{name}.logits"], ref[f"{name}.loss"] = h, logits, loss
        for k, g in grads.items():
            ref[f"{name}.grad.{k}"] = g
        merged = dict(lm.merge_and_unload().named_parameters())
        for module in MERGED:
            ref[f"{name}.merged.{module}.weight"] = merged[module + ".weight"].detach().clone()
        report[name] = {"scale": scale, "loss": float(loss[0])}

    # The two scales differ by sqrt(r) = 2: the outputs must differ clearly, or the fixture tests nothing.
    d = float((ref["alpha6.logits"] - ref["rslora.logits"]).abs().max())
    assert d > 1e-2, d
    report["max |logits(alpha6) - logits(rslora)|"] = d
    safetensors.torch.save_file({k: v.contiguous() for k, v in ref.items()}, out / "reference.safetensors",
                                metadata={"generator": "scripts/make_lora_scale_fixtures.py"})
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
