#!/usr/bin/env python3
"""Check that what `llm2vec train` exports loads in Python with peft / llm2vec and embeds like ours.

Run by scripts/make_export_fixture.sh (which trains the two stages and fills WORK and the fixture
directory first); by hand:

    scripts/.venv/bin/python scripts/check_export.py --work WORK [--fixture test/fixtures/export]

Inputs:
  WORK/base_hf/            `llm2vec convert` of stories260K.bin (config.json + model.safetensors)
  WORK/mntp/merged/        our MNTP stage's merged model; WORK/simcse/merged/: base + MNTP + SimCSE
  WORK/ours.npy            `llm2vec embed --model WORK/simcse` of FIXTURE/inputs.txt
  FIXTURE/mntp/            our MNTP adapter (adapter_config.json, adapter_model.safetensors)
  FIXTURE/simcse/          our SimCSE adapter + llm2vec_config.json
  FIXTURE/inputs.txt, FIXTURE/batch.safetensors   the texts and the left-padded batch our embed path
                           builds for them (input_ids, attention_mask, embed_mask; stories260K's llama2.c
                           tokenizer has no Hugging Face form, so Python gets the ids)

What it does (CPU, float32, one thread, eager attention):
  1. checks that the ids decode (tok512.vocab pieces) to the texts and the batch layout (left padding,
     BOS first, embed_mask = the real tokens after the BOS);
  2. chain A, the explicit path: llm2vec's LlamaBiModel.from_pretrained(base_hf)
     -> PeftModel.from_pretrained(mntp).merge_and_unload() -> PeftModel.from_pretrained(simcse)
     -> llm2vec.LLM2Vec(model, tokenizer stub with padding_side "left", **llm2vec_config.json)
     .forward({input_ids, attention_mask, embed_mask});
  3. chain B, llm2vec's own loader: LLM2Vec.from_pretrained(base_hf, peft_model_name_or_path=mntp,
     merge_peft=True) (as llm2vec's run_simcse.py loads the MNTP model), its merged model saved, then
     LLM2Vec.from_pretrained(that, peft_model_name_or_path=simcse) (as llm2vec loads a published
     SimCSE model; it reads llm2vec_config.json itself); AutoTokenizer is replaced by the stub;
  4. PEFT's own load report (the return value of set_peft_model_state_dict inside every
     PeftModel.from_pretrained, captured): no unexpected keys and no missing LoRA keys; every loaded
     lora_A/lora_B equals the file and every lora_B is nonzero; a negative control shows that the
     same tensors under the causal-LM layout names would load nothing (all unexpected);
  5. our merged/ models loaded with transformers (AutoModelForCausalLM: no missing/unexpected keys;
     LlamaBiModel): weights vs PEFT's merge_and_unload, hidden states and embeddings vs chain A;
  6. WORK/simcse_causal_lm (the same stage exported with adapter_layout causal_lm): PEFT on
     AutoModelForCausalLM(base_hf) loads it with no unexpected / missing LoRA keys, and its tensors
     equal the llm2vec-layout ones under one more "model.";
  7. compares chain A with WORK/ours.npy, writes FIXTURE/python_embeddings.npy (chain A, float32
     [n, dim]) and FIXTURE/check_report.json (versions, PEFT reports, every max error).
Exits non-zero if a check fails.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import safetensors
import safetensors.torch
import transformers
import peft
import peft.peft_model
from peft import PeftModel
from transformers import AutoModelForCausalLM

import llm2vec
import llm2vec.llm2vec as llm2vec_module
from llm2vec import LLM2Vec
from llm2vec.models import LlamaBiModel

from make_hf_fixtures import versions  # the same package report as the other fixtures

REPO = Path(__file__).resolve().parent.parent
ATTN = "eager"
INNER = "base_model.model.layers."   # llm2vec layout: PEFT around LlamaModel
OUTER = "base_model.model.model.layers."  # PEFT around LlamaForCausalLM

REPORT = {}
FAILURES = []


def log(msg=""):
    print(msg, flush=True)


def check(cond, what):
    if not cond:
        FAILURES.append(what)
        log(f"FAILED: {what}")




# ---- PEFT's load report ------------------------------------------------------------------------

PEFT_LOADS = []  # (adapter dir, load_result) of every set_peft_model_state_dict call
_orig_set = peft.peft_model.set_peft_model_state_dict


def _spy_set(model, state_dict, adapter_name="default", **kw):
    res = _orig_set(model, state_dict, adapter_name=adapter_name, **kw)
    PEFT_LOADS.append((adapter_name, sorted(state_dict), res))
    return res


peft.peft_model.set_peft_model_state_dict = _spy_set


def peft_from_pretrained(model, adapter_dir, tag):
    """PeftModel.from_pretrained with PEFT's own missing/unexpected report checked and recorded."""
    n = len(PEFT_LOADS)
    m = PeftModel.from_pretrained(model, str(adapter_dir))
    check(len(PEFT_LOADS) == n + 1, f"{tag}: PEFT loaded the weights once")
    record_peft_load(m, adapter_dir, tag, PEFT_LOADS[-1])
    return m


