#!/usr/bin/python3
"""Schedule benchmark: every training schedule on 1, 2, 3 and 4 ranks.

Trains the same model on the same data for the same number of steps with
each schedule (one run at a time) and prints one table row per run:
steady-state tokens/s, speedup over `single`, the compute fraction of each
rank, the validation loss after the run, and the wall time to reach a fixed
validation loss. Standard library only; run from anywhere:

  /usr/bin/python3 tests/bench/schedules.py [--steps N] [--ranks 1,2,3,4]
      [--schedules single,bp,...] [--quick] [--out DIR] [--verbose]
      [key=value ...]

Trailing key=value arguments are passed to every run (e.g. partition=0,4,4
or lr=3e-4); they override the benchmark's model and run settings.
"""
import argparse
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

# 8 blocks split 0,4,4 on 2 ranks (rank 0: embedding + 4 blocks + head,
# rank 1: 4 blocks): the program estimates an ideal 2-rank speedup of 1.97x.
MODEL = dict(n_layer=8, n_head=4, n_embd=128, block_size=128, batch_size=16)
# --quick: a tiny model, a few steps, one validation batch
QUICK_MODEL = dict(n_layer=2, n_head=4, n_embd=64, block_size=64,
                   batch_size=8)

ALL_SCHEDULES = ["single", "bp", "gpipe", "dp", "ouroboros",
                 "ouroboros-pipelined"]
# which schedules run on one rank (the pipelines with K=2 modules)
ONE_RANK = ["single", "bp", "ouroboros", "ouroboros-pipelined"]
MANY_RANKS = ["bp", "gpipe", "dp", "ouroboros", "ouroboros-pipelined"]
MICRO_BATCHES = 4  # gpipe
TARGET_AT = 0.6    # the target loss is single's validation loss here


def cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def run_env():
    e = dict(os.environ)
    for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        e[k] = "1"
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        e["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
        e["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
    return e


_NONFINITE = re.compile(r'([:\[,]\s*)(-?)(nan|inf|infinity)\b',
                        re.IGNORECASE)


def parse_json_line(line):
    """One metrics.jsonl line; tolerates bare nan/inf numbers."""
    def fix(m):
        word = "NaN" if m.group(3).lower() == "nan" else "Infinity"
        sign = m.group(2) if word != "NaN" else ""
        return m.group(1) + sign + word
    return json.loads(_NONFINITE.sub(fix, line))


def finite(x):
    return isinstance(x, (int, float)) and math.isfinite(x)


def command(exe, sched, ranks, keys, nproc, mpirun_args):
    args = [exe, "train", f"schedule={sched}"]
    args += [f"{k}={v}" for k, v in keys.items()]
    if ranks == 1:  # one process, no MPI launcher needed
        return args
    mpi = ["mpirun", "-np", str(ranks)]
    if ranks > nproc:
        mpi.append("--oversubscribe")
    return mpi + mpirun_args + args


def shell_line(cmd):
    env = "OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 "
    return env + " ".join(shlex.quote(c) for c in cmd)


def summarize(path, tokens_per_step):
    """Reads one run's metrics.jsonl.

    Steady state: the log intervals after the first one that contain no
    evaluation (an evaluation after step s is timed into the interval that
    ends at the next logged step)."""
    train, evals = [], []
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            r = parse_json_line(line)
            if "val_loss" in r:
                evals.append(r)
            elif "train_loss" in r:
                train.append(r)
    train.sort(key=lambda r: r["step"])
    evals.sort(key=lambda r: r["step"])
    eval_steps = [e["step"] for e in evals]
    clean = []
    for prev, cur in zip(train[1:], train[2:]):
        if any(prev["step"] <= s < cur["step"] for s in eval_steps):
            continue
        clean.append((prev, cur))
    if not clean:  # too few log lines: all intervals but the first
        clean = list(zip(train[1:], train[2:]))
    tps, busy = None, None
    if clean:
        steps = sum(c["step"] - p["step"] for p, c in clean)
        secs = sum(c["elapsed_s"] - p["elapsed_s"] for p, c in clean)
        if secs > 0:
            tps = steps * tokens_per_step / secs
        # time-weighted mean compute fraction of each rank
        nr = max(len(c.get("ranks", [])) for _, c in clean)
        busy = []
        for i in range(nr):
            num = den = 0.0
            for p, c in clean:
                rk = sorted(c.get("ranks", []), key=lambda x: x["rank"])
                if i < len(rk):
                    dt = c["elapsed_s"] - p["elapsed_s"]
                    num += rk[i]["compute"] * dt
                    den += dt
            busy.append(num / den if den > 0 else float("nan"))
    return dict(tokens_per_s=tps, busy=busy, evals=evals, train=train,
                clean_intervals=len(clean))


def run_one(exe, sched, ranks, keys, nproc, mpirun_args, verbose, timeout):
    cmd = command(exe, sched, ranks, keys, nproc, mpirun_args)
    if verbose:
        print("+ " + shell_line(cmd), flush=True)
    t0 = time.time()
    try:
        p = subprocess.run(cmd, env=run_env(), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True,
                           errors="replace", timeout=timeout)
        out, rc = p.stdout, p.returncode
    except subprocess.TimeoutExpired as e:
        out = e.stdout or ""
        if isinstance(out, bytes):
            out = out.decode(errors="replace")
        rc = "timeout"
    wall = time.time() - t0
    res = dict(schedule=sched, ranks=ranks, command=shell_line(cmd),
               wall_s=wall, rc=rc, oversubscribed=ranks > nproc)
    m = re.search(r"([0-9.]+) MFLOP/token", out)
    res["mflop_per_token"] = float(m.group(1)) if m else None
    m = re.search(r"ideal speedup ([0-9.]+)x", out)
    res["ideal"] = float(m.group(1)) if m else None
    m = re.search(r"partition \(blocks per module\): (\S+)", out)
    res["partition"] = m.group(1) if m else None
    m = re.search(r"^final step=(\d+) train_loss=(\S+) val_loss=(\S+)", out,
                  re.M)
    res["final_val_loss"] = float(m.group(3)) if m else None
    metrics = os.path.join(keys["out"], "metrics.jsonl")
    if rc != 0 or not m:
        why = re.search(r"error: (?:\[rank \d+\] )?(?:config: )?(.*)", out)
        res["error"] = why.group(1).strip() if why else f"exit {rc}"
        # a configuration the program refuses (dp on 3 ranks with a batch
        # of 16) is a row of the table, not a failure of the benchmark
        res["refused"] = bool(why and "config:" in why.group(0))
        print(f"failed: {res['error']}", end=" ", file=sys.stderr)
        if verbose:
            tail = "\n".join(out.rstrip().splitlines()[-12:])
            print(f"\n{tail}", file=sys.stderr)
        sys.stderr.flush()
        return res
    tps_step = int(keys["batch_size"]) * int(keys["block_size"])
    try:
        res.update(summarize(metrics, tps_step))
    except (OSError, ValueError, KeyError) as e:
        res["error"] = f"metrics: {e}"
    return res


def pick_target(ref, steps):
    """The reference's validation loss at the evaluation nearest TARGET_AT
    of the run, rounded up to 3 decimals (so the reference reaches it)."""
    ev = [e for e in ref.get("evals", []) if finite(e["val_loss"])]
    if not ev:
        return None, None
    e = min(ev, key=lambda e: abs(e["step"] - TARGET_AT * steps))
    return math.ceil(e["val_loss"] * 1000 - 1e-9) / 1000, e["step"]


def time_to(res, target):
    for e in res.get("evals", []):
        if finite(e["val_loss"]) and e["val_loss"] <= target:
            return e["elapsed_s"], e["step"]
    return None, None


def fmt(x, spec, none="-"):
    return none if x is None or (isinstance(x, float) and
                                 not math.isfinite(x)) else format(x, spec)


def table(results, steps, target, target_step, target_ref, nproc, keys,
          load):
    lines = []
    single = next((r for r in results if r["schedule"] == "single"
                   and r.get("tokens_per_s")), None)
    mflop = next((r["mflop_per_token"] for r in results
                  if r.get("mflop_per_token")), None)
    tgt = (f"{target:.3f}" if target is not None else "-")
    head = (f"{'ranks':>5}  {'schedule':<20} {'tokens/s':>9} {'speedup':>7} "
            f"{'ideal':>5}  {'busy (compute per rank)':<24} "
            f"{'val@' + str(steps):>8}  {'s to val<=' + tgt:>16}")
    lines.append(head)
    lines.append("-" * len(head))
    for r in results:
        rk = f"{r['ranks']}{'*' if r['oversubscribed'] else ''}"
        if "error" in r and not r.get("tokens_per_s"):
            why = r["error"]
            why = why if len(why) <= 70 else why[:67] + "..."
            lines.append(f"{rk:>5}  {r['schedule']:<20} did not run: {why}")
            continue
        tps = r.get("tokens_per_s")
        sp = (tps / single["tokens_per_s"]) if (single and tps) else None
        busy = "/".join(fmt(b, ".2f") for b in (r.get("busy") or [])) or "-"
        if target is not None:
            t, s = time_to(r, target)
            reach = f"{t:.1f} (step {s})" if t is not None else "-"
        else:
            reach = "-"
        lines.append(
            f"{rk:>5}  {r['schedule']:<20} {fmt(tps, '.0f'):>9} "
            f"{fmt(sp, '.2f'):>7} {fmt(r.get('ideal'), '.2f'):>5}  "
            f"{busy:<24} {fmt(r.get('final_val_loss'), '.4f'):>8}  "
            f"{reach:>16}")
    model = ", ".join(f"{k}={keys[k]}" for k in
                      ("n_layer", "n_head", "n_embd", "block_size",
                       "batch_size") if k in keys)
    notes = [
        f"model: {model}, byte vocabulary, data={keys.get('data')}; "
        f"{steps} steps for every run; "
        + (f"{mflop:.2f} MFLOP/token (as printed by the program)"
           if mflop else "FLOPs/token not printed"),
        f"machine: {nproc} cores (nproc), load average {load[0]:.2f} "
        f"before / {load[1]:.2f} after; "
        f"* = more ranks than cores: oversubscribed, ranks share cores",
        "tokens/s: steady state (first log interval and intervals with an "
        "evaluation excluded); speedup: over single on 1 rank; ideal: the "
        "program's balance estimate (pipelines), capped in practice by "
        "the cores",
        "busy: time-weighted mean compute fraction of each rank over the "
        "same intervals; val@N: validation loss after N steps",
    ]
    if target is not None:
        src = (f"the validation loss of {target_ref} at step {target_step} "
               f"(~{int(TARGET_AT * 100)}% of its run)" if target_ref
               else "given by --target")
        notes.append(f"s to val<={tgt}: elapsed seconds (evaluations "
                     f"included) at the first evaluation at or below the "
                     f"target, {src}; - = never reached")
    if max(load) > nproc * 0.75 + 0.5:
        notes.append("warning: the machine was busy; timings are noisy")
    return "\n".join(lines + [""] + notes)


def main():
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Trailing key=value arguments go to every run.")
    ap.add_argument("--steps", type=int, default=None,
                    help="optimizer steps per run (default 200; --quick 16)")
    ap.add_argument("--ranks", default=None,
                    help="comma-separated rank counts (default 1,2,3,4; "
                    "--quick 1,2)")
    ap.add_argument("--schedules", default=",".join(ALL_SCHEDULES),
                    help="comma-separated schedules (default: all)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run of a tiny model (< 1 minute)")
    ap.add_argument("--out", default=None,
                    help="keep the runs, table.txt and results.json here "
                    "(default: a temporary directory, removed)")
    ap.add_argument("--target", type=float, default=None,
                    help="validation loss for the time-to-loss column "
                    "(default: single's at ~60%% of the run)")
    ap.add_argument("--eval-every", type=int, default=None,
                    help="evaluate every N steps (default steps/10)")
    ap.add_argument("--eval-batches", type=int, default=None,
                    help="validation batches per evaluation (default 8; "
                    "--quick 1)")
    ap.add_argument("--mpirun-args", default="",
                    help="extra mpirun arguments, one string")
    ap.add_argument("--timeout", type=float, default=None,
                    help="seconds before a run is abandoned (default none)")
    ap.add_argument("--exe", default=os.path.join(ROOT, "build", "src",
                                                  "ouroboros"))
    ap.add_argument("--verbose", action="store_true",
                    help="print the exact command of each run")
    ap.add_argument("overrides", nargs="*", metavar="key=value")
    a = ap.parse_args()

    steps = a.steps or (16 if a.quick else 200)
    if steps < 4:
        ap.error("--steps must be at least 4")
    ranks = [int(x) for x in (a.ranks or ("1,2" if a.quick else "1,2,3,4"))
             .split(",") if x.strip()]
    wanted = [s.strip() for s in a.schedules.split(",") if s.strip()]
    for s in wanted:
        if s not in ALL_SCHEDULES:
            ap.error(f"unknown schedule {s!r}")
    if not os.access(a.exe, os.X_OK):
        sys.exit(f"{a.exe} not found: build it first (launch/build)")
    if any(r > 1 for r in ranks) and not shutil.which("mpirun"):
        sys.exit("mpirun not found")
    nproc = cores()

    # evaluations at multiples of the log interval, so that most log
    # intervals hold no evaluation (those count as steady state)
    log_every = max(1, steps // 40)
    eval_every = a.eval_every or max(2 * log_every,
                                     (steps // 10) // log_every * log_every)
    base = dict(QUICK_MODEL if a.quick else MODEL)
    if a.quick:  # every middle rank of a pipeline needs a block
        base["n_layer"] = max(base["n_layer"], max(ranks))
    base.update(data="default", steps=steps, log_every=log_every,
                eval_every=eval_every,
                eval_batches=a.eval_batches or (1 if a.quick else 8),
                sample_tokens=0, threads=1, micro_batches=MICRO_BATCHES)
    for kv in a.overrides:
        if "=" not in kv:
            ap.error(f"expected key=value, got {kv!r}")
        k, v = kv.split("=", 1)
        base[k] = v
    steps = int(base["steps"])

    plan = []
    for r in ranks:
        for s in (ONE_RANK if r == 1 else MANY_RANKS):
            if s in wanted:
                plan.append((r, s))
    # single first: the reference for speedup and for the target loss
    plan.sort(key=lambda p: (p[1] != "single", p[0]))
    if not plan:
        sys.exit("nothing to run (single runs on 1 rank only; gpipe and dp "
                 "on 2 or more)")

    outdir = a.out or tempfile.mkdtemp(prefix="ouro_sched_bench_")
    os.makedirs(outdir, exist_ok=True)
    load0 = os.getloadavg()[0]
    results = []
    try:
        for i, (r, s) in enumerate(plan):
            keys = dict(base)
            keys["out"] = os.path.join(outdir, f"{s}-{r}")
            if s != "gpipe":
                keys.pop("micro_batches", None)
            if not a.verbose:
                print(f"[{i + 1}/{len(plan)}] {s} on {r} rank(s) ...",
                      end=" ", file=sys.stderr, flush=True)
            res = run_one(a.exe, s, r, keys, nproc, shlex.split(a.mpirun_args),
                          a.verbose, a.timeout)
            if not a.verbose:
                print(f"{res['wall_s']:.1f} s", file=sys.stderr, flush=True)
            results.append(res)
        load1 = os.getloadavg()[0]

        target, tstep, tref = a.target, None, None
        if target is None:
            ref = next((x for x in results if x["schedule"] == "single"
                        and x.get("evals")), None) or \
                next((x for x in results if x.get("evals")), None)
            if ref:
                target, tstep = pick_target(ref, steps)
                tref = (f"{ref['schedule']} on {ref['ranks']} "
                        f"rank{'s' if ref['ranks'] > 1 else ''}")
        text = table(results, steps, target, tstep, tref, nproc, base,
                     (load0, load1))
        print("\n" + text)
        if a.out:
            with open(os.path.join(outdir, "table.txt"), "w") as f:
                f.write(text + "\n")
            with open(os.path.join(outdir, "results.json"), "w") as f:
                keep = [{k: v for k, v in x.items() if k != "train"}
                        for x in results]
                json.dump(dict(steps=steps, target=target, nproc=nproc,
                               runs=keep), f, indent=1, default=str)
    finally:
        if not a.out:
            shutil.rmtree(outdir, ignore_errors=True)
    return 1 if any("error" in x and not x.get("refused")
                    for x in results) else 0


if __name__ == "__main__":
    sys.exit(main())
