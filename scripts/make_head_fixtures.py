#!/usr/bin/env python3
"""Generate the pooling / contrastive-loss / latent-attention reference fixtures under test/fixtures/heads/.

Run by hand (CI never installs torch), from the repository root:

    python3 -m venv scripts/.venv && scripts/.venv/bin/pip install -r scripts/requirements.txt
    scripts/.venv/bin/python scripts/make_head_fixtures.py

Every reference is computed on the CPU in float64 (one thread, fixed seeds) from inputs that are first
rounded to float32, and stored as float32 (token tensors int64), so the C++ code sees exactly the inputs
the reference used. A second run rewrites byte-identical files.

What it writes (test/fixtures/heads/ is deleted and recreated first):

pooling.safetensors: llm2vec 0.2.3's own LLM2Vec.get_pooling (skip_instruction=True, left padding).
  input_ids, attention_mask, embed_mask [B,T] int64; bos_id, eos_id [1] int64; hidden [B,T,C].
  <mode>.pooled [B,C] and <mode>.weights [B,T] for mode in mean, weighted_mean, eos_token, last_token,
  bos_token. The weights are get_pooling applied to one-hot hidden states (hidden[b,t] = e_t), i.e.
  the coefficient get_pooling gives each position.

losses.safetensors: llm2vec 0.2.3's llm2vec.loss.HardNegativeNLLLoss and torch autograd.
  queries, positives, negatives [N,D]; for case in simcse, supervised, no_in_batch:
  <case>.scale [1], <case>.loss [1], <case>.d_queries, <case>.d_positives [N,D] and (supervised,
  no_in_batch) <case>.d_negatives [N,D].

latent_attention_<cfg>.safetensors for two configurations: NV-Embed's latent-attention block as
  written below (the structure of NVIDIA's modeling_nvembed.py, parameter names of the released
  checkpoint), random parameters. config [6] int64 = (num_latents, heads, dim_head, mult, C, M);
  x, g, z, grad.x [M,C]; every parameter under its checkpoint name (latent_attention_model.*) and its
  gradient under grad.<name>, where the gradients are of sum(z * g).

test/fixtures/README.md: the section between this script's markers is replaced (or appended).
"""

import importlib.metadata
import json
import math
import platform
import shutil
import types
from pathlib import Path

import numpy as np
import safetensors
import safetensors.torch
import torch
import torch.nn.functional as F

import llm2vec
from llm2vec.loss.HardNegativeNLLLoss import HardNegativeNLLLoss

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "test" / "fixtures"
OUT = FIXTURES / "heads"
README = FIXTURES / "README.md"
BEGIN = "<!-- BEGIN scripts/make_head_fixtures.py -->"
END = "<!-- END scripts/make_head_fixtures.py -->"
METADATA = {"generator": "scripts/make_head_fixtures.py"}  # one key: the map is serialised in hash order

LOG = []


def log(msg=""):
    print(msg)
    LOG.append(msg)


def f32(t):
    """Round to float32 and back to float64: the values the C++ side reads."""
    return t.to(torch.float32).to(torch.float64)


def save(tensors, name):
    out = {}
    for k, v in tensors.items():
        v = v.detach()
        if v.is_floating_point():
            v = v.to(torch.float32)
        assert v.dtype in (torch.float32, torch.int64), (k, v.dtype)
        out[k] = v.contiguous()
    safetensors.torch.save_file(out, OUT / name, metadata=METADATA)
    return out


# --------------------------------------------------------------------------------------------
# pooling
# --------------------------------------------------------------------------------------------

POOL_MODES = ["mean", "weighted_mean", "eos_token", "last_token", "bos_token"]


