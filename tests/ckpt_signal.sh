#!/bin/sh
# SIGUSR1 (Slurm's warning before a time limit, passed on by mpirun) makes
# every rank stop after the same step with a checkpoint there, and the run
# resumed from it ends with the weights of a run that never stopped.
. "$(dirname "$0")/lib.sh"
need_mpi
"$OURO" inspect "$TMP" 2>&1 | grep -q 'need HDF5' && skip "built without HDF5"

ARGS="n_layer=3 n_head=2 n_embd=32 block_size=32 batch_size=4 steps=600 \
log_every=50 eval_every=0 eval_batches=2 sample_tokens=0 schedule=ouroboros"

mpitrain 2 whole $ARGS

# The run to interrupt: wait for its first progress line, then signal mpirun.
"$MPIRUN" -np 2 "$OURO" train data="$CORPUS" out="$TMP/cut" $ARGS >"$TMP/cut.log" 2>&1 &
job=$!
ON_EXIT="kill -9 $job 2>/dev/null"
for _ in $(seq 300); do
    grep -q '^step' "$TMP/cut.log" 2>/dev/null && break
    sleep 0.1
done
kill -USR1 "$job"
wait "$job" || fail "the signalled run exited non-zero: $(tail -n 3 "$TMP/cut.log")"
grep -q 'stopped after step [0-9]* of 600 (SIGUSR1)' "$TMP/cut.log" ||
    fail "no 'stopped after step N (SIGUSR1)' line: $(tail -n 3 "$TMP/cut.log")"
grep -q '^final' "$TMP/cut.log" && fail "the signalled run went on to the end"
step=$(sed -n 's/.*stopped after step \([0-9]*\) .*/\1/p' "$TMP/cut.log")
[ "$(cat "$TMP/cut/ckpt/latest")" = "$(printf 'step-%08d' "$step")" ] ||
    fail "latest is $(cat "$TMP/cut/ckpt/latest"), not the step it stopped after ($step)"
pass "SIGUSR1 stopped both ranks after step $step with a checkpoint there"

mpitrain 2 cut $ARGS resume=latest
same_sha whole cut "resumed after SIGUSR1 = uninterrupted"
