#!/usr/bin/env python3
"""Generate the Hugging Face / PEFT / llm2vec reference fixtures under test/fixtures/.

Run by hand (CI never installs torch), from the repository root:

    python3 -m venv scripts/.venv && scripts/.venv/bin/pip install -r scripts/requirements.txt
    scripts/.venv/bin/python scripts/make_hf_fixtures.py [--data /work/shared/data]

Everything is computed on the CPU in float32, single-threaded, with fixed seeds and
attn_implementation="eager", so a second run rewrites byte-identical files.

What it writes (every directory is deleted and recreated first):

test/fixtures/<name>/ for <name> in stories260k, mistral_tiny, qwen2_tiny, llama3_tiny:
  model/            `save_pretrained` output: config.json, generation_config.json and
                    - stories260k: model.safetensors, F32, tied embeddings. The real pretrained
                      llama2.c stories260K.bin (Karpathy, MIT) converted to LlamaForCausalLM.
                    - mistral_tiny: model.safetensors, BF16, untied, random weights.
                    - qwen2_tiny: model-00001-of-0000N.safetensors (N >= 2) +
                      model.safetensors.index.json, F16, tied, q/k/v biases, random weights.
                    - llama3_tiny: model.safetensors, F32, untied, Llama-3.1 "llama3" rope
                      scaling, random weights.
  adapter/          PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors, F32):
                    r=4, lora_alpha=8 (scaling 2), dropout 0, q/k/v/o/gate/up/down_proj, bias none,
                    task_type None, lora_A and lora_B both random N(0, 0.1^2) (0.05 for the
                    pretrained stories260k). PEFT wraps the whole XForCausalLM, so the keys are
                    base_model.model.model.layers.<i>.<self_attn|mlp>.<proj>.lora_<A|B>.weight.
  adapter_inner/    the same LoRA weights saved the way llm2vec's run_mntp.py and the published
                    LLM2Vec adapters do it: PEFT wraps the inner decoder (XForCausalLM.model), so the
                    keys are base_model.model.layers.<i>.... (one "model." less). Asserted to give
                    bit-identical outputs to adapter/.
  reference.safetensors  (int64 token tensors, everything else float32):
    input_ids [3,12], attention_mask [3,12]: row 0 unpadded, row 1 left-padded (positions 0-2),
        row 2 right-padded (positions 8-11); padding ids are distinct non-special ids.
    labels [3,12]: -100 except ~30% of the real positions (never the first real token),
        at least 2 per row.
    rope.inv_freq [head_dim/2]: the model's (possibly llama3-scaled) RoPE inverse frequencies.
    For mode in (causal, bidir):
      <mode>.hidden [3,12,C], <mode>.logits [3,12,V]: base model, eval mode, no adapter.
        hidden = last hidden state after the final RMSNorm.
      <mode>.lora.hidden, <mode>.lora.logits: the same with the adapter, train mode (dropouts 0).
      <mode>.lora.loss [1]: MNTP loss = cross_entropy(logits[:, :-1], labels[:, 1:],
        ignore_index=-100), mean over the labelled positions.
      <mode>.grad.<adapter key> : d loss / d LoRA parameter, same shape as the parameter
        (<adapter key> as in adapter/adapter_model.safetensors, e.g.
        base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight).
    causal = the plain HF XForCausalLM; bidir = llm2vec's own XBiForMNTP class
    (LlamaBiForMNTP / MistralBiForMNTP / Qwen2BiForMNTP) loaded from the same model/ directory.
    position_ids are the HF default arange(T) for every row (also for the left-padded row).
    Outputs at padded query positions are whatever HF computes there; compare real positions only.

test/fixtures/adamw.safetensors: torch.optim.AdamW(lr=1e-2, betas=(0.9, 0.999), eps=1e-8,
  weight_decay=0.1, foreach=False, fused=False) on one float32 parameter of 1000 values:
  param0 [1000], grad.<k> [1000] and param.<k> [1000] (after step k) for k = 1..5.

test/fixtures/README.md: description of the above, package versions, licence of stories260K.

BF16/F16 checkpoints: all references are computed in float32 from weights that were first
rounded to bf16/fp16 (the checkpoint is reloaded with torch_dtype=float32), so a loader that
converts bf16/fp16 -> fp32 exactly sees exactly the numbers used here.

Quirk recorded by an assert: with transformers 4.44.2, llm2vec 0.2.3's Qwen2BiModel does not
override _update_causal_mask, so under eager/sdpa attention and a 2-D attention_mask it is
*causal* (only flash_attention_2 honours its is_causal=False). The qwen2_tiny bidir references
therefore run Qwen2BiForMNTP with the 4-D bidirectional padding mask built by llm2vec's own
llm2vec.models.attn_mask_utils._prepare_4d_causal_attention_mask (is_causal=False), which is
the mask llm2vec's Llama/Mistral Bi models build from a 2-D mask.
"""

import argparse
import importlib.metadata
import json
import math
import os
import platform
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import safetensors
import safetensors.torch
import transformers
import peft
import llm2vec
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)
from peft import LoraConfig, PeftModel, get_peft_model
from llm2vec.models import LlamaBiForMNTP, MistralBiForMNTP, Qwen2BiForMNTP
from llm2vec.models.attn_mask_utils import _prepare_4d_causal_attention_mask

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "test" / "fixtures"

B, T = 3, 12
LEFT_PAD = 3    # row 1: positions 0..2 are padding
RIGHT_PAD = 4   # row 2: positions 8..11 are padding
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA_STD = {"stories260k": 0.05}  # default 0.1; the pretrained model has smaller weights

ATTN = "eager"
LOG = []  # lines that also go to the README


def log(msg=""):
    print(msg)
    LOG.append(msg)