def record_peft_load(m, adapter_dir, tag, load):
    _, file_keys, res = load
    unexpected = list(res.unexpected_keys)
    missing_lora = [k for k in res.missing_keys if "lora_" in k]
    file = safetensors.torch.load_file(Path(adapter_dir) / "adapter_model.safetensors")
    loaded = {n.replace(".default.", "."): p.detach().clone() for n, p in m.named_parameters() if "lora_" in n}
    n_layers = m.get_base_model().config.num_hidden_layers
    check(len(file) == 2 * 7 * n_layers, f"{tag}: {len(file)} tensors in the file, expected {2 * 7 * n_layers}")
    check(all(k.startswith(INNER) for k in file), f"{tag}: every file key starts with {INNER}")
    check(set(loaded) == set(file), f"{tag}: loaded LoRA parameters == file tensors "
          f"(only in model: {sorted(set(loaded) - set(file))[:3]}, only in file: {sorted(set(file) - set(loaded))[:3]})")
    equal = all(torch.equal(loaded[k], file[k]) for k in file if k in loaded)
    check(equal, f"{tag}: every loaded LoRA tensor equals the file bit for bit")
    b_keys = [k for k in file if "lora_B" in k]
    b_nonzero = sum(int(file[k].abs().max() > 0) for k in b_keys)
    check(b_nonzero == len(b_keys), f"{tag}: every lora_B is nonzero ({b_nonzero}/{len(b_keys)})")
    check(not unexpected, f"{tag}: PEFT reports no unexpected keys ({unexpected[:3]})")
    check(not missing_lora, f"{tag}: PEFT reports no missing LoRA keys ({missing_lora[:3]})")
    cfg = m.peft_config["default"]
    info = {
        "file_tensors": len(file),
        "peft_unexpected_keys": len(unexpected),
        "peft_missing_keys_total": len(res.missing_keys),  # the frozen base weights: not in an adapter file
        "peft_missing_lora_keys": len(missing_lora),
        "loaded_lora_tensors_equal_file": bool(equal),
        "lora_B_nonzero": f"{b_nonzero}/{len(b_keys)}",
        "max_abs_lora_B": float(max(file[k].abs().max() for k in b_keys)),
        "peft_config": {"r": cfg.r, "lora_alpha": cfg.lora_alpha, "lora_dropout": cfg.lora_dropout,
                        "target_modules": sorted(cfg.target_modules), "scaling": 1.0 * cfg.lora_alpha / cfg.r},
    }
    # Negative control: the same tensors under the causal-LM layout names (one "model." more) load
    # nothing into this model; PEFT says so only through unexpected_keys (from_pretrained ignores it).
    wrong = {OUTER + k[len(INNER):]: v for k, v in file.items()}
    res_wrong = _orig_set(m, wrong, adapter_name="default")
    info["negative_control_causal_lm_names_unexpected"] = len(res_wrong.unexpected_keys)
    check(len(res_wrong.unexpected_keys) == len(file), f"{tag}: negative control: wrong names are all unexpected")
    after = {n.replace(".default.", "."): p.detach() for n, p in m.named_parameters() if "lora_" in n}
    check(all(torch.equal(after[k], loaded[k]) for k in loaded), f"{tag}: negative control changed nothing")
    REPORT.setdefault("peft_loads", {})[tag] = info
    log(f"{tag}: PEFT unexpected keys {len(unexpected)}, missing LoRA keys {len(missing_lora)}, "
        f"{len(file)} tensors equal the file, lora_B nonzero {b_nonzero}/{len(b_keys)}; "
        f"causal_lm names would give {len(res_wrong.unexpected_keys)} unexpected keys")


