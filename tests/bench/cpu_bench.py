#!/usr/bin/python3
"""CPU benchmark: ouroboros training steps vs PyTorch vs the sgemm limit.

Builds sgemm_rate, measures the single-thread sgemm rate (the limit), then
for each model configuration times `ouroboros train` and the same model in
PyTorch, one after the other, one thread each, and prints a table.
Run from anywhere with the system Python (it needs torch):

  /usr/bin/python3 tests/bench/cpu_bench.py [--quick] [--seconds S] [--repeat R]

The limit and our runs use the same OpenBLAS kernels, whichever it picks
or OPENBLAS_CORETYPE names (the table says which).
"""
import argparse
import json
import os
import random
import shlex
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
VOCAB = 256
WARMUP_STEPS = 3  # steps not counted, on both sides

# (n_layer, n_embd, n_head); context 128, batch 16, byte vocabulary
CONFIGS = [(4, 128, 4), (6, 256, 8)]
BLOCK, BATCH = 128, 16


def flops_per_token(L, C, T, V=VOCAB):
    """PaLM/nanoGPT convention: 6 * matmul parameters + attention.
    Matmul parameters: L*12*C^2 (block weights, no biases/LN) + V*C (tied
    head); attention: 12*L*C*T (QK^T and AV, forward + backward)."""
    return 6 * (L * 12 * C * C + V * C) + 12 * L * C * T


FLOPS_NOTE = "FLOPs/token = 6*(12*L*C^2 + V*C) + 12*L*C*T"


def env1():
    e = dict(os.environ)
    for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        e[k] = "1"
    return e


def run(cmd, **kw):
    print("+ " + " ".join(shlex.quote(c) for c in cmd), file=sys.stderr,
          flush=True)
    r = subprocess.run(cmd, env=env1(), stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, errors="replace",
                       **kw)
    if r.returncode != 0:
        sys.stderr.write(r.stdout[-3000:])
        raise RuntimeError(f"exit {r.returncode}: {cmd[0]}")
    return r.stdout


def build_sgemm_rate(tmp):
    exe = os.path.join(tmp, "sgemm_rate")
    pc = subprocess.run(["pkg-config", "--cflags", "--libs", "openblas"],
                        stdout=subprocess.PIPE, text=True, check=True)
    run(["cc", "-O2", "-std=c11", os.path.join(HERE, "sgemm_rate.c"), "-o",
         exe] + pc.stdout.split())
    return exe


def sgemm_limit(exe, reps):
    """(best single-thread sgemm FLOP/s, the OpenBLAS kernels' name)"""
    out = run([exe, str(reps)])
    sys.stderr.write(out)
    core = out.split("openblas_core")[1].split()[0]
    return float(out.split("limit_gflops")[1].split()[0]) * 1e9, core


def ours(exe, tmp, data, L, C, H, steps):
    out = os.path.join(tmp, f"run_{L}x{C}")
    run([exe, "train", f"n_layer={L}", f"n_head={H}", f"n_embd={C}",
         f"block_size={BLOCK}", f"batch_size={BATCH}", f"steps={steps}",
         "optimizer=adamw", "lr=3e-4", "warmup=0", f"data={data}",
         "eval_every=0", "log_every=1", "seed=1337", f"out={out}",
         "threads=1"])
    with open(os.path.join(out, "metrics.jsonl")) as f:
        recs = [json.loads(l) for l in f if l.strip()]
    recs = [r for r in recs if "train_loss" in r and "elapsed_s" in r]
    recs.sort(key=lambda r: r["step"])
    if len(recs) < WARMUP_STEPS + 2:
        raise RuntimeError(f"only {len(recs)} logged steps in {out}")
    a, b = recs[WARMUP_STEPS - 1], recs[-1]  # a = end of the warm-up
    tokens = (b["step"] - a["step"]) * BATCH * BLOCK
    tps = tokens / (b["elapsed_s"] - a["elapsed_s"])
    print(f"ours steps {b['step'] - a['step']} tokens_per_s {tps:.1f}",
          file=sys.stderr)
    return tps