def lora_config():
    # Same as llm2vec's experiments/run_mntp.py initialize_peft (task_type=None, inner model).
    return LoraConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        target_modules=LORA_TARGETS,
        bias="none",
        task_type=None,
    )


# --------------------------------------------------------------------------------------------
# model construction
# --------------------------------------------------------------------------------------------

def randomize_(model, gen, emb_std, head_std, bias_std):
    """O(1) activations: linear N(0, 1/fan_in), norms 1 +- 0.1, embeddings/head/biases given std."""
    with torch.no_grad():
        for name, p in model.named_parameters():  # tied lm_head appears once (as embed_tokens)
            if name.endswith("norm.weight"):
                val = 1.0 + 0.1 * torch.randn(p.shape, generator=gen)
            elif "embed_tokens" in name:
                val = emb_std * torch.randn(p.shape, generator=gen)
            elif name.startswith("lm_head"):
                val = head_std * torch.randn(p.shape, generator=gen)
            elif name.endswith(".bias"):
                val = bias_std * torch.randn(p.shape, generator=gen)
            elif name.endswith(".weight") and p.dim() == 2:
                val = torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[1])
            else:
                raise RuntimeError(f"unexpected parameter {name}")
            p.copy_(val)


def round_weights_(model, dtype):
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(dtype).to(torch.float32))


def save_model(model, model_dir, dtype, max_shard_size=None):
    if model_dir.exists():
        shutil.rmtree(model_dir)
    model = model.to(dtype)
    kw = {"safe_serialization": True}
    if max_shard_size is not None:
        kw["max_shard_size"] = max_shard_size
    model.save_pretrained(model_dir, **kw)
    model.to(torch.float32)


def load(cls, model_dir):
    m = cls.from_pretrained(model_dir, torch_dtype=torch.float32, attn_implementation=ATTN)
    assert m.config._attn_implementation == ATTN
    return m