def build_pooling(gen):
    B, T, C = 5, 9, 6
    PAD, BOS, EOS = 0, 1, 2
    lengths = [9, 7, 4, 6, 3]      # real tokens per row (left padding before them); row 0 unpadded
    skipped = [1, 3, 1, 2, 2]      # leading real tokens not pooled: the BOS, plus instruction tokens
    input_ids = torch.full((B, T), PAD, dtype=torch.int64)
    attention_mask = torch.zeros((B, T), dtype=torch.int64)
    embed_mask = torch.zeros((B, T), dtype=torch.int64)
    for b, (n, s) in enumerate(zip(lengths, skipped)):
        assert 1 <= s < n
        row = torch.randint(3, 50, (n,), generator=gen)
        row[0], row[-1] = BOS, EOS
        input_ids[b, T - n:] = row
        attention_mask[b, T - n:] = 1
        embed_mask[b, T - n + s:] = 1
    hidden = f32(torch.randn(B, T, C, generator=gen, dtype=torch.float64))

    # llm2vec needs a model (only its .config is read) and a tokenizer (padding_side, bos_token_id).
    model = torch.nn.Identity()
    model.config = None
    tokenizer = types.SimpleNamespace(padding_side="left", bos_token_id=BOS)
    out = {"input_ids": input_ids, "attention_mask": attention_mask, "embed_mask": embed_mask,
           "bos_id": torch.tensor([BOS]), "eos_id": torch.tensor([EOS]), "hidden": hidden}
    onehot = torch.eye(T, dtype=torch.float64).expand(B, T, T).contiguous()
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # weighted_mean builds its weights with the default dtype
    try:
        for mode in POOL_MODES:
            l2v = llm2vec.LLM2Vec(model=model, tokenizer=tokenizer, pooling_mode=mode, skip_instruction=True)

            def features():  # get_pooling overwrites attention_mask with embed_mask: fresh copies
                return {"input_ids": input_ids.clone(), "attention_mask": attention_mask.clone(),
                        "embed_mask": embed_mask.clone()}

            pooled = l2v.get_pooling(features(), hidden)
            weights = l2v.get_pooling(features(), onehot)
            assert pooled.shape == (B, C) and weights.shape == (B, T), (mode, pooled.shape, weights.shape)
            assert pooled.dtype == torch.float64 and weights.dtype == torch.float64
            err = (torch.einsum("bt,btc->bc", weights, hidden) - pooled).abs().max().item()
            assert err < 1e-12, (mode, err)
            assert (weights[attention_mask == 0] == 0).all(), mode
            out[f"{mode}.pooled"] = pooled
            out[f"{mode}.weights"] = weights
            log(f"pooling {mode}: positions per row {[(w != 0).sum().item() for w in weights]}")
    finally:
        torch.set_default_dtype(prev)
    return save(out, "pooling.safetensors")


# --------------------------------------------------------------------------------------------
# contrastive losses
# --------------------------------------------------------------------------------------------

def no_in_batch_loss(q, dpos, dneg, scale):
    """Query i against its own positive (target 0) and its own hard negative only. llm2vec has no such
    option; this is plain torch with the same cosine similarity."""
    qn, pn, nn_ = (F.normalize(t, p=2, dim=1) for t in (q, dpos, dneg))
    scores = torch.stack([(qn * pn).sum(1), (qn * nn_).sum(1)], dim=1) * scale
    return F.cross_entropy(scores, torch.zeros(len(q), dtype=torch.long))


def build_losses(gen):
    N, D = 6, 8
    # A shared direction makes the in-batch negatives compete; positives near their query, hard
    # negatives a bit farther. Losses of order 1 (no saturated softmax).
    base = torch.randn(1, D, generator=gen, dtype=torch.float64)
    q = f32(2.0 * base + torch.randn(N, D, generator=gen, dtype=torch.float64))
    pos = f32(q + 0.8 * torch.randn(N, D, generator=gen, dtype=torch.float64))
    neg = f32(q + 1.0 * torch.randn(N, D, generator=gen, dtype=torch.float64))
    out = {"queries": q, "positives": pos, "negatives": neg}
    cases = [
        ("simcse", 20.0, False, lambda a, b, c: HardNegativeNLLLoss(scale=20.0)(a, b)),
        ("supervised", 50.0, True, lambda a, b, c: HardNegativeNLLLoss(scale=50.0)(a, b, c)),
        ("no_in_batch", 50.0, True, lambda a, b, c: no_in_batch_loss(a, b, c, 50.0)),
    ]
    for name, scale, with_neg, fn in cases:
        a, b, c = (t.clone().requires_grad_(True) for t in (q, pos, neg))
        loss = fn(a, b, c)
        loss.backward()
        out[f"{name}.scale"] = torch.tensor([scale], dtype=torch.float64)
        out[f"{name}.loss"] = loss.detach().reshape(1)
        out[f"{name}.d_queries"] = a.grad
        out[f"{name}.d_positives"] = b.grad
        if with_neg:
            out[f"{name}.d_negatives"] = c.grad
        else:
            assert c.grad is None
        log(f"loss {name}: scale {scale:g} loss {loss.item():.9g}")
    return save(out, "losses.safetensors")


