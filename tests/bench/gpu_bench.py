#!/opt/torch/.venv/bin/python3
"""GPU benchmark: ouroboros training steps against PyTorch on the same GPU.

GPT-2 124M by default (12 layers, 12 heads, width 768, context 1024,
vocabulary 50304: GPT-2's 50257 padded to a multiple of 128), a batch of
--batch sequences (default 16), synthetic random tokens. Rows of the table:
  - `ouroboros train device=cuda` for --steps steps on an llm.c .bin shard
    of those tokens; tokens/s from <out>/metrics.jsonl (its "step" and
    "elapsed_s" fields, src/progress.c), leaving out the first --warmup
    steps;
  - the same model in PyTorch (written below: tied wte, learned wpe,
    pre-LN, biases in every LayerNorm and linear layer as GPT-2's Conv1D,
    tanh GELU, F.scaled_dot_product_attention(is_causal=True), final
    LayerNorm, mean cross-entropy), bf16 autocast, gradient clipping at 1.0
    and fused AdamW (lr 6e-4, betas 0.9/0.95, weight decay 0.1 on
    matrices: the settings ouroboros is given too), timed with CUDA events
    over the steps after --warmup, eager and under torch.compile.
MFU = tokens/s * FLOPs/token / peak, FLOPs/token = 6*(12*L*C^2 + V*C) +
12*L*C*T (src/model.c model_train_flops_per_token), peak from
--peak-tflops, by default from the GPU's name (989 for H100 SXM and H200,
dense bf16).
Then `ouroboros profile device=cuda` times each module of a --profile-ranks
pipeline on one micro-batch.

Every part runs on its own: one that fails (a crash, out of memory, a
torch.compile error, its time limit) gets its error in its row and the
others still run; the table comes last. Expected time on an H100 with the
defaults: about 3 minutes (ouroboros ~30 s with start-up and its final
checkpoint, PyTorch eager ~20 s, torch.compile ~1.5 min, the profile
~20 s); --budget (default 540 s) bounds the whole, --timeout each part.

Run with the Python that has torch (only torch and the standard library):
  /opt/torch/.venv/bin/python3 tests/bench/gpu_bench.py [--batch 16] [--steps 30]
      [--exe build/src/ouroboros] [--peak-tflops P] [--skip parts]
      [--attention simt,wmma,mma] [key=value ...]
--attention wmma,mma times the ouroboros row once per attention path.
Trailing key=value arguments go to `ouroboros train` and `profile` after
the benchmark's own (so they win), e.g. precision=fp32. --layers, --heads,
--width, --context and --vocab choose another model (a small one makes a
quick smoke run).
"""
import argparse
import array
import contextlib
import gc
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

DATA_VOCAB = 50257  # tokens drawn from GPT-2's real vocabulary (or the model's, if smaller)
BIN_MAGIC, BIN_VERSION, BIN_HEADER_INTS = 20240520, 1, 256

# Dense bf16 peaks (TFLOP/s) by a piece of the device name, most specific
# first: the default of --peak-tflops.
PEAKS = [("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0),
         ("GH200", 989.0), ("A100", 312.0), ("L40S", 362.0), ("A10G", 125.0), ("L4", 121.0)]


def flops_per_token(m):
    """model_train_flops_per_token of src/model.c: 6 * matmul parameters
    (12*L*C^2 in the blocks, V*C in the tied head) + attention 12*L*C*T."""
    L, C, T, V = m.layers, m.width, m.context, m.vocab
    return 6 * (12 * L * C * C + V * C) + 12 * L * C * T


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def first_line(e):
    """A one-line description of exception e for a table row."""
    text = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "")
    line = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return line if len(line) <= 150 else line[:147] + "..."


class PartTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds, what):
    """Raises PartTimeout in the main thread after `seconds` (SIGALRM): a
    hang in Python-level code (a compile waiting on its workers, a step
    loop) ends the part instead of the benchmark. A call stuck inside one
    CUDA call is only interrupted when it returns."""
    def on_alarm(signum, frame):
        raise PartTimeout(f"{what} passed its time limit of {seconds} s")
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(max(1, int(seconds)))
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# --------------------------------------------------------------- data