def read_llama2c(path):
    raw = Path(path).read_bytes()
    hdr = np.frombuffer(raw[:28], dtype=np.int32)
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = (int(x) for x in hdr)
    shared = vocab > 0
    vocab = abs(vocab)
    hd = dim // n_heads
    w = np.frombuffer(raw[28:], dtype=np.float32)
    off = 0

    def take(*shape):
        nonlocal off
        n = int(np.prod(shape))
        a = torch.from_numpy(w[off:off + n].copy()).reshape(shape)
        off += n
        return a

    p = {}
    p["tok"] = take(vocab, dim)
    p["rms_att"] = take(n_layers, dim)
    p["wq"] = take(n_layers, n_heads * hd, dim)
    p["wk"] = take(n_layers, n_kv * hd, dim)
    p["wv"] = take(n_layers, n_kv * hd, dim)
    p["wo"] = take(n_layers, dim, n_heads * hd)
    p["rms_ffn"] = take(n_layers, dim)
    p["w1"] = take(n_layers, hidden, dim)
    p["w2"] = take(n_layers, dim, hidden)
    p["w3"] = take(n_layers, hidden, dim)
    p["rms_final"] = take(dim)
    rest = w.size - off
    assert rest == 2 * seq_len * (hd // 2), f"unexpected tail of {rest} floats"
    if not shared:
        raise RuntimeError("stories260K is expected to share the classifier with the embedding")
    meta = dict(dim=dim, hidden=hidden, n_layers=n_layers, n_heads=n_heads, n_kv=n_kv,
                vocab=vocab, seq_len=seq_len, hd=hd)
    return meta, p


def permute_rope(w, n_heads, hd, dim):
    # transformers' convert_llama_weights_to_hf.py: llama2.c rotates interleaved pairs
    # (2i, 2i+1), HF's rotate_half rotates (i, i + hd/2).
    return w.view(n_heads, hd // 2, 2, dim).transpose(1, 2).reshape(n_heads * hd, dim)


def build_stories260k(data_dir, model_dir):
    meta, p = read_llama2c(data_dir / "llama2c" / "stories260K.bin")
    log(f"stories260K header: {meta}")
    cfg = LlamaConfig(
        vocab_size=meta["vocab"],
        hidden_size=meta["dim"],
        intermediate_size=meta["hidden"],
        num_hidden_layers=meta["n_layers"],
        num_attention_heads=meta["n_heads"],
        num_key_value_heads=meta["n_kv"],
        max_position_embeddings=meta["seq_len"],
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        hidden_act="silu",
        attention_dropout=0.0,
        attention_bias=False,
        mlp_bias=False,
    )
    model = LlamaForCausalLM(cfg)
    dim, hd = meta["dim"], meta["hd"]
    sd = {"model.embed_tokens.weight": p["tok"], "model.norm.weight": p["rms_final"]}
    for l in range(meta["n_layers"]):
        pre = f"model.layers.{l}."
        sd[pre + "input_layernorm.weight"] = p["rms_att"][l]
        sd[pre + "post_attention_layernorm.weight"] = p["rms_ffn"][l]
        sd[pre + "self_attn.q_proj.weight"] = permute_rope(p["wq"][l], meta["n_heads"], hd, dim)
        sd[pre + "self_attn.k_proj.weight"] = permute_rope(p["wk"][l], meta["n_kv"], hd, dim)
        sd[pre + "self_attn.v_proj.weight"] = p["wv"][l]
        sd[pre + "self_attn.o_proj.weight"] = p["wo"][l]
        sd[pre + "mlp.gate_proj.weight"] = p["w1"][l]
        sd[pre + "mlp.down_proj.weight"] = p["w2"][l]
        sd[pre + "mlp.up_proj.weight"] = p["w3"][l]
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected, unexpected
    assert missing == ["lm_head.weight"], missing  # tied to embed_tokens
    model.tie_weights()
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    save_model(model, model_dir, torch.float32)
    return model


def decode_pieces(ids, pieces):
    out = []
    for i, t in enumerate(ids):
        s = pieces[t]
        if s.startswith("<0x") and s.endswith(">") and len(s) == 6:
            s = chr(int(s[3:5], 16))
        else:
            s = s.replace("\u2581", " ")
        if i == 0:
            s = s.lstrip(" ")  # sentencepiece strips the leading space after BOS
        out.append(s)
    return "".join(out)


def check_stories_greedy(data_dir, model_dir):
    pieces = [line.rstrip("\n").split("\t")[0]
              for line in (data_dir / "llama2c" / "tok512.vocab").read_text(encoding="utf-8").splitlines()]
    assert len(pieces) == 512
    expected = (data_dir / "llama2c" / "greedy_from_bos.txt").read_text(encoding="utf-8")
    model = load(LlamaForCausalLM, model_dir).eval()
    ids = [1]
    # llama2.c's `-n 256` counts the BOS position: 255 generated tokens, then a final "\n".
    with torch.no_grad():
        for _ in range(255):
            logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits
            ids.append(int(logits[0, -1].argmax()))
            if len(ids) == 31:
                text30 = decode_pieces(ids[1:], pieces)
    log(f"stories260k greedy 30 tokens from BOS: {ids[1:31]}")
    log(f"  -> {text30!r}")
    assert text30.startswith("Once upon a time, there was a little girl named Lily."), text30
    assert expected.startswith(text30), (text30, expected[:200])
    text255 = decode_pieces(ids[1:], pieces)
    assert text255 == expected.rstrip("\n"), (text255, expected)
    log("  all 255 greedy tokens reproduce greedy_from_bos.txt exactly")


def build_random(kind, model_dir, gen):
    if kind == "mistral_tiny":
        cfg = MistralConfig(
            vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=10000.0,
            sliding_window=4096, tie_word_embeddings=False, max_position_embeddings=4096,
            attention_dropout=0.0, bos_token_id=1, eos_token_id=2,
        )
        model = MistralForCausalLM(cfg)
        randomize_(model, gen, emb_std=0.5, head_std=0.3, bias_std=0.0)
        round_weights_(model, torch.bfloat16)
        save_model(model, model_dir, torch.bfloat16)
    elif kind == "qwen2_tiny":
        cfg = Qwen2Config(
            vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=1, rms_norm_eps=1e-6, rope_theta=1e6,
            tie_word_embeddings=True, max_position_embeddings=4096, use_sliding_window=False,
            attention_dropout=0.0, bos_token_id=1, eos_token_id=2,
        )
        model = Qwen2ForCausalLM(cfg)
        randomize_(model, gen, emb_std=0.5, head_std=None, bias_std=0.2)
        for n, p in model.named_parameters():
            if n.endswith(".bias"):
                assert p.abs().mean() > 0.05, n
        round_weights_(model, torch.float16)
        save_model(model, model_dir, torch.float16, max_shard_size="64KB")
        shards = sorted(model_dir.glob("model-*.safetensors"))
        assert len(shards) >= 2 and (model_dir / "model.safetensors.index.json").exists(), shards
    elif kind == "llama3_tiny":
        cfg = LlamaConfig(
            vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=8, num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=500000.0,
            rope_scaling=LLAMA3_ROPE, max_position_embeddings=2048, tie_word_embeddings=False,
            attention_dropout=0.0, bos_token_id=1, eos_token_id=2,
        )
        check_llama3_regimes(cfg)
        model = LlamaForCausalLM(cfg)
        randomize_(model, gen, emb_std=0.5, head_std=0.3, bias_std=0.0)
        save_model(model, model_dir, torch.float32)
    else:
        raise ValueError(kind)


LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    # head_dim 8 and theta 5e5 give wavelengths 6.3, 167, 4443, 118170; 256 puts 167 in the
    # medium band [256/4, 256/1] so all three regimes occur.
    "original_max_position_embeddings": 256,
}


def llama3_expected_inv_freq(cfg):
    hd = cfg.hidden_size // cfg.num_attention_heads
    rs = cfg.rope_scaling
    inv = 1.0 / (cfg.rope_theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    old = rs["original_max_position_embeddings"]
    low_wl = old / rs["low_freq_factor"]
    high_wl = old / rs["high_freq_factor"]
    out, regimes = [], []
    for f in inv:
        wl = 2 * math.pi / f
        if wl < high_wl:
            out.append(f)
            regimes.append("high (unchanged)")
        elif wl > low_wl:
            out.append(f / rs["factor"])
            regimes.append("low (/factor)")
        else:
            s = (old / wl - rs["low_freq_factor"]) / (rs["high_freq_factor"] - rs["low_freq_factor"])
            out.append((1 - s) * f / rs["factor"] + s * f)
            regimes.append(f"medium (smooth={s:.6f})")
    return inv, np.array(out), regimes, low_wl, high_wl


def check_llama3_regimes(cfg):
    inv, scaled, regimes, low_wl, high_wl = llama3_expected_inv_freq(cfg)
    log(f"llama3_tiny rope: theta={cfg.rope_theta}, head_dim={cfg.hidden_size // cfg.num_attention_heads}, "
        f"rope_scaling={json.dumps(cfg.rope_scaling, sort_keys=True)}")
    log(f"  high-frequency wavelength bound orig/high_freq_factor = {high_wl}, "
        f"low-frequency bound orig/low_freq_factor = {low_wl}")
    for i, (f, g, r) in enumerate(zip(inv, scaled, regimes)):
        log(f"  i={i}: inv_freq={f:.9g} wavelength={2 * math.pi / f:.6g} -> {r}, scaled inv_freq={g:.9g}")
    kinds = {r.split()[0] for r in regimes}
    assert kinds == {"high", "medium", "low"}, regimes


# --------------------------------------------------------------------------------------------
# references
# --------------------------------------------------------------------------------------------

def make_inputs(gen, vocab):
    ids = torch.randint(3, vocab, (B, T), generator=gen, dtype=torch.int64)
    mask = torch.ones(B, T, dtype=torch.int64)
    mask[1, :LEFT_PAD] = 0
    mask[2, T - RIGHT_PAD:] = 0
    pad_ids = 3 + torch.randperm(vocab - 3, generator=gen)[: LEFT_PAD + RIGHT_PAD]
    ids[1, :LEFT_PAD] = pad_ids[:LEFT_PAD]
    ids[2, T - RIGHT_PAD:] = pad_ids[LEFT_PAD:]
    labels = torch.full((B, T), -100, dtype=torch.int64)
    for b in range(B):
        real = torch.nonzero(mask[b]).flatten()
        eligible = real[1:]  # never the first real token (nor position 0)
        n = max(2, int(round(0.3 * len(eligible))))
        chosen = eligible[torch.randperm(len(eligible), generator=gen)[:n]]
        labels[b, chosen] = torch.randint(3, vocab, (n,), generator=gen, dtype=torch.int64)
    assert ((labels != -100) <= (mask == 1)).all()
    return ids, mask, labels


def other_pad_ids(ids, mask, vocab, gen):
    ids2 = ids.clone()
    pads = mask == 0
    new = 3 + torch.randperm(vocab - 3, generator=gen)[: int(pads.sum())]
    ids2[pads] = new
    assert (ids2[pads] != ids[pads]).any()
    return ids2


def mntp_loss(logits, labels):
    V = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1, :].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100)