# ---- helpers -----------------------------------------------------------------------------------

def load_bi(path, tag):
    model, info = LlamaBiModel.from_pretrained(str(path), torch_dtype=torch.float32, attn_implementation=ATTN,
                                               output_loading_info=True)
    check(model.config._attn_implementation == ATTN, f"{tag}: eager attention")
    attn = model.layers[0].self_attn
    check(type(attn).__name__ == "ModifiedLlamaAttention" and not attn.is_causal, f"{tag}: bidirectional attention")
    summary = {k: sorted(str(x) for x in v) for k, v in info.items()}
    check(not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"],
          f"{tag}: LlamaBiModel loads every weight, nothing left over {summary}")
    REPORT.setdefault("transformers_loads", {})[tag] = {k: v for k, v in summary.items() if k != "error_msgs"}
    return model.eval()


class StubTokenizer:
    """What LLM2Vec's forward/get_pooling read from a tokenizer (ids are given, not text)."""

    def __init__(self, bos_id, eos_id):
        self.bos_token_id = bos_id
        self.eos_token_id = eos_id
        self.eos_token = "</s>"
        self.pad_token = None
        self.padding_side = "right"  # LLM2Vec.from_pretrained sets "left"; chain A sets it by hand

    @classmethod
    def from_pretrained(cls, *args, **kwargs):  # stands in for AutoTokenizer in llm2vec's from_pretrained
        return cls(StubTokenizer.BOS, StubTokenizer.EOS)


def l2v_forward(l2v, batch):
    feats = {k: batch[k].clone() for k in ("input_ids", "attention_mask", "embed_mask")}
    with torch.no_grad():
        return l2v.forward(feats)


def hidden_states(model, batch):
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state


def max_err(a, b, mask=None):
    a = torch.as_tensor(a, dtype=torch.float64)
    b = torch.as_tensor(b, dtype=torch.float64)
    d = (a - b).abs()
    if mask is not None:
        d = d[mask.bool()]
        b = b[mask.bool()]
    scale = float(b.abs().max())
    return {"max_abs": float(d.max()), "max_rel_to_max_ref": float(d.max()) / scale, "max_abs_ref": scale}


def state_dict_err(ours, sd_t, tag):
    """ours: a model; sd_t: a state dict (PEFT's merge_and_unload result, snapshotted)."""
    sd_o = ours.state_dict()
    check(set(sd_o) == set(sd_t), f"{tag}: same parameter names")
    worst, worst_rel = 0.0, 0.0
    for k in sd_t:
        d = float((sd_o[k].double() - sd_t[k].double()).abs().max())
        worst = max(worst, d)
        worst_rel = max(worst_rel, d / max(float(sd_t[k].abs().max()), 1e-30))
    return {"max_abs": worst, "max_rel_per_tensor": worst_rel}