def write_shard(path, n_tokens, vocab, seed):
    """An llm.c token shard (src/data.c): 256 little-endian int32 (magic,
    version, token count, zeros), then the tokens as little-endian uint16."""
    rng = random.Random(seed)
    header = array.array("i", [0] * BIN_HEADER_INTS)
    header[0], header[1], header[2] = BIN_MAGIC, BIN_VERSION, n_tokens
    tokens = array.array("H", (rng.randrange(vocab) for _ in range(n_tokens)))
    if sys.byteorder != "little":
        header.byteswap()
        tokens.byteswap()
    with open(path, "wb") as f:
        header.tofile(f)
        tokens.tofile(f)


# --------------------------------------------------------------- ouroboros

def model_keys(m, batch):
    return [f"n_layer={m.layers}", f"n_head={m.heads}", f"n_embd={m.width}",
            f"block_size={m.context}", f"vocab_size={m.vocab}", f"batch_size={batch}"]


def run(cmd, seconds, log_path, env=None):
    """Runs cmd with its output in log_path, stopped after `seconds`, with
    the variables of `env` added to the environment; returns the output;
    raises with its last lines when it fails."""
    shown = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
    log("+ " + (shown + " " if shown else "") + " ".join(shlex.quote(c) for c in cmd))
    full_env = dict(os.environ, **env) if env else None
    with open(log_path, "w") as f:
        try:
            r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=seconds,
                               env=full_env)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{os.path.basename(cmd[0])} {cmd[1]} passed its time limit "
                               f"of {seconds:.0f} s (log: {log_path})")
    with open(log_path, errors="replace") as f:
        text = f.read()
    if r.returncode != 0:
        tail = text[-3000:]
        err = next((ln for ln in text.splitlines() if "error" in ln), None)
        log(tail)
        raise RuntimeError(f"exit {r.returncode}: {err or tail.strip().splitlines()[-1:]}")
    return text


def ouroboros_rate(exe, tmp, shard, a, seconds, attention=None):
    """tokens/s of `ouroboros train` over the steps after the warm-up: the
    tokens of those steps over the time between their progress records
    (the record of step s is written when step s is done, before any final
    evaluation or checkpoint). attention: the OURO_ATTENTION path to run
    (None: the program's default). Returns (tokens/s, note)."""
    m = a.model
    tag = f"-{attention}" if attention else ""
    out = os.path.join(tmp, "ouroboros-run" + tag)
    text = run([exe, "train", "device=cuda", f"data={shard}", "data_format=bin",
                *model_keys(m, a.batch), f"steps={a.steps}", "log_every=1", "eval_every=0",
                "eval_batches=1", "sample_tokens=0", "warmup=0", "lr=6e-4", "beta2=0.95",
                "weight_decay=0.1", "grad_clip=1.0", "seed=1337", f"out={out}", *a.keys],
               seconds, os.path.join(tmp, f"ouroboros-train{tag}.log"),
               env={"OURO_ATTENTION": attention} if attention else None)
    with open(os.path.join(out, "metrics.jsonl")) as f:
        recs = [json.loads(line) for line in f if line.strip()]
    recs = sorted((r for r in recs if "train_loss" in r and "elapsed_s" in r),
                  key=lambda r: r["step"])
    first = next((r for r in recs if r["step"] >= a.warmup), None)
    last = recs[-1] if recs else None
    if first is None or last is None or last["step"] <= first["step"]:
        raise RuntimeError(f"{out}/metrics.jsonl: no steps after the {a.warmup} warm-up "
                           f"steps; use more --steps")
    seconds_timed = last["elapsed_s"] - first["elapsed_s"]
    if seconds_timed <= 0:
        raise RuntimeError(f"{out}/metrics.jsonl: elapsed_s does not advance")
    steps = last["step"] - first["step"]
    notes = []
    if last.get("train_loss") is not None:
        notes.append(f"loss {last['train_loss']:.3f}")
    peak = re.findall(r"GPU ([0-9.]+) MB", text)
    if peak:
        notes.append(f"peak GPU {float(peak[-1]) / 1e3:.1f} GB")
    return steps * a.batch * m.context / seconds_timed, ", ".join(notes)