class Runner:
    """Forward passes of one architecture in one mode (causal: HF class; bidir: llm2vec class)."""

    def __init__(self, name, mode, cls, model_dir, mask4d):
        self.name, self.mode, self.cls, self.model_dir = name, mode, cls, model_dir
        self.mask4d = mask4d  # qwen2 bidir: pass llm2vec's 4-D bidirectional mask

    def mask_arg(self, model, mask):
        if not self.mask4d:
            return mask
        C = model.config.hidden_size
        dummy = torch.zeros(mask.shape[0], mask.shape[1], C, dtype=torch.float32)
        m4 = _prepare_4d_causal_attention_mask(mask, (mask.shape[0], mask.shape[1]), dummy, 0)
        assert m4.shape == (mask.shape[0], 1, mask.shape[1], mask.shape[1])
        return m4

    def base(self):
        m = load(self.cls, self.model_dir).eval()
        check_attention_classes(m, self.mode)
        return m

    def forward(self, model, ids, mask, labels=None):
        out = model(input_ids=ids, attention_mask=self.mask_arg(model, mask), labels=labels,
                    output_hidden_states=True, use_cache=False, return_dict=True)
        hidden = out.hidden_states[-1]
        # hidden_states[-1] is after the final norm: lm_head(hidden) must give the logits.
        lm = model.lm_head.weight
        assert torch.allclose(hidden @ lm.t(), out.logits, atol=1e-5, rtol=1e-5)
        return hidden, out.logits, out.loss


def unwrap(model):
    """-> the decoder (XModel / XBiModel) under any PEFT wrapping."""
    if isinstance(model, PeftModel):
        model = model.get_base_model()
    inner = model.model
    if isinstance(inner, PeftModel):
        inner = inner.get_base_model()
    return inner


def check_attention_classes(model, mode):
    attn = unwrap(model).layers[0].self_attn
    cname = type(attn).__name__
    if mode == "bidir":
        assert cname.startswith("Modified") and not attn.is_causal, cname
    else:
        assert not cname.startswith("Modified") and attn.is_causal, cname
    assert "Sdpa" not in cname and "Flash" not in cname, cname


def save_adapter(peft_model, adapter_dir, model_dir):
    if adapter_dir.exists():
        shutil.rmtree(adapter_dir)
    # machine-independent: relative to the repository root (the script chdirs there)
    peft_model.peft_config["default"].base_model_name_or_path = str(model_dir.relative_to(REPO))
    peft_model.save_pretrained(adapter_dir, safe_serialization=True)
    readme = adapter_dir / "README.md"  # PEFT's auto-generated model card; not needed
    if readme.exists():
        readme.unlink()
    # PEFT stores target_modules as a set, whose order depends on PYTHONHASHSEED: sort it.
    cfg_path = adapter_dir / "adapter_config.json"
    acfg = json.loads(cfg_path.read_text())
    acfg["target_modules"] = sorted(acfg["target_modules"])
    cfg_path.write_text(json.dumps(acfg, indent=2, sort_keys=True))
    return safetensors.torch.load_file(adapter_dir / "adapter_model.safetensors")


OUTER = "base_model.model.model.layers."  # PEFT around XForCausalLM (adapter/)
INNER = "base_model.model.layers."        # PEFT around XForCausalLM.model, as llm2vec (adapter_inner/)


def make_adapter(cls, model_dir, adapter_dir, inner_dir, gen, lora_std):
    """adapter/: PEFT wraps the whole XForCausalLM. adapter_inner/: the same LoRA weights saved
    the way llm2vec's run_mntp.py does it (PEFT wraps the inner decoder)."""
    m = get_peft_model(load(cls, model_dir), lora_config())
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_" in n:
                p.copy_(lora_std * torch.randn(p.shape, generator=gen))
    keys = save_adapter(m, adapter_dir, model_dir)
    n_layers = m.config.num_hidden_layers
    assert len(keys) == 2 * len(LORA_TARGETS) * n_layers, len(keys)
    for k, v in keys.items():
        assert v.dtype == torch.float32, (k, v.dtype)
        assert k.startswith(OUTER), k
        assert v.abs().max() > 0, k

    m2 = load(cls, model_dir)
    m2.model = get_peft_model(m2.model, lora_config())
    with torch.no_grad():
        for n, p in m2.model.named_parameters():
            if "lora_" in n:
                p.copy_(keys[OUTER + n[len(INNER):].replace(".default.", ".")])
    keys2 = save_adapter(m2.model, inner_dir, model_dir)
    assert {INNER + k[len(OUTER):]: v for k, v in keys.items()}.keys() == keys2.keys()
    for k, v in keys2.items():
        assert torch.equal(v, keys[OUTER + k[len(INNER):]]), k
    return keys


