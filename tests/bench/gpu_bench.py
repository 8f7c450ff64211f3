#!/opt/torch/.venv/bin/python3
"""GPU benchmark: ouroboros training steps against PyTorch on the same GPU.

GPT-2 124M (12 layers, 12 heads, width 768, context 1024, vocabulary 50304:
GPT-2's 50257 padded to a multiple of 128), a batch of --batch sequences of
1024 tokens (default 16), synthetic random tokens. Rows of the table:
  - `ouroboros train device=cuda` for --steps steps on an llm.c .bin shard
    of those tokens; tokens/s from <out>/metrics.jsonl, leaving out the
    first --warmup steps;
  - the same model in PyTorch (written below: tied wte, pre-LN, tanh GELU,
    F.scaled_dot_product_attention(is_causal=True)), bf16 autocast, fused
    AdamW, timed with CUDA events after --warmup steps, eager and under
    torch.compile.
MFU = tokens/s * FLOPs/token / peak, FLOPs/token = 6*(12*L*C^2 + V*C) +
12*L*C*T (src/model.c model_train_flops_per_token), peak from
--peak-tflops (default 989: H100 SXM, dense bf16).
Then `ouroboros profile device=cuda` times each module of a --profile-ranks
pipeline on one micro-batch.

Run with the Python that has torch (only torch and the standard library):
  /opt/torch/.venv/bin/python3 tests/bench/gpu_bench.py [--batch 16] [--steps 30]
      [--exe build/src/ouroboros] [--peak-tflops 989] [key=value ...]
Trailing key=value arguments go to `ouroboros train` (e.g. precision=fp32).
"""
import argparse
import array
import json
import math
import os
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

L, H, C, T = 12, 12, 768, 1024
VOCAB = 50304       # the model's vocabulary: 50257 padded to a multiple of 128
DATA_VOCAB = 50257  # tokens drawn from GPT-2's real vocabulary
BIN_MAGIC, BIN_VERSION, BIN_HEADER_INTS = 20240520, 1, 256


def flops_per_token(n_layer=L, n_embd=C, block=T, vocab=VOCAB):
    """model_train_flops_per_token of src/model.c: 6 * matmul parameters
    (12*L*C^2 in the blocks, V*C in the tied head) + attention 12*L*C*T."""
    return 6 * (n_layer * 12 * n_embd * n_embd + vocab * n_embd) + 12 * n_layer * n_embd * block


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------- data

def write_shard(path, n_tokens, seed):
    """An llm.c token shard (src/data.c): 256 little-endian int32 (magic,
    version, token count, zeros), then the tokens as little-endian uint16."""
    rng = random.Random(seed)
    header = array.array("i", [0] * BIN_HEADER_INTS)
    header[0], header[1], header[2] = BIN_MAGIC, BIN_VERSION, n_tokens
    tokens = array.array("H", (rng.randrange(DATA_VOCAB) for _ in range(n_tokens)))
    if sys.byteorder != "little":
        header.byteswap()
        tokens.byteswap()
    with open(path, "wb") as f:
        header.tofile(f)
        tokens.tofile(f)


# --------------------------------------------------------------- ouroboros

def model_keys(batch):
    return [f"n_layer={L}", f"n_head={H}", f"n_embd={C}", f"block_size={T}",
            f"vocab_size={VOCAB}", f"batch_size={batch}"]


def run(cmd):
    log("+ " + " ".join(shlex.quote(c) for c in cmd))
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       errors="replace")
    if r.returncode != 0:
        raise RuntimeError(f"exit {r.returncode}: {' '.join(cmd[:2])}\n{r.stdout[-3000:]}")
    return r.stdout


def ouroboros_rate(exe, tmp, shard, a):
    """tokens/s of `ouroboros train` over the steps after the warm-up: the
    tokens of those steps over the time between their progress records."""
    out = os.path.join(tmp, "ouroboros-run")
    run([exe, "train", "device=cuda", f"data={shard}", "data_format=bin",
         *model_keys(a.batch), f"steps={a.steps}", "log_every=1", "eval_every=0",
         "eval_batches=1", "sample_tokens=0", "warmup=0", "lr=6e-4", "seed=1337",
         f"out={out}", *a.keys])
    with open(os.path.join(out, "metrics.jsonl")) as f:
        recs = [json.loads(line) for line in f if line.strip()]
    recs = sorted((r for r in recs if "train_loss" in r and "elapsed_s" in r),
                  key=lambda r: r["step"])
    # the record of step s is written when step s is done
    first = next((r for r in recs if r["step"] >= a.warmup), None)
    last = recs[-1] if recs else None
    if first is None or last is None or last["step"] <= first["step"]:
        raise RuntimeError(f"{out}/metrics.jsonl: no steps after the {a.warmup} warm-up "
                           f"steps; use more --steps")
    steps = last["step"] - first["step"]
    return steps * a.batch * T / (last["elapsed_s"] - first["elapsed_s"])