def ouroboros_profile(exe, tmp, a, seconds):
    """The table of `ouroboros profile`: (module rows, other lines)."""
    text = run([exe, "profile", "device=cuda", *model_keys(a.model, a.batch),
                "schedule=ouroboros", f"ranks={a.profile_ranks}", *a.keys],
               seconds, os.path.join(tmp, "ouroboros-profile.log"))
    rows, other = [], []
    for line in text.splitlines():
        # module rank blocks parts params fwd_ms bwd_ms total_ms MFLOP/tok GFLOP/s
        f = line.split()
        if len(f) == 10 and f[0].isdigit() and f[1].isdigit():
            rows.append(f)
        elif line.startswith(("rank ", "imbalance:", "profile:", "partition", "peak ")):
            other.append(line)
    if not rows:
        raise RuntimeError("ouroboros profile printed no module rows (log: "
                           f"{os.path.join(tmp, 'ouroboros-profile.log')})")
    return rows, other


# --------------------------------------------------------------- PyTorch

def torch_model(torch, m):
    import torch.nn as nn
    import torch.nn.functional as F
    L, H, C, T, V = m.layers, m.heads, m.width, m.context, m.vocab

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1 = nn.LayerNorm(C, eps=1e-5)
            self.c_attn = nn.Linear(C, 3 * C)  # bias=True, as GPT-2's Conv1D
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
            self.wte = nn.Embedding(V, C)
            self.wpe = nn.Embedding(T, C)
            self.h = nn.ModuleList(Block() for _ in range(L))
            self.ln_f = nn.LayerNorm(C, eps=1e-5)
            for name, p in self.named_parameters():  # GPT-2's initialisation
                if name.endswith("bias"):
                    nn.init.zeros_(p)
                elif ".ln_" in name or name.startswith("ln_"):
                    nn.init.ones_(p)
                elif name.endswith("proj.weight"):
                    nn.init.normal_(p, 0.0, 0.02 / (2 * L) ** 0.5)
                else:
                    nn.init.normal_(p, 0.0, 0.02)

        def forward(self, idx, targets):
            pos = torch.arange(idx.shape[1], device=idx.device)
            x = self.wte(idx) + self.wpe(pos)
            for blk in self.h:
                x = blk(x)
            logits = F.linear(self.ln_f(x), self.wte.weight)  # tied projection, no bias
            return F.cross_entropy(logits.view(-1, V).float(), targets.view(-1))

    return GPT()


def torch_rate(torch, a, compiled):
    """tokens/s of full training steps (forward, backward, clipping, AdamW)
    under bf16 autocast, timed with CUDA events over a.steps - a.warmup
    steps after a.warmup untimed ones (which include the compilation).
    Returns (tokens/s, note)."""
    m = a.model
    torch.manual_seed(1337)
    with contextlib.suppress(Exception):
        torch.set_float32_matmul_precision("high")
    dev = torch.device("cuda")
    torch.cuda.reset_peak_memory_stats()
    model = torch_model(torch, m).to(dev)
    decay = [p for p in model.parameters() if p.dim() == 2]
    other = [p for p in model.parameters() if p.dim() != 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}]
    try:
        opt = torch.optim.AdamW(groups, lr=6e-4, betas=(0.9, 0.95), eps=1e-8, fused=True)
    except (TypeError, RuntimeError) as e:
        raise RuntimeError(f"fused AdamW is not available in torch {torch.__version__}: {e}")
    step_model = torch.compile(model) if compiled else model
    # a fresh batch of random tokens every step, as ours reads from its
    # shard: one batch repeated would be memorised and its loss would fall
    gen = torch.Generator(device="cpu").manual_seed(1337)
    data = torch.randint(0, min(DATA_VOCAB, m.vocab), (a.steps, a.batch, m.context + 1),
                         generator=gen).to(dev)
    params = list(model.parameters())
    counter = [0]

    def step():
        batch = data[counter[0] % a.steps]
        counter[0] += 1
        x, y = batch[:, :-1].contiguous(), batch[:, 1:].contiguous()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            loss = step_model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss

    for _ in range(a.warmup):
        step()
    torch.cuda.synchronize()
    timed = a.steps - a.warmup
    start = [torch.cuda.Event(enable_timing=True) for _ in range(timed)]
    end = [torch.cuda.Event(enable_timing=True) for _ in range(timed)]
    for i in range(timed):
        start[i].record()
        loss = step()
        end[i].record()
    torch.cuda.synchronize()
    ms = sum(s.elapsed_time(e) for s, e in zip(start, end))
    note = f"loss {loss.item():.3f}, peak GPU {torch.cuda.max_memory_allocated() / 1e9:.1f} GB"
    return timed * a.batch * m.context / (ms / 1e3), note


