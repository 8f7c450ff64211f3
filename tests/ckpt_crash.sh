#!/bin/sh
# Crash safety: a job killed (SIGKILL, every rank and mpirun at once) at a
# random moment while it writes a checkpoint every step always leaves a
# `latest` checkpoint that loads and verifies, never older than the one
# before; and a run resumed after each of many such crashes ends with
# exactly the weights of the run that never crashed.
. "$(dirname "$0")/lib.sh"
need_mpi
[ -d /proc/self ] || skip "needs /proc to find the job's processes"
"$OURO" inspect "$TMP" 2>&1 | grep -q 'need HDF5' && skip "built without HDF5"

ROUNDS=${CKPT_CRASH_ROUNDS:-8}
SEED=${CKPT_CRASH_SEED:-$(date +%s)}
echo "kill moments from seed $SEED (CKPT_CRASH_SEED=$SEED repeats them)"
OUT=$TMP/crash # unique: it names this job's processes
RUN="$TINY steps=300 log_every=50 eval_every=0 sample_tokens=0 schedule=ouroboros-pipelined"

job_pids() { pgrep -f "out=$OUT( |\$)" || true; }
kill_job() { p=$(job_pids); if [ -n "$p" ]; then kill -9 $p 2>/dev/null || true; fi; }
ON_EXIT=kill_job

mpitrain 3 ref $RUN

# latest_step: the step `inspect` verifies as the latest, or fails.
latest_step() {
    "$OURO" inspect "$OUT" >"$TMP/inspect.log" 2>&1 ||
        { tail -n 3 "$TMP/inspect.log"; fail "round $i: the latest checkpoint does not verify"; }
    sed -n 's/^checkpoint OK: .*step-0*\([0-9][0-9]*\) params_sha256=.*/\1/p' "$TMP/inspect.log"
}

i=0 last=0 hits=0
while [ "$i" -lt "$ROUNDS" ]; do
    LOG=$TMP/round$i.log
    "$MPIRUN" -np 3 "$OURO" train data="$CORPUS" out="$OUT" $RUN ckpt_every=1 keep_last=3 \
        resume=auto >"$LOG" 2>&1 &
    pid=$!
    # Kill only once this round has published a checkpoint of its own.
    w=0
    until grep -q '^checkpoint:' "$LOG"; do
        kill -0 "$pid" 2>/dev/null || break
        w=$((w + 1))
        [ "$w" -le 600 ] || { tail -n 5 "$LOG"; fail "round $i: no checkpoint after 60 s"; }
        sleep 0.1
    done
    if ! kill -0 "$pid" 2>/dev/null; then # a fast machine: it finished first
        wait "$pid" || { tail -n 5 "$LOG"; fail "round $i: the job failed"; }
        echo "round $i: the job finished before a kill; $i rounds of crashes"
        break
    fi
    sleep "$(awk -v s="$SEED" -v i="$i" 'BEGIN { srand(s + 7919 * i); printf "%.3f", rand() * 0.4 }')"
    kill_job
    wait "$pid" 2>/dev/null || true
    midway=$(ls -A "$OUT/ckpt" | grep -c '^\.tmp-' || true)
    step=$(latest_step)
    [ "$step" -ge "$last" ] || fail "round $i: latest went back from step $last to $step"
    if [ "$i" -gt 0 ]; then
        grep -q "^resume: .*step-$(printf %08d "$last"): " "$LOG" ||
            { grep -E 'resume|error' "$LOG"; fail "round $i did not resume from step $last"; }
    fi
    [ "$midway" = 0 ] || hits=$((hits + 1))
    echo "round $i: killed$([ "$midway" = 0 ] || echo ' while writing a checkpoint');" \
        "the latest, step $step, verifies"
    last=$step i=$((i + 1))
done
pass "$i jobs killed ($hits of them in the middle of a checkpoint): each time the latest verified (last: step $last)"

# Leftovers of the crashes (.tmp-*, .del-*) go at the next checkpoint;
# the run finishes from the last one with the uninterrupted run's weights.
mpitrain 3 crash $RUN resume=latest keep_last=3
same_sha ref crash "resumed after $i crashes == never crashed"
left=$(ls -A "$OUT/ckpt" | grep -E '^\.(tmp|del)-' || true)
[ -z "$left" ] || fail "leftovers after the final checkpoint: $left"
pass "no .tmp-/.del- leftovers; kept: $(ls "$OUT/ckpt" | tr '\n' ' ')"