def ouroboros_profile(exe, a):
    """The table of `ouroboros profile`: (header line, module rows, other lines)."""
    text = run([exe, "profile", "device=cuda", *model_keys(a.batch), "schedule=ouroboros",
                f"ranks={a.profile_ranks}", *a.keys])
    rows, other = [], []
    for line in text.splitlines():
        f = line.split()
        if len(f) == 10 and f[0].isdigit():
            rows.append(f)
        elif line.startswith(("rank ", "imbalance:", "profile:", "partition", "peak ")):
            other.append(line)
    return rows, other


# --------------------------------------------------------------- PyTorch

def torch_model():
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1 = nn.LayerNorm(C, eps=1e-5)
            self.c_attn = nn.Linear(C, 3 * C)
            self.attn_proj = nn.Linear(C, C)
            self.ln_2 = nn.LayerNorm(C, eps=1e-5)
            self.c_fc = nn.Linear(C, 4 * C)
            self.mlp_proj = nn.Linear(4 * C, C)

        def forward(self, x):
            B, Tt, _ = x.shape
            q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
            q, k, v = (z.view(B, Tt, H, C // H).transpose(1, 2) for z in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.attn_proj(y.transpose(1, 2).contiguous().view(B, Tt, C))
            h = F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh")
            return x + self.mlp_proj(h)

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(VOCAB, C)
            self.wpe = nn.Embedding(T, C)
            self.h = nn.ModuleList(Block() for _ in range(L))
            self.ln_f = nn.LayerNorm(C, eps=1e-5)
            for name, p in self.named_parameters():  # GPT-2's initialisation
                if name.endswith("bias"):
                    nn.init.zeros_(p)
                elif "ln" in name:
                    nn.init.ones_(p)
                elif name.endswith("proj.weight"):
                    nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * L))
                else:
                    nn.init.normal_(p, 0.0, 0.02)

        def forward(self, idx, targets):
            pos = torch.arange(idx.shape[1], device=idx.device)
            x = self.wte(idx) + self.wpe(pos)
            for blk in self.h:
                x = blk(x)
            logits = F.linear(self.ln_f(x), self.wte.weight)  # tied projection
            return F.cross_entropy(logits.view(-1, VOCAB).float(), targets.view(-1))

    return GPT()


def torch_rate(a, compiled):
    """tokens/s of full training steps (forward, backward, AdamW) under bf16
    autocast, timed with CUDA events over a.steps - a.warmup steps."""
    import torch
    torch.manual_seed(1337)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    dev = torch.device("cuda")
    model = torch_model().to(dev)
    decay = [p for p in model.parameters() if p.dim() == 2]
    other = [p for p in model.parameters() if p.dim() != 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}]
    try:
        opt = torch.optim.AdamW(groups, lr=6e-4, betas=(0.9, 0.95), eps=1e-8, fused=True)
    except (TypeError, RuntimeError) as e:
        raise RuntimeError(f"fused AdamW is not available in torch {torch.__version__}: {e}")
    step_model = torch.compile(model) if compiled else model
    gen = torch.Generator(device="cpu").manual_seed(1337)
    data = torch.randint(0, DATA_VOCAB, (a.batch, T + 1), generator=gen).to(dev)
    x, y = data[:, :-1].contiguous(), data[:, 1:].contiguous()

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            loss = step_model(x, y)
        loss.backward()
        opt.step()

    for _ in range(a.warmup):  # includes the compilation
        step()
    torch.cuda.synchronize()
    timed = a.steps - a.warmup
    start = [torch.cuda.Event(enable_timing=True) for _ in range(timed)]
    end = [torch.cuda.Event(enable_timing=True) for _ in range(timed)]
    for i in range(timed):
        start[i].record()
        step()
        end[i].record()
    torch.cuda.synchronize()
    ms = sum(s.elapsed_time(e) for s, e in zip(start, end))
    del model, step_model, opt
    torch.cuda.empty_cache()
    return timed * a.batch * T / (ms / 1e3)