def lora_model(runner, adapter_dir, adapter_keys):
    m = PeftModel.from_pretrained(load(runner.cls, runner.model_dir), adapter_dir, is_trainable=True)
    m.train()
    check_attention_classes(m, runner.mode)
    params = {}
    for n, p in m.named_parameters():
        if p.requires_grad:
            assert n.startswith(OUTER) and ".default." in n, n
            params[n.replace(".default.", ".")] = p
    assert set(params) == set(adapter_keys), set(params) ^ set(adapter_keys)
    for k, p in params.items():
        assert torch.equal(p.detach(), adapter_keys[k]), k
    return m, params


def lora_model_inner(runner, inner_dir):
    m = load(runner.cls, runner.model_dir)
    m.model = PeftModel.from_pretrained(m.model, inner_dir, is_trainable=True)
    # an untied lm_head outside the PEFT wrapper stays trainable (llm2vec's run_mntp.py does
    # update it, then discards it); irrelevant for the forward pass checked here.
    m.train()
    check_attention_classes(m, runner.mode)
    return m


def lora_loss_and_grads(runner, model, params, ids, mask, labels):
    """-> hidden, logits, MNTP loss [1] (asserted equal to transformers' own labels= loss) and
    {adapter key: d loss / d parameter} (all finite and nonzero) of a PEFT model in train mode."""
    h, logits, loss_hf = runner.forward(model, ids, mask, labels=labels)
    loss = mntp_loss(logits, labels)
    assert torch.allclose(loss, loss_hf, atol=1e-6, rtol=1e-6), (loss, loss_hf)
    loss.backward()
    grads = {}
    for k in sorted(params):
        g = params[k].grad
        assert g is not None and torch.isfinite(g).all() and g.abs().max() > 0, k
        grads[k] = g.detach().clone()
    return h.detach(), logits.detach(), loss.detach().reshape(1), grads


def real_max_diff(a, b, mask):
    d = (a - b).abs().amax(dim=-1)  # [B, T]
    return float(d[mask.bool()].max())


