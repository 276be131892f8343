#!/usr/bin/env python3
"""PyTorch's scaled_dot_product_attention on the shapes of bench/bench_attention.cu, so that
scripts/gpu_check.sh can put our kernels' figures next to a peer measured in the same run.

Shapes: 16384 tokens per step as B = 16384 / T sequences of T = 128, 512, 2048, 32 query heads, 8 kv
heads (GQA), head dim 128, bf16, bidirectional, attention dropout 0 and 0.3; forward and backward (dq, dk,
dv), each with the flash and the cuDNN backend (torch.nn.attention.sdpa_kernel). Timing as in
bench/gpu_bench.h: CUDA events, one warm-up, the median of 7 runs, each after writing twice the L2 size;
the same FLOP convention (forward 4 B H T^2 D, backward 2.5 times that) and minimum bytes. Output: the
same result lines, impl=torch_flash or torch_cudnn; a backend that refuses a case (cuDNN and dropout,
say) prints "skip ... reason" instead.

GQA goes through enable_gqa=True where this PyTorch has it (2.5 and later), otherwise the kv heads are
repeated to 32 before timing (the extra copy is not timed; the kernels then read 4x the K/V bytes).
Without PyTorch or a GPU it says so and exits 0.
    usage: python3 scripts/bench_sdpa.py
"""
import sys

TOKENS, H, KV, D = 16384, 32, 8, 128
PEAK_TFLOPS = 989.0


def main():
    try:
        import torch
        import torch.nn.functional as F
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError as e:
        print(f"bench_sdpa: PyTorch (with torch.nn.attention) is not importable ({e}): nothing measured")
        return 0
    if not torch.cuda.is_available():
        print("bench_sdpa: PyTorch sees no CUDA GPU: nothing measured")
        return 0
    props = torch.cuda.get_device_properties(0)
    print(f"bench_sdpa: torch {torch.__version__}, {props.name}")
    l2_bytes = getattr(props, "L2_cache_size", 50 * 1024 * 1024)
    flush = torch.empty(2 * l2_bytes, dtype=torch.uint8, device="cuda")

    def median_ms(fn, reps=7):
        fn()
        torch.cuda.synchronize()
        times = []
        for r in range(reps):
            flush.fill_(r & 0xFF)
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop))
        return sorted(times)[len(times) // 2]

    def report(fields, flops, nbytes, ms):
        tflops = flops / (ms * 1e-3) / 1e12
        print(f"{fields} ms={ms:.3f} tflops={tflops:.1f} peak_pct={100 * tflops / PEAK_TFLOPS:.1f} "
              f"gbps={nbytes / (ms * 1e-3) / 1e9:.0f}", flush=True)

    try:  # enable_gqa=True from PyTorch 2.5 on
        x = torch.zeros(1, 2, 1, 8, device="cuda")
        F.scaled_dot_product_attention(x, x[:, :1], x[:, :1], enable_gqa=True)
        gqa = {"enable_gqa": True}
    except TypeError:
        gqa = {}
    backends = {"torch_flash": SDPBackend.FLASH_ATTENTION, "torch_cudnn": SDPBackend.CUDNN_ATTENTION}
    gen = torch.Generator(device="cuda").manual_seed(1234)
    for T in (128, 512, 2048):
        B = TOKENS // T
        # (B, T, heads, D) as the backend stores them, viewed as SDPA's (B, heads, T, D).
        q = (torch.rand(B, T, H, D, device="cuda", generator=gen) * 2 - 1).bfloat16().transpose(1, 2)
        k = (torch.rand(B, T, KV, D, device="cuda", generator=gen) * 2 - 1).bfloat16().transpose(1, 2)
        v = (torch.rand(B, T, KV, D, device="cuda", generator=gen) * 2 - 1).bfloat16().transpose(1, 2)
        dout = (torch.rand(B, T, H, D, device="cuda", generator=gen) * 2 - 1).bfloat16().transpose(1, 2)
        fwd_flops = 4.0 * B * H * T * T * D
        q_bytes, kv_bytes, lse_bytes = 2.0 * TOKENS * H * D, 2.0 * TOKENS * KV * D, 4.0 * TOKENS * H
        for p in (0.0, 0.3):
            for impl, backend in backends.items():
                fields = f"bench=attention impl={impl} pass=%s shape=T{T}_B{B}_H{H}_KV{KV}_D{D} dropout={p:.1f}"
                rep = 1 if gqa else H // KV
                qq = q.detach().requires_grad_()
                kk, vv = (x.repeat_interleave(rep, 1).detach().requires_grad_() for x in (k, v))

                def attend():
                    return F.scaled_dot_product_attention(qq, kk, vv, dropout_p=p, **gqa)

                try:
                    with sdpa_kernel(backend):
                        out = attend()
                        report(fields % "fwd", fwd_flops, 2 * q_bytes + 2 * kv_bytes + lse_bytes, median_ms(attend))

                        def backward():
                            torch.autograd.grad(out, (qq, kk, vv), dout, retain_graph=True)

                        report(fields % "bwd", 2.5 * fwd_flops, 4 * q_bytes + 4 * kv_bytes + lse_bytes,
                               median_ms(backward))
                except RuntimeError as e:
                    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                    print(f"skip {fields % 'fwd+bwd'}: {reason}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