# --------------------------------------------------------------------------------------------
# latent attention (NV-Embed)
# --------------------------------------------------------------------------------------------

class PreNorm(torch.nn.Module):
    def __init__(self, dim, fn, context_dim=None):
        super().__init__()
        self.fn = fn
        self.norm = torch.nn.LayerNorm(dim)
        self.norm_context = torch.nn.LayerNorm(context_dim) if context_dim is not None else None

    def forward(self, x, context=None):
        x = self.norm(x)
        if self.norm_context is not None:
            return self.fn(x, context=self.norm_context(context))
        return self.fn(x)


class GEGLU(torch.nn.Module):
    def forward(self, x):
        x, gates = x.chunk(2, dim=-1)
        return x * F.gelu(gates)  # exact (erf) GELU, torch's default


class FeedForward(torch.nn.Module):
    def __init__(self, dim, mult):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(dim, dim * mult * 2), GEGLU(),
                                       torch.nn.Linear(dim * mult, dim))

    def forward(self, x):
        return self.net(x)


class Attention(torch.nn.Module):
    def __init__(self, query_dim, context_dim, heads, dim_head):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = torch.nn.Linear(query_dim, inner, bias=False)
        self.to_kv = torch.nn.Linear(context_dim, inner * 2, bias=False)
        self.to_out = torch.nn.Linear(inner, query_dim, bias=False)

    def forward(self, x, context):
        h = self.heads
        q = self.to_q(x)
        k, v = self.to_kv(context).chunk(2, dim=-1)

        def split(t):  # einops 'b n (h d) -> b h n d'
            b, n, hd = t.shape
            return t.reshape(b, n, h, hd // h).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(q), split(k), split(v))  # scale 1/sqrt(d), no mask
        b, _, n, d = out.shape
        return self.to_out(out.transpose(1, 2).reshape(b, n, h * d))


class LatentAttentionModel(torch.nn.Module):
    def __init__(self, C, num_latents, heads, dim_head, mult):
        super().__init__()
        self.cross_attend_blocks = torch.nn.ModuleList([
            PreNorm(C, Attention(C, C, heads, dim_head), context_dim=C),
            PreNorm(C, FeedForward(C, mult)),
        ])
        self.latents = torch.nn.Parameter(torch.randn(num_latents, C))

    def forward(self, hiddens):  # [b, n, C]; NV-Embed's forward before its masked mean
        cross_attn, cross_ff = self.cross_attend_blocks
        x = self.latents.unsqueeze(0).expand(hiddens.shape[0], -1, -1)
        hiddens = cross_attn(hiddens, context=x) + hiddens
        return cross_ff(hiddens) + hiddens


class Wrapper(torch.nn.Module):  # state_dict names as in the NV-Embed checkpoint
    def __init__(self, **kw):
        super().__init__()
        self.latent_attention_model = LatentAttentionModel(**kw)


LATENT_CONFIGS = [
    # name, C, num_latents, heads, dim_head (0: C), mult, batch b, tokens n (M = b * n)
    ("a", 16, 6, 3, 8, 4, 2, 5),
    ("b", 12, 5, 3, 0, 2, 2, 4),
]


def build_latent(gen, name, C, r, heads, dim_head, mult, nb, nt):
    D = dim_head if dim_head > 0 else C
    M = nb * nt
    mod = Wrapper(C=C, num_latents=r, heads=heads, dim_head=D, mult=mult).to(torch.float64)
    with torch.no_grad():
        for pname, p in mod.named_parameters():
            if pname.endswith("latents"):
                val = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            elif ".norm" in pname and pname.endswith(".weight"):
                val = 1.0 + 0.3 * torch.randn(p.shape, generator=gen, dtype=torch.float64)
            elif pname.endswith(".bias"):
                val = 0.3 * torch.randn(p.shape, generator=gen, dtype=torch.float64)
            else:  # a Linear weight [out, in]; to_q doubled so the softmax over the latents is peaked
                gain = 2.0 if pname.endswith("to_q.weight") else 1.0
                val = gain * torch.randn(p.shape, generator=gen, dtype=torch.float64) / math.sqrt(p.shape[1])
            p.copy_(f32(val))
    # Rows with their own offset and scale, so the LayerNorm statistics matter.
    x = torch.randn(M, C, generator=gen, dtype=torch.float64)
    x = x * (0.5 + torch.rand(M, 1, generator=gen, dtype=torch.float64) * 2.0) \
        + torch.randn(M, 1, generator=gen, dtype=torch.float64)
    x = f32(x).requires_grad_(True)
    g = f32(torch.randn(M, C, generator=gen, dtype=torch.float64))
    z = mod.latent_attention_model(x.reshape(nb, nt, C)).reshape(M, C)
    (z * g).sum().backward()
    # Rows are independent: the same rows as one batch of one token each give the same z.
    z1 = mod.latent_attention_model(x.detach().reshape(M, 1, C)).reshape(M, C)
    assert (z1 - z).abs().max().item() < 1e-12
    out = {"config": torch.tensor([r, heads, dim_head, mult, C, M], dtype=torch.int64),
           "x": x, "g": g, "z": z, "grad.x": x.grad}
    for pname, p in mod.named_parameters():
        out[pname] = p
        out[f"grad.{pname}"] = p.grad
    sd = mod.state_dict()
    assert sorted(sd) == sorted(n for n, _ in mod.named_parameters())
    log(f"latent_attention_{name}: C={C} r={r} heads={heads} dim_head={dim_head} (D={D}) mult={mult} "
        f"M={M} (as [{nb}, {nt}, C]); max|z|={z.abs().max().item():.4g} "
        f"max|grad.x|={x.grad.abs().max().item():.4g}")
    return save(out, f"latent_attention_{name}.safetensors")


# --------------------------------------------------------------------------------------------
# README
# --------------------------------------------------------------------------------------------

def versions():
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "llm2vec": importlib.metadata.version("llm2vec"),
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
    }