def build_reference(name, model_dir, adapter_dir, inner_dir, causal_cls, bidir_cls, gen):
    cfg = json.loads((model_dir / "config.json").read_text())
    vocab = cfg["vocab_size"]
    ids, mask, labels = make_inputs(gen, vocab)
    ref = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    real = mask.bool()

    qwen = bidir_cls is Qwen2BiForMNTP
    runners = {
        "causal": Runner(name, "causal", causal_cls, model_dir, mask4d=False),
        "bidir": Runner(name, "bidir", bidir_cls, model_dir, mask4d=qwen),
    }

    # ---- checkpoint round trip: fp32 reload equals the stored (bf16/fp16/fp32) values
    base_c = runners["causal"].base()
    stored = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        stored.update(safetensors.torch.load_file(f))
    sd = base_c.state_dict()
    for k, v in stored.items():
        assert torch.equal(sd[k], v.to(torch.float32)), k
    dtypes = sorted({str(v.dtype).replace("torch.", "") for v in stored.values()})
    tied = cfg.get("tie_word_embeddings", True)
    assert ("lm_head.weight" in stored) == (not tied)
    # Llama/Qwen2 (4.44) keep one rotary_emb on the model, Mistral one per attention layer.
    rot = next(mod for mod in base_c.modules() if hasattr(mod, "inv_freq"))
    ref["rope.inv_freq"] = rot.inv_freq.detach().to(torch.float32).clone()

    adapter_keys = make_adapter(causal_cls, model_dir, adapter_dir, inner_dir, gen,
                                LORA_STD.get(name, 0.1))
    ids_pad2 = other_pad_ids(ids, mask, vocab, gen)
    ids_last = ids.clone()
    ids_last[0, T - 1] = 3 + (ids[0, T - 1] - 3 + 1 + vocab // 2) % (vocab - 3)

    info = {"dtypes": dtypes, "tied": tied, "shards": len(list(model_dir.glob("*.safetensors")))}
    outs = {}
    for mode, r in runners.items():
        base = base_c if mode == "causal" else r.base()
        if mode == "bidir":
            assert torch.equal(base.lm_head.weight, base_c.lm_head.weight)
            if tied:
                assert base.lm_head.weight.data_ptr() == base.model.embed_tokens.weight.data_ptr()
        with torch.no_grad():
            h, lg, _ = r.forward(base, ids, mask)
            h_pad2, _, _ = r.forward(base, ids_pad2, mask)
            h_last, _, _ = r.forward(base, ids_last, mask)
            # row 1 without its left padding (positions 0..8 instead of 3..11)
            h_row1, _, _ = r.forward(base, ids[1:2, LEFT_PAD:], mask[1:2, LEFT_PAD:])
        ref[f"{mode}.hidden"] = h
        ref[f"{mode}.logits"] = lg
        info[f"{mode}.base_loss_unstored"] = float(mntp_loss(lg, labels))
        outs[mode] = h
        assert torch.isfinite(h[real]).all() and torch.isfinite(lg[real]).all()
        info[f"{mode}.nonfinite_padded"] = int((~torch.isfinite(h[~real])).sum())
        # padding ids must not leak into real positions
        d_pad = real_max_diff(h, h_pad2, mask)
        assert d_pad <= 1e-6, (mode, d_pad)
        # attention direction probe: change the last token of row 0
        d_first = float((h[0, 0] - h_last[0, 0]).abs().max())
        d_prefix = float((h[0, : T - 1] - h_last[0, : T - 1]).abs().max())
        if mode == "bidir":
            assert d_first > 1e-3, (name, d_first)
        else:
            assert d_prefix == 0.0, (name, d_prefix)
        d_shift = float((h[1, LEFT_PAD:] - h_row1[0]).abs().max())
        assert d_shift < 1e-4, (mode, d_shift)
        info[f"{mode}.pad_id_change"] = d_pad
        info[f"{mode}.last_token_change_at_pos0"] = d_first
        info[f"{mode}.left_pad_vs_unpadded"] = d_shift

        # ---- with the adapter, train mode, loss + grads
        m, params = lora_model(r, adapter_dir, adapter_keys)
        hl, lgl, loss, grads = lora_loss_and_grads(r, m, params, ids, mask, labels)
        ref[f"{mode}.lora.hidden"] = hl
        ref[f"{mode}.lora.logits"] = lgl
        ref[f"{mode}.lora.loss"] = loss
        for k, g in grads.items():
            ref[f"{mode}.grad.{k}"] = g
        # the llm2vec-layout adapter (PEFT around the inner model) gives the same outputs
        mi = lora_model_inner(r, inner_dir)
        hi, lgi, _ = r.forward(mi, ids, mask)
        assert torch.equal(hi, hl) and torch.equal(lgi, lgl), mode
        d_lora = real_max_diff(h, hl, mask)
        assert d_lora > 1e-3, d_lora
        info[f"{mode}.lora_vs_base_hidden"] = d_lora
        info[f"{mode}.lora.loss"] = float(loss[0])

    # causal and bidir differ at every real position
    per_pos = (outs["causal"] - outs["bidir"]).abs().amax(dim=-1)
    assert float(per_pos[0, 0]) > 1e-3
    info["causal_vs_bidir_min_over_real_positions"] = float(per_pos[real].min())
    assert info["causal_vs_bidir_min_over_real_positions"] > 1e-4, per_pos

    if qwen:
        # Document the llm2vec 0.2.3 + transformers 4.44.2 quirk: with a plain 2-D mask the
        # official Qwen2BiForMNTP is causal under eager attention (see module docstring).
        qb = runners["bidir"].base()
        with torch.no_grad():
            out = qb(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
        d = real_max_diff(out.hidden_states[-1], outs["causal"], mask)
        info["qwen2bi_2d_mask_vs_causal"] = d
        assert d < 1e-5, ("llm2vec's Qwen2BiModel is no longer causal with a 2-D mask; "
                          "drop the 4-D mask workaround", d)

    for k, v in ref.items():
        assert v.dtype in (torch.int64, torch.float32), (k, v.dtype)
    ref = {k: v.contiguous() for k, v in ref.items()}
    safetensors.torch.save_file(ref, FIXTURES / name / "reference.safetensors",
                                metadata={"generator": "scripts/make_hf_fixtures.py"})
    return ref, info


# --------------------------------------------------------------------------------------------
# AdamW
# --------------------------------------------------------------------------------------------

def build_adamw(path):
    gen = torch.Generator().manual_seed(1234)
    p0 = torch.randn(1000, generator=gen, dtype=torch.float32)
    p = torch.nn.Parameter(p0.clone())
    opt = torch.optim.AdamW([p], lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1,
                            amsgrad=False, foreach=False, fused=False)
    out = {"param0": p0}
    for k in range(1, 6):
        g = torch.randn(1000, generator=gen, dtype=torch.float32)
        p.grad = g.clone()
        opt.step()
        out[f"grad.{k}"] = g
        out[f"param.{k}"] = p.detach().clone()
    # one metadata key only: safetensors serialises the metadata map in hash order
    hparams = {"optimizer": "torch.optim.AdamW", "lr": 1e-2, "betas": [0.9, 0.999], "eps": 1e-8,
               "weight_decay": 0.1, "amsgrad": False, "foreach": False, "fused": False}
    safetensors.torch.save_file(out, path, metadata={"adamw": json.dumps(hparams, sort_keys=True)})
    return out


# --------------------------------------------------------------------------------------------
# README
# --------------------------------------------------------------------------------------------

def versions():
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "llm2vec": importlib.metadata.version("llm2vec"),
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
    }


def tensor_table(ref):
    lines = []
    for k in sorted(ref):
        if ".grad." in k:
            continue
        v = ref[k]
        lines.append(f"  {k:<20s} {str(v.dtype).replace('torch.', ''):<8s} {list(v.shape)}")
    for mode in ("causal", "bidir"):
        g = sorted(k for k in ref if k.startswith(f"{mode}.grad."))
        lines.append(f"  {mode}.grad.<key>  float32  {len(g)} tensors, one per adapter key, shaped like it:")
        for k in g:
            if ".layers.0." in k:
                lines.append(f"      {k:<75s} {list(ref[k].shape)}")
        lines.append("      ... and the same for the other layers")
    return lines


def write_readme(results, adamw):
    vers = versions()
    L = []
    L.append("# Reference fixtures (generated, do not edit)")
    L.append("")
    L.append("Produced by `scripts/make_hf_fixtures.py` from independent reference implementations")
    L.append("(Hugging Face transformers, peft, and the official llm2vec package). Regenerate with:")
    L.append("")
    L.append("```")
    L.append("python3 -m venv scripts/.venv && scripts/.venv/bin/pip install -r scripts/requirements.txt")
    L.append("scripts/.venv/bin/python scripts/make_hf_fixtures.py")
    L.append("```")
    L.append("")
    L.append("This README covers the files that script writes (every file up to the marked sections at")
    L.append("the end, which other generators maintain); other files in this directory (e.g.")
    L.append("tok512_encodings.jsonl) come from other generators.")
    L.append("")
    L.append("The run is deterministic (CPU, float32, one thread, fixed seeds, eager attention); a second")
    L.append("run rewrites byte-identical files. Package versions used:")
    L.append("")
    for k, v in vers.items():
        L.append(f"- {k} {v}")
    L.append("")
    L.append("## Layout")
    L.append("")
    L.append("Each of `stories260k/`, `mistral_tiny/`, `qwen2_tiny/`, `llama3_tiny/` holds:")
    L.append("")
    L.append("- `model/`: `save_pretrained` output (config.json, generation_config.json, safetensors).")
    L.append("- `adapter/`: PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors, F32), r=4,")
    L.append("  lora_alpha=8 (scaling 2), dropout 0, bias none, task_type null, targets")
    L.append("  q/k/v/o/gate/up/down_proj; lora_A and lora_B both random N(0, 0.1^2) (0.05 for the")
    L.append("  pretrained stories260k). PEFT wraps the whole `XForCausalLM`, so keys are")
    L.append("  `base_model.model.model.layers.<i>.<self_attn|mlp>.<proj>.lora_<A|B>.weight`")
    L.append("  (lora_A [4, in], lora_B [out, 4]; delta W = 2 * B @ A).")
    L.append("- `adapter_inner/`: the same LoRA weights in the layout of llm2vec's run_mntp.py and of the")
    L.append("  published McGill-NLP LLM2Vec adapters: PEFT wraps the inner decoder (`XForCausalLM.model`),")
    L.append("  so keys are `base_model.model.layers.<i>....` (one `model.` less) and adapter_config.json")
    L.append("  names the decoder class in auto_mapping. It gives bit-identical outputs (asserted).")
    L.append("- `reference.safetensors`: inputs and outputs (token tensors int64, everything else float32):")
    L.append("  - `input_ids`, `attention_mask` [3,12]: row 0 unpadded, row 1 left-padded (positions 0-2),")
    L.append("    row 2 right-padded (positions 8-11). Padding positions hold distinct non-special ids.")
    L.append("  - `labels` [3,12]: -100 except ~30% of the real positions (never a row's first real token).")
    L.append("  - `rope.inv_freq` [head_dim/2]: the model's RoPE inverse frequencies (after llama3 scaling).")
    L.append("  - `<mode>.hidden` [3,12,C] (after the final RMSNorm) and `<mode>.logits` [3,12,V]: base")
    L.append("    model in eval mode; `<mode>.lora.hidden`, `<mode>.lora.logits`: with the adapter (train")
    L.append("    mode, all dropouts 0); `<mode>.lora.loss` [1]: MNTP loss")
    L.append("    `cross_entropy(logits[:, :-1], labels[:, 1:], ignore_index=-100)` (mean over labelled")
    L.append("    positions); `<mode>.grad.<adapter key>`: its gradient w.r.t. each LoRA parameter.")
    L.append("  - `causal` = the plain HF `XForCausalLM`; `bidir` = llm2vec's `LlamaBiForMNTP` /")
    L.append("    `MistralBiForMNTP` / `Qwen2BiForMNTP`, loaded from the same `model/` directory.")
    L.append("  - position_ids are HF's default `arange(12)` for every row, also the left-padded one (RoPE")
    L.append("    is relative, so real positions match an unpadded run to ~1e-6 either way).")
    L.append("  - Padded keys are masked in both modes. Values at padded *query* positions are whatever HF")
    L.append("    computes there (finite, but meaningless): compare real (attention_mask=1) positions only.")
    L.append("    (In causal mode a left-padded query row has every key masked with finfo.min, so eager")
    L.append("    softmax gives it uniform weights over all 12 keys, future tokens included; no NaN. In")
    L.append("    bidir mode padded queries attend to the real keys.)")
    L.append("")
    L.append("Bidirectional mask: llm2vec's Llama/Mistral Bi models turn the 2-D mask into a 4-D additive")
    L.append("mask that is 0 for every real key and finfo.min for every padded key, for all queries (padded")
    L.append("queries included). llm2vec 0.2.3's `Qwen2BiModel` does not override `_update_causal_mask`, so")
    L.append("with transformers 4.44.2 and eager/sdpa attention it is causal when given a 2-D mask (only")
    L.append("flash_attention_2 uses its `is_causal=False`); the script asserts this. The qwen2_tiny `bidir`")
    L.append("references therefore pass `Qwen2BiForMNTP` the 4-D mask built by llm2vec's own")
    L.append("`llm2vec.models.attn_mask_utils._prepare_4d_causal_attention_mask` (is_causal=False), which")
    L.append("is the same padding-only mask as above.")
    L.append("")
    L.append("BF16/F16 checkpoints: the references were computed in float32 from the stored bf16/fp16")
    L.append("values (reloaded with torch_dtype=float32), so an exact bf16/fp16 -> fp32 loader sees the")
    L.append("same numbers.")
    L.append("")
    for name, (ref, info, desc) in results.items():
        L.append(f"## {name}")
        L.append("")
        L.append(desc)
        L.append("")
        L.append(f"Stored dtypes: {', '.join(info['dtypes'])}; safetensors files: {info['shards']}; "
                 f"tied embeddings: {info['tied']}.")
        L.append("")
        L.append("Checks made by the script (max abs differences over real positions; losses for scale):")
        L.append("")
        for k, v in info.items():
            if k in ("dtypes", "tied", "shards"):
                continue
            L.append(f"- {k}: {v:.6g}" if isinstance(v, float) else f"- {k}: {v}")
        L.append("")
        L.append("`reference.safetensors`:")
        L.append("")
        L.append("```")
        L.extend(tensor_table(ref))
        L.append("```")
        L.append("")
    L.append("## adamw.safetensors")
    L.append("")
    L.append("`torch.optim.AdamW(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1, amsgrad=False,")
    L.append("foreach=False, fused=False)` on one float32 parameter of 1000 values, 5 steps: `param0`,")
    L.append("`grad.<k>` and `param.<k>` (after step k), k = 1..5, all [1000] float32. torch's AdamW:")
    L.append("p *= 1 - lr*wd; m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2;")
    L.append("p -= lr/(1-b1^k) * m / (sqrt(v)/sqrt(1-b2^k) + eps).")
    L.append("")
    L.append("## Generation log")
    L.append("")
    L.append("```")
    L.extend(LOG)
    L.append("```")
    L.append("")
    L.append("## Licence and attribution")
    L.append("")
    L.append("- `stories260k/model/` is a format conversion of `stories260K.bin` from Andrej Karpathy's")
    L.append("  tinyllamas release (llama2.c), MIT licence, trained on TinyStories. Copied from the")
    L.append("  project's shared data (see its SOURCES.md: ytmytm/llama2.c64 mirror of the model).")
    L.append("- All other models, adapters and references are random weights generated by the script.")
    L.append("")
    # Other generators keep their sections after ours between <!-- BEGIN ... --> / <!-- END ... -->
    # markers: carry them over unchanged.
    path = FIXTURES / "README.md"
    others = ""
    if path.exists():
        old = path.read_text(encoding="utf-8")
        start = old.find("<!-- BEGIN ")
        if start >= 0:
            others = old[start:]
    path.write_text("\n".join(L) + others, encoding="utf-8")


# --------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="/work/shared/data", type=Path,
                    help="directory holding llama2c/stories260K.bin, tok512.vocab, greedy_from_bos.txt")
    args = ap.parse_args()

    args.data = args.data.resolve()
    os.chdir(REPO)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(0)
    transformers.set_seed(0)
    FIXTURES.mkdir(parents=True, exist_ok=True)
    log(" ".join(f"{k}={v}" for k, v in versions().items()))

    specs = [
        ("stories260k", LlamaForCausalLM, LlamaBiForMNTP, 100,
         "The real pretrained llama2.c `stories260K` (dim 64, hidden 172, 5 layers, 8 heads, 4 kv heads,"
         " vocab 512, seq_len 512) converted to `LlamaForCausalLM` (gate=w1, down=w2, up=w3; q/k rows"
         " permuted from llama2.c's interleaved RoPE pairs to HF's rotate_half layout). rms_norm_eps 1e-5,"
         " rope_theta 1e4, F32, tied embeddings. The script asserts that HF greedy decoding from BOS"
         " reproduces greedy_from_bos.txt."),
        ("mistral_tiny", MistralForCausalLM, MistralBiForMNTP, 200,
         "Random `MistralConfig`: vocab 256, hidden 64, intermediate 128, 2 layers, 4 heads, 2 kv heads"
         " (head_dim 16), rms_norm_eps 1e-5, rope_theta 1e4, sliding_window 4096 (inactive at T=12),"
         " untied lm_head; stored as BF16."),
        ("qwen2_tiny", Qwen2ForCausalLM, Qwen2BiForMNTP, 300,
         "Random `Qwen2Config`: vocab 256, hidden 64, intermediate 96, 2 layers, 4 heads, 1 kv head"
         " (head_dim 16, GQA 4), q/k/v biases N(0, 0.2^2), rms_norm_eps 1e-6, rope_theta 1e6, tied"
         " embeddings; stored as F16 and sharded (model-0000i-of-0000N.safetensors +"
         " model.safetensors.index.json)."),
        ("llama3_tiny", LlamaForCausalLM, LlamaBiForMNTP, 400,
         "Random `LlamaConfig` with Llama-3.1 rope scaling (rope_type llama3, factor 8, low_freq_factor"
         " 1, high_freq_factor 4, original_max_position_embeddings 256), rope_theta 5e5, vocab 256,"
         " hidden 64, intermediate 128, 2 layers, 8 heads, 2 kv heads (head_dim 8), untied, F32."
         " Its 4 RoPE frequencies fall in all three llama3 regimes (see the generation log)."),
    ]

    results = {}
    for name, causal_cls, bidir_cls, seed, desc in specs:
        log(f"== {name}")
        gen = torch.Generator().manual_seed(seed)
        d = FIXTURES / name
        d.mkdir(parents=True, exist_ok=True)
        model_dir, adapter_dir, inner_dir = d / "model", d / "adapter", d / "adapter_inner"
        if name == "stories260k":
            build_stories260k(args.data, model_dir)
            check_stories_greedy(args.data, model_dir)
        else:
            build_random(name, model_dir, gen)
        if name == "llama3_tiny":
            cfg = LlamaConfig.from_pretrained(model_dir)
            _, scaled, _, _, _ = llama3_expected_inv_freq(cfg)
        ref, info = build_reference(name, model_dir, adapter_dir, inner_dir, causal_cls, bidir_cls, gen)
        if name == "llama3_tiny":
            assert np.allclose(ref["rope.inv_freq"].double().numpy(), scaled, rtol=1e-6, atol=0), \
                (ref["rope.inv_freq"], scaled)
        for k, v in info.items():
            log(f"  {k}: {v}")
        results[name] = (ref, info, desc)

    log("== adamw")
    adamw = build_adamw(FIXTURES / "adamw.safetensors")
    write_readme(results, adamw)
    print("done")


if __name__ == "__main__":
    main()