# --------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--exe", default=os.path.join(ROOT, "build", "src", "ouroboros"))
    ap.add_argument("--batch", type=int, default=16, help="sequences of 1024 tokens per step")
    ap.add_argument("--steps", type=int, default=30, help="training steps per run")
    ap.add_argument("--warmup", type=int, default=5, help="first steps left out of the timing")
    ap.add_argument("--peak-tflops", type=float, default=989.0,
                    help="the GPU's peak for MFU (989: H100 SXM dense bf16)")
    ap.add_argument("--shard-tokens", type=int, default=1 << 21,
                    help="tokens in the synthetic .bin shard")
    ap.add_argument("--profile-ranks", type=int, default=2,
                    help="ranks of the pipeline that `ouroboros profile` times")
    ap.add_argument("--skip", default="",
                    help="comma-separated parts to leave out: ouroboros,eager,compile,profile")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    ap.add_argument("keys", nargs="*", help="key=value for ouroboros train and profile")
    a = ap.parse_args()
    if a.steps <= a.warmup:
        ap.error(f"--steps {a.steps} must exceed --warmup {a.warmup}")
    if any("=" not in k for k in a.keys):
        ap.error("trailing arguments must be key=value settings of ouroboros")
    skip = set(filter(None, a.skip.split(",")))

    import torch
    if not torch.cuda.is_available():
        sys.exit("gpu_bench: torch sees no CUDA GPU")
    gpu = torch.cuda.get_device_name(0)
    fpt = flops_per_token()
    peak = a.peak_tflops * 1e12

    tmp = tempfile.mkdtemp(prefix="ouro-gpu-bench-")
    rows = []  # (impl, tokens/s or None, note)

    def measure(name, fn):
        log(f"--- {name}")
        t0 = time.time()
        try:
            rows.append((name, fn(), ""))
        except Exception as e:  # one failed part must not hide the others
            rows.append((name, None, str(e).splitlines()[0]))
            log(str(e))
        log(f"    ({time.time() - t0:.0f} s)")

    prec = next((k.split("=", 1)[1] for k in a.keys if k.startswith("precision=")), "auto")
    if "ouroboros" not in skip:
        if not os.access(a.exe, os.X_OK):
            sys.exit(f"gpu_bench: no program {a.exe}; build it or pass --exe")
        shard = os.path.join(tmp, "tokens.bin")
        log(f"writing {a.shard_tokens} random tokens to {shard}")
        write_shard(shard, a.shard_tokens, 1337)
        measure(f"ouroboros (precision={prec})", lambda: ouroboros_rate(a.exe, tmp, shard, a))
    if "eager" not in skip:
        measure("pytorch eager (bf16 autocast)", lambda: torch_rate(a, False))
    if "compile" not in skip:
        measure("pytorch torch.compile (bf16)", lambda: torch_rate(a, True))
    prof_rows, prof_other = [], []
    if "profile" not in skip and os.access(a.exe, os.X_OK):
        log("--- ouroboros profile")
        try:
            prof_rows, prof_other = ouroboros_profile(a.exe, a)
        except Exception as e:
            prof_other = [f"profile failed: {str(e).splitlines()[0]}"]
            log(str(e))

    print(f"GPU: {gpu}; torch {torch.__version__}; GPT-2 124M (L={L} H={H} C={C} T={T} "
          f"V={VOCAB}), batch {a.batch} x {T} tokens, {a.steps} steps, first {a.warmup} "
          f"left out")
    print(f"FLOPs/token = 6*(12*L*C^2 + V*C) + 12*L*C*T = {fpt / 1e6:.1f} M; "
          f"peak {a.peak_tflops:g} TFLOP/s")
    print()
    print(f"{'impl':<34} {'tokens/s':>12} {'ms/step':>10} {'MFU%':>7}")
    for name, rate, note in rows:
        if rate is None:
            print(f"{name:<34} {'failed':>12}  {note}")
            continue
        ms = 1e3 * a.batch * T / rate
        print(f"{name:<34} {rate:>12.0f} {ms:>10.2f} {100 * rate * fpt / peak:>7.1f}")
    if prof_rows or prof_other:
        print()
        print(f"ouroboros profile: schedule=ouroboros, {a.profile_ranks} ranks, one micro-batch "
              f"per module (fwd + bwd, median of 5)")
        print(f"{'module':>6} {'rank':>4} {'blocks':>6} {'parts':<14} {'fwd_ms':>9} "
              f"{'bwd_ms':>9} {'total_ms':>9} {'GFLOP/s':>9} {'MFU%':>6}")
        for f in prof_rows:
            gflops = float(f[9])
            print(f"{f[0]:>6} {f[1]:>4} {f[2]:>6} {f[3]:<14} {float(f[5]):>9.3f} "
                  f"{float(f[6]):>9.3f} {float(f[7]):>9.3f} {gflops:>9.1f} "
                  f"{100 * gflops * 1e9 / peak:>6.1f}")
        for line in prof_other:
            print(line)
    if a.keep:
        print(f"kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