def decode_pieces(ids, pieces):
    out = []
    for i, t in enumerate(ids):
        s = pieces[t]
        if s.startswith("<0x") and s.endswith(">") and len(s) == 6:
            s = chr(int(s[3:5], 16))
        else:
            s = s.replace("\u2581", " ")
        if i == 0:
            s = s.lstrip(" ")
        out.append(s)
    return "".join(out)


# ---- main --------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--fixture", default=REPO / "test" / "fixtures" / "export", type=Path)
    args = ap.parse_args()
    work, fx = args.work.resolve(), args.fixture.resolve()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(0)
    REPORT["versions"] = versions()
    log(" ".join(f"{k}={v}" for k, v in REPORT["versions"].items()))

    # 1. inputs
    texts = [l for l in (fx / "inputs.txt").read_text(encoding="utf-8").splitlines() if l]
    batch = safetensors.torch.load_file(fx / "batch.safetensors")
    bos, eos = int(batch["bos_id"][0]), int(batch["eos_id"][0])
    StubTokenizer.BOS, StubTokenizer.EOS = bos, eos
    ids, am, em = batch["input_ids"], batch["attention_mask"], batch["embed_mask"]
    B, T = ids.shape
    check(B == len(texts), "one batch row per text")
    pieces = [line.split("\t")[0] for line in
              (REPO / "assets" / "stories260K" / "tok512.vocab").read_text(encoding="utf-8").splitlines()]
    for i, text in enumerate(texts):
        real = am[i].nonzero().flatten()
        first = int(real[0])
        check(int(real[-1]) == T - 1 and len(real) == T - first, f"row {i}: left padding")
        check(int(ids[i, first]) == bos, f"row {i}: BOS first")
        check(torch.equal(em[i], (torch.arange(T) > first).long()), f"row {i}: embed_mask = real tokens after BOS")
        dec = decode_pieces(ids[i, first + 1:].tolist(), pieces)
        check(dec == text, f"row {i}: ids decode to the text ({dec!r} vs {text!r})")
    REPORT["batch"] = {"shape": [B, T], "real_tokens_per_row": am.sum(1).tolist()}
    log(f"batch [{B}, {T}], real tokens per row {am.sum(1).tolist()}; ids decode to the texts")
    l2v_cfg = json.loads((fx / "simcse" / "llm2vec_config.json").read_text())
    REPORT["llm2vec_config"] = l2v_cfg

    # 2. chain A: explicit
    base = load_bi(work / "base_hf", "base_hf (llm2vec convert)")
    with torch.no_grad():
        base_l2v = LLM2Vec(base, StubTokenizer(bos, eos), **l2v_cfg)
        base_l2v.tokenizer.padding_side = "left"
        emb_base = l2v_forward(base_l2v, batch)
    mntp = peft_from_pretrained(base, fx / "mntp", "mntp adapter")
    base_mntp = mntp.merge_and_unload()
    # snapshot: loading the SimCSE adapter below injects LoRA layers into base_mntp in place
    sd_mntp = {k: v.detach().clone() for k, v in base_mntp.state_dict().items()}
    simcse = peft_from_pretrained(base_mntp, fx / "simcse", "simcse adapter")
    simcse.eval()
    tok = StubTokenizer(bos, eos)
    tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    l2v_a = LLM2Vec(simcse, tok, **l2v_cfg).eval()
    emb_a = l2v_forward(l2v_a, batch)
    hid_a = hidden_states(simcse, batch)
    check(torch.isfinite(emb_a).all(), "chain A: finite embeddings")

    # 3. chain B: llm2vec's from_pretrained, twice
    llm2vec_module.AutoTokenizer = StubTokenizer
    n = len(PEFT_LOADS)
    l2v_m = LLM2Vec.from_pretrained(str(work / "base_hf"), peft_model_name_or_path=str(fx / "mntp"), merge_peft=True,
                                    torch_dtype=torch.float32, attn_implementation=ATTN)
    check(type(l2v_m.model).__name__ == "LlamaBiModel", f"chain B: merged MNTP model is {type(l2v_m.model).__name__}")
    check(len(PEFT_LOADS) == n + 1, "chain B: llm2vec loaded the MNTP adapter through PEFT")
    _, _, res = PEFT_LOADS[-1]
    check(not res.unexpected_keys and not [k for k in res.missing_keys if "lora_" in k],
          "chain B (llm2vec.from_pretrained, mntp): PEFT reports no unexpected / missing LoRA keys")
    mntp_merged_dir = work / "py_mntp_merged"
    l2v_m.model.save_pretrained(str(mntp_merged_dir), safe_serialization=True)
    l2v_b = LLM2Vec.from_pretrained(str(mntp_merged_dir), peft_model_name_or_path=str(fx / "simcse"),
                                    torch_dtype=torch.float32, attn_implementation=ATTN)
    _, _, res = PEFT_LOADS[-1]
    check(not res.unexpected_keys and not [k for k in res.missing_keys if "lora_" in k],
          "chain B (llm2vec.from_pretrained, simcse): PEFT reports no unexpected / missing LoRA keys")
    check(isinstance(l2v_b.model, PeftModel), "chain B: the SimCSE adapter is a PeftModel")
    for k, v in l2v_cfg.items():
        check(getattr(l2v_b, k) == v, f"chain B: LLM2Vec read {k}={v} from llm2vec_config.json")
    check(l2v_b.tokenizer.padding_side == "left", "chain B: left padding")
    l2v_b.eval()
    emb_b = l2v_forward(l2v_b, batch)
    REPORT["chain_A_vs_chain_B"] = max_err(emb_b, emb_a)
    check(REPORT["chain_A_vs_chain_B"]["max_rel_to_max_ref"] <= 1e-6, "chain A == chain B")
    log(f"chain A (explicit) vs chain B (LLM2Vec.from_pretrained): {REPORT['chain_A_vs_chain_B']}")

    # 5. our merged models
    REPORT["transformers_causal_lm_loads"] = {}
    for stage in ("mntp", "simcse"):
        _, info = AutoModelForCausalLM.from_pretrained(str(work / stage / "merged"), torch_dtype=torch.float32,
                                                       attn_implementation=ATTN, output_loading_info=True)
        bad = {k: v for k, v in info.items() if v}
        check(not bad, f"AutoModelForCausalLM loads {stage}/merged cleanly: {bad}")
        REPORT["transformers_causal_lm_loads"][f"{stage}/merged"] = {k: len(v) for k, v in info.items()}
    ours_mntp = load_bi(work / "mntp" / "merged", "mntp/merged (ours)")
    REPORT["weights_mntp_merged_vs_peft_merge_and_unload"] = state_dict_err(ours_mntp, sd_mntp, "mntp/merged")
    ours_simcse = load_bi(work / "simcse" / "merged", "simcse/merged (ours)")
    hid_m = hidden_states(ours_simcse, batch)
    REPORT["hidden_simcse_merged_vs_chain_A"] = max_err(hid_m, hid_a, am)
    tok_m = StubTokenizer(bos, eos)
    tok_m.padding_side = "left"
    emb_m = l2v_forward(LLM2Vec(ours_simcse, tok_m, **l2v_cfg).eval(), batch)
    REPORT["embeddings_simcse_merged_vs_chain_A"] = max_err(emb_m, emb_a)
    # PEFT's own double merge (last: merge_and_unload changes the module tree in place)
    py_double = simcse.merge_and_unload()
    REPORT["weights_simcse_merged_vs_peft_merge_and_unload"] = state_dict_err(ours_simcse, py_double.state_dict(), "simcse/merged")
    for k in ("weights_mntp_merged_vs_peft_merge_and_unload", "hidden_simcse_merged_vs_chain_A",
              "embeddings_simcse_merged_vs_chain_A", "weights_simcse_merged_vs_peft_merge_and_unload"):
        log(f"{k}: {REPORT[k]}")
    check(REPORT["hidden_simcse_merged_vs_chain_A"]["max_rel_to_max_ref"] <= 1e-5, "merged hidden states")
    check(REPORT["embeddings_simcse_merged_vs_chain_A"]["max_rel_to_max_ref"] <= 1e-5, "merged embeddings")
    for k in ("weights_mntp_merged_vs_peft_merge_and_unload", "weights_simcse_merged_vs_peft_merge_and_unload"):
        check(REPORT[k]["max_rel_per_tensor"] <= 1e-5, k)

    # the causal_lm layout: PEFT wrapping LlamaForCausalLM loads it with no unexpected keys
    cl_dir = work / "simcse_causal_lm"
    causal = AutoModelForCausalLM.from_pretrained(str(work / "base_hf"), torch_dtype=torch.float32,
                                                  attn_implementation=ATTN)
    causal = PeftModel.from_pretrained(causal, str(cl_dir))
    _, cl_keys, res = PEFT_LOADS[-1]
    cl_file = safetensors.torch.load_file(cl_dir / "adapter_model.safetensors")
    inner_file = safetensors.torch.load_file(fx / "simcse" / "adapter_model.safetensors")
    loaded = {n.replace(".default.", "."): p.detach() for n, p in causal.named_parameters() if "lora_" in n}
    cl_ok = (all(k.startswith(OUTER) for k in cl_file) and set(loaded) == set(cl_file)
             and all(torch.equal(loaded[k], cl_file[k]) for k in cl_file)
             and set(cl_file) == {OUTER + k[len(INNER):] for k in inner_file}
             and all(torch.equal(cl_file[OUTER + k[len(INNER):]], v) for k, v in inner_file.items()))
    REPORT["causal_lm_layout"] = {
        "peft_unexpected_keys": len(res.unexpected_keys),
        "peft_missing_lora_keys": len([k for k in res.missing_keys if "lora_" in k]),
        "tensors": len(cl_file),
        "loaded_equal_file_and_equal_llm2vec_layout_tensors": bool(cl_ok),
    }
    check(not res.unexpected_keys and not [k for k in res.missing_keys if "lora_" in k],
          "causal_lm layout: PEFT on LlamaForCausalLM reports no unexpected / missing LoRA keys")
    check(cl_ok, "causal_lm layout: names base_model.model.model.layers..., tensors equal the llm2vec layout's")
    log(f"causal_lm layout on LlamaForCausalLM: {REPORT['causal_lm_layout']}")

    # 6. ours vs Python
    ours = np.load(work / "ours.npy")
    REPORT["ours_cli_vs_python"] = max_err(ours, emb_a)
    REPORT["base_without_adapters_vs_python"] = max_err(emb_base, emb_a)
    log(f"ours (llm2vec embed) vs python (chain A): {REPORT['ours_cli_vs_python']}")
    log(f"base model without adapters vs python: {REPORT['base_without_adapters_vs_python']} (must be large)")
    check(REPORT["ours_cli_vs_python"]["max_rel_to_max_ref"] <= 1e-5, "ours vs python embeddings")
    check(REPORT["base_without_adapters_vs_python"]["max_rel_to_max_ref"] >= 1e-2, "the adapters change the embeddings")

    np.save(fx / "python_embeddings.npy", emb_a.numpy().astype(np.float32))
    REPORT["failures"] = FAILURES
    (fx / "check_report.json").write_text(json.dumps(REPORT, indent=2, sort_keys=True) + "\n")
    log(f"wrote {fx / 'python_embeddings.npy'} {tuple(emb_a.shape)} and {fx / 'check_report.json'}")
    if FAILURES:
        log(f"{len(FAILURES)} check(s) failed")
        sys.exit(1)
    log("all checks passed")


if __name__ == "__main__":
    main()