def torch_side(L, C, H, steps):
    out = run(["/usr/bin/python3", os.path.join(HERE, "torch_gpt.py"),
               f"--n_layer={L}", f"--n_embd={C}", f"--n_head={H}",
               f"--block_size={BLOCK}", f"--batch_size={BATCH}",
               f"--steps={steps}", f"--warmup={WARMUP_STEPS}"])
    sys.stderr.write(out)
    return float(out.split("tokens_per_s")[1].split()[0])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: ~2 s per run")
    ap.add_argument("--seconds", type=float, default=15.0,
                    help="target timed seconds per run (default 15)")
    ap.add_argument("--repeat", type=int, default=None,
                    help="run each side R times, alternating; keep the best "
                    "(default 3, as runs on a shared VM vary by several %%; "
                    "1 with --quick)")
    ap.add_argument("--exe", default=os.path.join(ROOT, "build", "src",
                                                  "ouroboros"))
    a = ap.parse_args()
    secs = 2.0 if a.quick else a.seconds
    repeat = a.repeat if a.repeat is not None else (1 if a.quick else 3)

    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="ouro_bench_") as tmp:
        reps = 3 if a.quick else 10
        sgemm_exe = build_sgemm_rate(tmp)
        # The VM's speed drifts over minutes, so the limit is measured
        # between every two runs, and each run is held against the higher
        # of the measurements just before and just after it.
        first, core = sgemm_limit(sgemm_exe, reps)
        limits = [first]

        def timed(fn):
            """(rate, the limit around it: the higher of the two)"""
            rate = fn()
            limits.append(sgemm_limit(sgemm_exe, reps)[0])
            return rate, max(limits[-2], limits[-1])

        data = os.path.join(tmp, "random.bytes")
        with open(data, "wb") as f:
            f.write(random.Random(1).randbytes(2 << 20))
        have_ours = os.access(a.exe, os.X_OK)
        if not have_ours:
            print(f"note: {a.exe} not found; our column is skipped",
                  file=sys.stderr)

        rows = []
        for L, C, H in CONFIGS:
            fpt = flops_per_token(L, C, BLOCK)
            # steps for ~secs s on each side, guessing ours at ~90% of the
            # limit and PyTorch at ~45% (short runs catch more of the VM's
            # slow spells)
            def steps_for(fraction):
                rate = fraction * limits[0] / fpt
                return max(5, int(secs * rate / (BATCH * BLOCK)))
            # per side: best tokens/s, best fraction of the limit
            o = t = (None, None)
            for _ in range(max(1, repeat)):
                if have_ours:
                    rate, lim = timed(lambda: ours(a.exe, tmp, data, L, C, H,
                                                   steps_for(0.9) + WARMUP_STEPS))
                    o = (max(o[0] or 0, rate), max(o[1] or 0, rate * fpt / lim))
                rate, lim = timed(lambda: torch_side(L, C, H, steps_for(0.45)))
                t = (max(t[0] or 0, rate), max(t[1] or 0, rate * fpt / lim))
            rows.append((f"{L}L x {C}C x {H}H", fpt, o, t))

    def f(x, fmt):
        return format(x, fmt) if x is not None else "-"

    load1 = os.getloadavg()[0]
    sys.stderr.flush()
    print(f"\nsgemm limit (1 thread, OpenBLAS {core} kernels), measured between runs: "
          f"{min(limits) / 1e9:.1f} to {max(limits) / 1e9:.1f} GFLOP/s")
    print(f"T={BLOCK} B={BATCH} V={VOCAB}; {FLOPS_NOTE}; best of {repeat}, "
          "each run against the limit measured around it")
    print(f"load average (1 min): {load0:.2f} before, {load1:.2f} after, "
          f"on {os.cpu_count()} CPUs")
    if max(load0, load1 - 1.0) > 0.5:
        print("warning: the machine was busy; the limit and both rates are "
              "understated and noisy (run it again on a quiet machine)")
    print(f"{'config':<16} {'MFLOP/tok':>9} {'ours tok/s':>10} "
          f"{'torch tok/s':>11} {'ours/torch':>10} {'ours %lim':>9} "
          f"{'torch %lim':>10}")
    for name, fpt, o, t in rows:
        print(f"{name:<16} {fpt / 1e6:>9.2f} {f(o[0], '.0f'):>10} {t[0]:>11.0f} "
              f"{f(o[0] / t[0] if o[0] else None, '.2f'):>10} "
              f"{f(o[1] * 100 if o[1] else None, '.1f'):>9} "
              f"{t[1] * 100:>10.1f}")


if __name__ == "__main__":
    main()