def free_torch_memory(torch):
    """After a part, what it left: compiled graphs, cached blocks."""
    if torch is None:
        return
    gc.collect()
    with contextlib.suppress(Exception):
        torch._dynamo.reset()
    with contextlib.suppress(Exception):
        torch.cuda.empty_cache()


# --------------------------------------------------------------- main

class Model:
    def __init__(self, a):
        self.layers, self.heads, self.width = a.layers, a.heads, a.width
        self.context, self.vocab = a.context, a.vocab

    def describe(self):
        return (f"L={self.layers} H={self.heads} C={self.width} T={self.context} "
                f"V={self.vocab}")


def gpu_name(torch):
    if torch is not None:
        with contextlib.suppress(Exception):
            return torch.cuda.get_device_name(0)
    with contextlib.suppress(Exception):
        r = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                           timeout=30)
        if r.returncode == 0 and r.stdout.strip():
            return r.stdout.strip().splitlines()[0]
    return "unknown GPU"


def default_peak(name):
    for piece, tflops in PEAKS:
        if piece in name:
            return tflops, f"{piece} dense bf16"
    return 989.0, "assumed: H100 SXM dense bf16; pass --peak-tflops"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--exe", default=os.path.join(ROOT, "build", "src", "ouroboros"))
    ap.add_argument("--batch", type=int, default=16, help="sequences per step")
    ap.add_argument("--steps", type=int, default=30, help="training steps per run")
    ap.add_argument("--warmup", type=int, default=5, help="first steps left out of the timing")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="the GPU's peak for MFU (default: from its name; 989 for H100 SXM)")
    ap.add_argument("--shard-tokens", type=int, default=1 << 21,
                    help="tokens in the synthetic .bin shard")
    ap.add_argument("--profile-ranks", type=int, default=2,
                    help="ranks of the pipeline that `ouroboros profile` times")
    ap.add_argument("--attention", default="",
                    help="comma-separated attention paths (simt,wmma,mma: OURO_ATTENTION, "
                         "kernels/attention.cu) to time ouroboros with, a row each; default: "
                         "one row with the program's own choice")
    ap.add_argument("--skip", default="",
                    help="comma-separated parts to leave out: ouroboros,eager,compile,profile")
    ap.add_argument("--timeout", type=float, default=300,
                    help="seconds each part may take (default 300)")
    ap.add_argument("--budget", type=float, default=540,
                    help="seconds the whole may take: parts not started by then are skipped, "
                         "a running one is cut (default 540)")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=50304,
                    help="the model's vocabulary (default GPT-2's 50257 padded to 50304)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    ap.add_argument("keys", nargs="*", help="key=value for ouroboros train and profile")
    a = ap.parse_args()
    if a.steps <= a.warmup:
        ap.error(f"--steps {a.steps} must exceed --warmup {a.warmup}")
    if any("=" not in k for k in a.keys):
        ap.error("trailing arguments must be key=value settings of ouroboros")
    if a.width % a.heads != 0:
        ap.error(f"--width {a.width} is not a multiple of --heads {a.heads}")
    a.model = Model(a)
    skip = set(filter(None, a.skip.split(",")))
    bad_paths = set(filter(None, a.attention.split(","))) - {"simt", "wmma", "mma"}
    if bad_paths:
        ap.error(f"--attention: unknown paths {','.join(sorted(bad_paths))} (simt, wmma, mma)")
    unknown = skip - {"ouroboros", "eager", "compile", "profile"}
    if unknown:
        ap.error(f"--skip: unknown parts {','.join(sorted(unknown))}")
    t_start = time.time()

    torch, torch_error = None, None
    if not {"eager", "compile"} <= skip:
        try:
            import torch as torch_module
            if not torch_module.cuda.is_available():
                raise RuntimeError(f"torch {torch_module.__version__} sees no CUDA GPU")
            torch = torch_module
        except Exception as e:  # the ouroboros rows can still be measured
            torch_error = first_line(e)
            log(f"PyTorch unavailable: {torch_error}")
    gpu = gpu_name(torch)
    if a.peak_tflops is None:
        a.peak_tflops, peak_why = default_peak(gpu)
    else:
        peak_why = "--peak-tflops"
    fpt = flops_per_token(a.model)
    peak = a.peak_tflops * 1e12

    tmp = tempfile.mkdtemp(prefix="ouro-gpu-bench-")
    rows = []  # (part, tokens/s or None, note)

    def part_limit():
        return min(a.timeout, a.budget - (time.time() - t_start))

    def measure(name, fn):
        """Runs one part; its failure becomes its row's note."""
        seconds = part_limit()
        if seconds < 15:
            rows.append((name, None, f"not run: the --budget of {a.budget:.0f} s is spent"))
            return
        log(f"--- {name} (limit {seconds:.0f} s)")
        t0 = time.time()
        try:
            with time_limit(seconds, name):
                rate, note = fn(seconds)
            rows.append((name, rate, note))
        except Exception as e:  # one failed part must not hide the others
            oom = torch is not None and isinstance(e, torch.cuda.OutOfMemoryError)
            rows.append((name, None, ("out of memory: " if oom else "") + first_line(e)))
            log(f"{name} failed: {e}")
        finally:
            free_torch_memory(torch)
        log(f"    ({time.time() - t0:.0f} s)")

    prec = next((k.split("=", 1)[1] for k in a.keys if k.startswith("precision=")), "auto")
    exe_ok = os.access(a.exe, os.X_OK)
    if "ouroboros" not in skip:
        paths = [p for p in a.attention.split(",") if p] or [None]
        shard = os.path.join(tmp, "tokens.bin")
        if exe_ok:
            log(f"writing {a.shard_tokens} random tokens to {shard}")
            write_shard(shard, a.shard_tokens, min(DATA_VOCAB, a.model.vocab), 1337)
        for path in paths:
            name = f"ouroboros (precision={prec}" + (f", attention={path})" if path else ")")
            if not exe_ok:
                rows.append((name, None, f"no program {a.exe}: build it or pass --exe"))
            else:
                measure(name, lambda s, p=path: ouroboros_rate(a.exe, tmp, shard, a, s, p))
    for part, compiled, name in (("eager", False, "pytorch eager (bf16 autocast)"),
                                 ("compile", True, "pytorch torch.compile (bf16)")):
        if part in skip:
            continue
        if torch is None:
            rows.append((name, None, torch_error))
        else:
            measure(name, lambda s, c=compiled: torch_rate(torch, a, c))
    prof_rows, prof_other = [], []
    if "profile" not in skip:
        if not exe_ok:
            prof_other = [f"profile not run: no program {a.exe}"]
        elif part_limit() < 15:
            prof_other = [f"profile not run: the --budget of {a.budget:.0f} s is spent"]
        else:
            log("--- ouroboros profile")
            try:
                prof_rows, prof_other = ouroboros_profile(a.exe, tmp, a, part_limit())
            except Exception as e:
                prof_other = [f"profile failed: {first_line(e)}"]
                log(str(e))

    # the table, last: a remote run returns the tail of the output
    sys.stderr.flush()
    version = f"torch {torch.__version__}" if torch is not None else "no torch"
    print()
    print(f"GPU: {gpu}; {version}; model {a.model.describe()}, batch {a.batch} x "
          f"{a.model.context} tokens, {a.steps} steps, first {a.warmup} left out; "
          f"{time.time() - t_start:.0f} s in all")
    print(f"FLOPs/token = 6*(12*L*C^2 + V*C) + 12*L*C*T = {fpt / 1e6:.1f} M; "
          f"peak {a.peak_tflops:g} TFLOP/s ({peak_why})")
    w = max([34] + [len(name) for name, _, _ in rows])
    print(f"{'part':<{w}} {'tokens/s':>12} {'ms/step':>10} {'MFU%':>7}  note")
    for name, rate, note in rows:
        if rate is None:
            print(f"{name:<{w}} {'failed':>12} {'-':>10} {'-':>7}  {note}")
            continue
        ms = 1e3 * a.batch * a.model.context / rate
        print(f"{name:<{w}} {rate:>12.0f} {ms:>10.2f} {100 * rate * fpt / peak:>7.1f}  {note}")
    if prof_rows or prof_other:
        print()
        print(f"ouroboros profile: schedule=ouroboros, {a.profile_ranks} ranks, one micro-batch "
              f"per module (fwd + bwd, median of 5)")
        if prof_rows:
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
    sys.stdout.flush()
    return 0 if rows and all(rate is not None for _, rate, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
