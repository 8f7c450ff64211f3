#!/bin/sh
# A rank that dies (kill -9: no chance to say goodbye) must take the whole
# job down quickly, with a non-zero status and a message that says what
# happened, and leave no process behind; a training job must not hang
# until someone notices.
. "$(dirname "$0")/lib.sh"
need_mpi
[ -d /proc/self ] || skip "needs /proc to find the ranks"

OUT=$TMP/kill # unique: it names this job's processes
LOG=$TMP/kill.log
LIMIT=30      # seconds the job may take to end once a rank is gone

# Every process of the job (mpirun included) has $OUT on its command line.
job_pids() { pgrep -f "out=$OUT( |\$)" || true; }
stop_job() { for p in $(job_pids); do kill -9 "$p" 2>/dev/null || true; done; }
ON_EXIT=stop_job

# Long enough to still be training when it is killed. comm_timeout stays
# far above LIMIT, so only the launcher's or the program's own failure
# detection can pass this test.
"$MPIRUN" -np 3 "$OURO" train data="$CORPUS" out="$OUT" $TINY schedule=ouroboros \
    steps=100000 log_every=10 eval_every=0 comm_timeout=300 >"$LOG" 2>&1 &
MPI_PID=$!

# Wait for a progress line: every rank is then past start-up.
i=0
until grep -q '^step ' "$LOG"; do
    kill -0 "$MPI_PID" 2>/dev/null || { cat "$LOG"; fail "the job ended before training"; }
    i=$((i + 1))
    [ "$i" -le 60 ] || { cat "$LOG"; fail "no progress line after 60 s"; }
    sleep 1
done

# The rank of a process, from the environment the launcher gives it
# (Open MPI, else MPICH).
rank_of() {
    tr '\0' '\n' <"/proc/$1/environ" 2>/dev/null |
        sed -nE 's/^(OMPI_COMM_WORLD_RANK|PMI_RANK)=//p' | head -n 1
}
victim=
for p in $(job_pids); do
    if [ "$(rank_of "$p")" = 2 ]; then victim=$p; fi
done
[ -n "$victim" ] || fail "could not find the process of rank 2 among: $(job_pids)"

kill -9 "$victim"
start=$(date +%s)
while kill -0 "$MPI_PID" 2>/dev/null && [ $(($(date +%s) - start)) -le "$LIMIT" ]; do
    sleep 1
done
if kill -0 "$MPI_PID" 2>/dev/null; then
    tail -n 20 "$LOG"
    fail "mpirun still running $LIMIT s after rank 2 was killed"
fi
status=0
wait "$MPI_PID" || status=$?
took=$(($(date +%s) - start))
[ "$status" -ne 0 ] || { tail -n 20 "$LOG"; fail "mpirun exited 0 after rank 2 was killed"; }
pass "the job ended in ${took} s with status $status after rank 2 was killed"

# Open MPI says "process rank 2 ... exited on signal 9 (Killed)"; a peer
# noticing first may report the lost rank itself. (The start-up placement
# lines also name rank 2, hence the second word.)
SAYS='rank 2.*(signal|kill|exit|died|lost|fail)|killed'
grep -Eiq "$SAYS" "$LOG" || { tail -n 20 "$LOG"; fail "the output names neither rank 2 nor a kill"; }
pass "the output says: $(grep -Ei "$SAYS" "$LOG" | head -n 1)"

# mpirun has returned: its ranks must be gone too (a moment for the kernel).
i=0
while [ -n "$(job_pids)" ] && [ "$i" -lt 5 ]; do sleep 1; i=$((i + 1)); done
[ -z "$(job_pids)" ] || fail "processes left behind: $(job_pids)"
pass "no process of the job is left"