def table(tensors):
    w = max(len(k) for k in tensors)
    return [f"  {k:<{w}s}  {str(v.dtype).replace('torch.', ''):<8s} {list(v.shape)}" for k, v in sorted(tensors.items())]


def write_readme(files):
    L = [BEGIN, "## heads/ (scripts/make_head_fixtures.py)", ""]
    L += [
        "Written by `scripts/make_head_fixtures.py` (not by make_hf_fixtures.py; this section is replaced",
        "by that script between its markers). References for the embedding heads: llm2vec's pooling",
        "modes, llm2vec's contrastive loss and NV-Embed's latent-attention block. Every reference is",
        "computed in float64 on the CPU (one thread, fixed seeds) from inputs first rounded to float32,",
        "and stored as float32 (token tensors int64): the C++ side reads exactly the inputs used. A second",
        "run rewrites byte-identical files. Versions:",
        ", ".join(f"{k} {v}" for k, v in versions().items()) + ".",
        "",
        "- `pooling.safetensors`: `llm2vec.LLM2Vec(...).get_pooling(features, hidden)` of llm2vec 0.2.3",
        "  (skip_instruction=True, so the embed_mask replaces the attention_mask; left padding) for the",
        "  modes mean, weighted_mean, eos_token, last_token, bos_token. Inputs: 5 rows of T=9 with 9, 7,",
        "  4, 6, 3 real tokens after left padding (pad id 0); each row's first real token is the BOS",
        "  (`bos_id` = 1) and its last the EOS (`eos_id` = 2), the rest random ids in [3, 50); the",
        "  `embed_mask` excludes the first 1, 3, 1, 2, 2 real tokens (the BOS plus instruction tokens);",
        "  `hidden` [5,9,6] random. `<mode>.pooled` [5,6] is get_pooling's output, `<mode>.weights` [5,9]",
        "  get_pooling applied to one-hot hidden states (hidden[b,t] = e_t): the coefficient of each",
        "  position (mean 1/n on the n embed_mask positions, weighted_mean k/(n(n+1)/2) on the k-th,",
        "  eos_token/last_token 1 on the last position, bos_token 1 where input_ids == bos_id).",
        "- `losses.safetensors`: `queries`, `positives`, `negatives` [6,8] (queries = 2 * a shared random",
        "  vector + N(0,1) noise, positives = query + 0.8 noise, negatives = query + 1.0 noise).",
        "  `simcse`: `llm2vec.loss.HardNegativeNLLLoss(scale=20)(q, d_pos)`;",
        "  `supervised`: `HardNegativeNLLLoss(scale=50)(q, d_pos, d_neg)` (in-batch negatives: every other",
        "  positive and every hard negative); `no_in_batch`: llm2vec has no such option, so it is plain",
        "  torch in this script: query i scored (cosine * 50) against its own positive and its own hard",
        "  negative only, cross-entropy with target 0, mean over the queries. Each case stores `.scale`,",
        "  `.loss` [1] and the autograd gradients `.d_queries`, `.d_positives` (and `.d_negatives`).",
        "- `latent_attention_a.safetensors`, `latent_attention_b.safetensors`: NV-Embed's latent-attention",
        "  block, re-written in the script after the structure of NVIDIA's `modeling_nvembed.py`:",
        "  `PreNorm(C, Attention(C, C, heads, dim_head), context_dim=C)` (LayerNorm `norm` on x,",
        "  `norm_context` on the latents; to_q, to_kv (chunked into k then v), to_out without bias;",
        "  `F.scaled_dot_product_attention`, heads split as einops 'b n (h d)'; residual) then",
        "  `PreNorm(C, FeedForward(C, mult))` (`net` = Linear(C, 2*mult*C), GEGLU = x * gelu_erf(gates)",
        "  of the two halves, Linear(mult*C, C); residual). Parameters are stored under the checkpoint's",
        "  names (`latent_attention_model.latents`, `latent_attention_model.cross_attend_blocks.*`), so",
        "  they load into that module as a state_dict. Random parameters: latents N(0,1), LayerNorm",
        "  weights 1 + N(0, 0.3^2), biases N(0, 0.3^2), Linear weights N(0, 1/in) (to_q doubled). `config`",
        "  = (num_latents, heads, dim_head, mult, C, M), dim_head 0 meaning C: a = (6, 3, 8, 4, 16, 10),",
        "  b = (5, 3, 0, 2, 12, 8). `x` [M,C] (rows with their own offset and scale) is fed as [2, M/2, C];",
        "  `z` is the block's output, `g` a random [M,C], and `grad.x`, `grad.<parameter name>` the",
        "  autograd gradients of sum(z * g). The script asserts that feeding the rows as [M, 1, C] gives",
        "  the same z (the rows are independent).",
        "",
        "Generation log:",
        "",
        "```",
    ]
    L += LOG
    L += ["```", ""]
    for name, tensors in files:
        L += [f"`heads/{name}`:", "", "```"] + table(tensors) + ["```", ""]
    L.append(END)
    section = "\n".join(L)

    text = README.read_text(encoding="utf-8") if README.exists() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    README.write_text(text, encoding="utf-8")


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(0)
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    files = [("pooling.safetensors", build_pooling(torch.Generator().manual_seed(501)))]
    files.append(("losses.safetensors", build_losses(torch.Generator().manual_seed(502))))
    for i, (name, *cfg) in enumerate(LATENT_CONFIGS):
        files.append((f"latent_attention_{name}.safetensors",
                      build_latent(torch.Generator().manual_seed(503 + i), name, *cfg)))
    write_readme(files)
    print(json.dumps({n: len(t) for n, t in files}))


if __name__ == "__main__":
    main()
