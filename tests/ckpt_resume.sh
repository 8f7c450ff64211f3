#!/bin/sh
# A run stopped after step S (stop_after=S, which writes a checkpoint) and
# continued with resume=latest ends with the same weights, bit for bit, as
# the run that never stopped (ALGORITHM.md section 7): for every schedule,
# with the delayed gradients, stored activations or replay inputs and
# messages in flight at step S restored. `steps` stays the full length, so
# the learning-rate schedule is the same in both.
. "$(dirname "$0")/lib.sh"
need_mpi
"$OURO" inspect "$TMP" 2>&1 | grep -q 'need HDF5' && skip "built without HDF5"

# run NP LOG OUT key=value...: one run (NP=0: without mpirun), log in $TMP/LOG.log.
run() {
    _np=$1 _log=$2 _out=$3; shift 3
    if [ "$_np" = 0 ]; then set -- "$OURO" train data="$CORPUS" out="$TMP/$_out" "$@"
    else set -- "$MPIRUN" -np "$_np" "$OURO" train data="$CORPUS" out="$TMP/$_out" "$@"; fi
    "$@" >"$TMP/$_log.log" 2>&1 || { tail -n 20 "$TMP/$_log.log"; fail "$_log: $* exited non-zero"; }
}

# resumes NP NAME S key=value...: stop after S and resume == never stopped.
resumes() {
    _np=$1 _name=$2 _s=$3; shift 3
    run "$_np" "$_name" "$_name" $TINY "$@"
    run "$_np" "$_name-stop" "$_name-r" $TINY "$@" stop_after="$_s"
    grep -q "^stopped after step $_s of 20" "$TMP/$_name-stop.log" ||
        { tail -n 5 "$TMP/$_name-stop.log"; fail "$_name: no 'stopped after step $_s' line"; }
    run "$_np" "$_name-resume" "$_name-r" $TINY "$@" resume=latest
    grep -q "^resume: .*step-$(printf %08d "$_s"): .*in-flight state restored" \
        "$TMP/$_name-resume.log" || { grep resume "$TMP/$_name-resume.log"; fail "$_name: not resumed from step $_s"; }
    same_sha "$_name" "$_name-resume" "$* on ${_np#0} ranks: stopped after step $_s and resumed == uninterrupted"
}

resumes 0 single 7 schedule=single
resumes 2 bp 7 schedule=bp
for act in store replay; do
    resumes 3 ouro-$act 7 schedule=ouroboros activations=$act
    resumes 3 pipe-$act 9 schedule=ouroboros-pipelined activations=$act
done
resumes 2 pipe2 5 schedule=ouroboros-pipelined activations=store
resumes 0 hybrid 6 schedule=ouroboros replicas=2 emulate=1 ranks=4
resumes 0 warmup 6 schedule=ouroboros-pipelined bp_warmup_steps=4 emulate=1 ranks=3

# The in-flight state is not vacuous: at step 9 of ouroboros-pipelined on
# 3 ranks, rank 0 holds stored activations, messages and batches.
"$OURO" inspect "$TMP/pipe-store-r/ckpt/step-00000009" >"$TMP/inspect.log" ||
    { tail -n 3 "$TMP/inspect.log"; fail "inspect of pipe-store at step 9"; }
line=$(grep '^  shard-00000.h5  modules 1,4:' "$TMP/inspect.log")
echo "$line" | grep -Eq ': [1-9][0-9]*, [1-9][0-9]*, [1-9][0-9]*;' ||
    fail "rank 0 has no in-flight state at step 9: $line"
pass "ouroboros-pipelined at step 9, rank 0 in flight (activation sets, messages, batches): ${line##*: }"

# Checkpoints every 3 steps (which take in-flight messages off the
# transport early) leave the run unchanged; keep_last=2 keeps the newest
# two; and a run stopped and resumed twice still ends the same.
run 3 every pipe-every $TINY schedule=ouroboros-pipelined ckpt_every=3 keep_last=2
same_sha pipe-store every "ckpt_every=3 does not change the weights"
kept=$(ls "$TMP/pipe-every/ckpt" | tr '\n' ' ')
[ "$kept" = "latest step-00000018 step-00000020 " ] || fail "keep_last=2 left: $kept"
pass "keep_last=2 leaves $kept"
run 3 twice-1 twice $TINY schedule=ouroboros-pipelined stop_after=4
run 3 twice-2 twice $TINY schedule=ouroboros-pipelined stop_after=13 resume=latest ckpt_every=1
run 3 twice-3 twice $TINY schedule=ouroboros-pipelined resume=latest
same_sha pipe-store twice-3 "stopped at 4 and 13 (checkpoints every step between), resumed twice == uninterrupted"
