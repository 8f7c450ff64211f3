#!/bin/sh
# The sbatch templates under slurm/ against a real Slurm: a one-node
# cluster on this machine (slurm/local-cluster: munged, slurmctld and
# slurmd started here, stopped on exit), Debian's slurm-wlm and munge
# installed by launch/setup-deps --slurm when missing. Checks:
#  - one-node.sbatch, 3-rank ouroboros through `srun --mpi=pmix` and
#    through `mpirun` inside the job, and multi-node.sbatch (one node, its
#    GPU directives on the cluster's stand-in GPUs, device=cpu): each ends
#    with a final line, and all three give the weights of emulate=1 ranks=3;
#  - launch/sweep --submit: a job array per rank count and the gather job;
#  - the time-limit path, batch side: --signal=B:USR1@55 reaches the job
#    script, which stops the ranks, requeues the job, and the requeued job
#    passes resume=latest (a stand-in trainer that checkpoints on SIGUSR1);
#  - the same with the real trainer when it has resume= (checkpoints):
#    stopped by SIGUSR1 mid-run, requeued, resumed, and ending with the
#    weights of an uninterrupted run. Reported as SKIP when it has not.
# Needs root (slurmd); skips when Slurm cannot be installed or started.
. "$(dirname "$0")/lib.sh"
need_mpi

[ "$(id -u)" = 0 ] || skip "the one-node Slurm cluster needs root"
PATH=$PATH:/usr/sbin:/sbin
export PATH
t_start=$(date +%s)
elapsed() { echo "$(( $(date +%s) - t_start ))s"; }

if ! command -v sbatch >/dev/null 2>&1 || ! command -v slurmctld >/dev/null 2>&1 ||
   ! command -v slurmd >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
    echo "installing Slurm and munge: launch/setup-deps --slurm"
    "$top_srcdir/launch/setup-deps" --slurm >"$TMP/setup-deps.log" 2>&1 ||
        { tail -n 5 "$TMP/setup-deps.log"; skip "cannot install slurm-wlm and munge"; }
fi

CLUSTER=$TMP/cluster
ON_EXIT="'$top_srcdir/slurm/local-cluster' stop '$CLUSTER'"
"$top_srcdir/slurm/local-cluster" start "$CLUSTER" >"$TMP/cluster.env" 2>"$TMP/cluster.log" ||
    { cat "$TMP/cluster.log"; skip "could not start a one-node Slurm cluster here"; }
cat "$TMP/cluster.log"
. "$TMP/cluster.env"
echo "cluster up after $(elapsed)"

# Jobs run in $TMP, read the templates from the source tree, and the
# program from the build tree.
export OURO_ROOT="$top_srcdir" OURO_BIN="$OURO"
unset OURO_LAUNCHER OURO_DEVICE OURO_OUT OURO_ARGS OURO_RUN_OPTS OURO_CKPT_EVERY
cd "$TMP" || exit 1

# submit NAME SBATCH-ARGS...: submit, remember the job id in $TMP/NAME.jid
submit() {
    _n=$1; shift
    sbatch --parsable --output="$TMP/$_n.out" "$@" >"$TMP/$_n.jid" 2>"$TMP/$_n.sbatch-err" ||
        { cat "$TMP/$_n.sbatch-err"; fail "$_n: sbatch $* failed"; }
    echo "submitted $_n: job $(cat "$TMP/$_n.jid")"
}
job_state() {
    scontrol show job "$1" 2>/dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p' | head -n 1
}
# wait_job NAME SECONDS: wait for the job to end; fail unless it COMPLETED.
wait_job() {
    _jid=$(cat "$TMP/$1.jid")
    _end=$(( $(date +%s) + $2 ))
    while :; do
        _st=$(job_state "$_jid")
        case "$_st" in
            COMPLETED) return 0 ;;
            FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY|BOOT_FAIL|DEADLINE)
                tail -n 30 "$TMP/$1.out" 2>/dev/null
                fail "$1: job $_jid ended $_st" ;;
        esac
        if [ "$(date +%s)" -gt "$_end" ]; then
            tail -n 30 "$TMP/$1.out" 2>/dev/null
            scontrol show job "$_jid" | head -n 5
            fail "$1: job $_jid not done after $2 s (state ${_st:-unknown})"
        fi
        sleep 0.5
    done
}
# wait_for SECONDS WHAT CMD...: poll until CMD succeeds.
wait_for() {
    _end=$(( $(date +%s) + $1 )); _what=$2; shift 2
    until "$@"; do
        [ "$(date +%s)" -le "$_end" ] || fail "timed out waiting for $_what"
        sleep 0.3
    done
}
# A requeued job waits ~2 minutes before it may start again (Slurm's
# BeginTime on requeue); a test need not. A few seconds it must: started
# in the second it was requeued, slurmd refuses the job ("Job credential
# revoked") and it fails.
release_requeued() {
    _jid=$1
    wait_for 60 "job $_jid to be requeued" sh -c \
        "scontrol show job $_jid | grep -q 'Restarts=[1-9]' && scontrol show job $_jid | grep -q 'JobState=PENDING'"
    scontrol update JobId="$_jid" StartTime=now+3
}

ARGS="data=$CORPUS schedule=ouroboros $TINY"

# --- 1. the templates, both launchers --------------------------------------
# (sbatch hands the environment to the job: that is how OURO_* get there)
OURO_ARGS=$ARGS; export OURO_ARGS
OURO_LAUNCHER=srun; export OURO_LAUNCHER
submit srun3 --ntasks=3 --time=5 "$top_srcdir/slurm/one-node.sbatch" out="$TMP/srun3"
OURO_LAUNCHER=mpirun
submit mpirun3 --ntasks=3 --time=5 "$top_srcdir/slurm/one-node.sbatch" out="$TMP/mpirun3"
unset OURO_LAUNCHER
OURO_DEVICE=cpu; export OURO_DEVICE
submit multi3 --nodes=1 --ntasks-per-node=3 --gpus-per-node=1 --cpus-per-task=1 --time=5 \
    "$top_srcdir/slurm/multi-node.sbatch" out="$TMP/multi3"
unset OURO_DEVICE OURO_ARGS

# --- 2. the time-limit path with a stand-in trainer -------------------------
# It prints the keys ouro-run looks for, takes 0.05 s a step, checkpoints
# (OUT/ckpt/latest = the step) and exits on SIGUSR1, and resumes from it;
# to keep the test short a resumed run skips ahead to 20 steps before the end.
cat >"$TMP/standin" <<'EOF'
#!/bin/bash
if [[ ${2:-} == --help ]]; then
    printf '  %-16s %s\n' steps 10 out runs/latest resume "" ckpt_every 0
    exit 0
fi
shift
steps=10 out= resume=
for a; do
    case $a in steps=*) steps=${a#*=} ;; out=*) out=${a#*=} ;; resume=*) resume=${a#*=} ;; esac
done
rank=${SLURM_PROCID:-${OMPI_COMM_WORLD_RANK:-0}}
s=0
if [[ $resume == latest ]]; then
    s=$(cat "$out/ckpt/latest")
    skip=$((steps - 20))
    ((rank == 0)) && echo "standin: resumed at step $s"
    ((s > skip)) || s=$skip
fi
if ((rank == 0)); then
    mkdir -p "$out/ckpt"
    echo "steps=$steps" >"$out/config.txt"
    echo "standin: starting at step $s (resume=${resume:-none})"
fi
stop=0
trap 'stop=1' USR1
while ((s < steps)); do
    sleep 0.05
    s=$((s + 1))
    ((rank == 0)) && echo "{\"step\": $s}" >>"$out/metrics.jsonl"
    if ((stop)); then
        ((rank == 0)) && { echo "$s" >"$out/ckpt/latest"; echo "standin: checkpoint at step $s, exiting"; }
        exit 0
    fi
done
((rank == 0)) && echo "final step=$steps train_loss=0 val_loss=0 params_sha256=standin"
exit 0
EOF
chmod +x "$TMP/standin"
OURO_BIN="$TMP/standin"
submit standin --ntasks=2 --time=1 --signal=B:USR1@55 \
    "$top_srcdir/slurm/one-node.sbatch" steps=100000 out="$TMP/standin-run"
OURO_BIN=$OURO

# --- 3. a sweep as job arrays ------------------------------------------------
"$top_srcdir/launch/sweep" --submit --bin "$OURO" --out "$TMP/sweep" --data "$CORPUS" \
    --sizes tiny --steps 10 --schedules dp,ouroboros --ranks 2 --sbatch-opt=--time=5 \
    >"$TMP/sweep-submit.log" 2>&1 || { cat "$TMP/sweep-submit.log"; fail "launch/sweep --submit failed"; }
cat "$TMP/sweep-submit.log"

# --- results -----------------------------------------------------------------
train emu3 $TINY schedule=ouroboros emulate=1 ranks=3
for j in srun3 mpirun3 multi3; do
    wait_job "$j" 120
    cp "$TMP/$j.out" "$TMP/$j.log"
    final_sha "$TMP/$j.log" >/dev/null
done
grep -q 'srun --mpi=' "$TMP/srun3.out" || fail "srun3 did not launch with srun --mpi"
grep -q 'mpirun -np 3' "$TMP/mpirun3.out" || fail "mpirun3 did not launch with mpirun"
pass "one-node.sbatch with srun, with mpirun, and multi-node.sbatch each ended with a final line ($(elapsed))"
same_sha srun3 emu3 "3-rank ouroboros through srun --mpi=pmix == emulate=1 ranks=3"
same_sha mpirun3 emu3 "3-rank ouroboros through mpirun in a job == emulate=1 ranks=3"
same_sha multi3 emu3 "multi-node.sbatch (1 node x 3 ranks) == emulate=1 ranks=3"

jid=$(cat "$TMP/standin.jid")
release_requeued "$jid"
scontrol update JobId="$jid" TimeLimit=5
wait_job standin 90
grep -q 'got SIGUSR1' "$TMP/standin.out" || fail "standin: the job script never got the warning signal"
grep -q 'standin: checkpoint at step' "$TMP/standin.out" || fail "standin: the ranks did not get SIGUSR1"
grep -q 'requeueing job' "$TMP/standin.out" || fail "standin: the job did not requeue itself"
grep -q 'resume=latest' "$TMP/standin-run/launch.txt" || fail "standin: the requeued job did not pass resume=latest"
grep -q 'standin: resumed at step [1-9]' "$TMP/standin.out" || fail "standin: the requeued run did not resume"
grep -q '^final step=100000 ' "$TMP/standin.out" || fail "standin: no final line after the resume"
pass "--signal=B:USR1 -> ranks stop -> scontrol requeue -> resume=latest (stand-in trainer, $(elapsed))"

for np_jid in $(sed -n 's/.*job array \([0-9]*\).*/\1/p; s/.*gather job \([0-9]*\).*/\1/p' "$TMP/sweep-submit.log"); do
    echo "$np_jid" >"$TMP/sweepjob.jid"
    # array jobs: wait until no task of it is left in the queue
    wait_for 120 "sweep job $np_jid" sh -c "! squeue -h -j $np_jid 2>/dev/null | grep -q ."
done
[ -f "$TMP/sweep/summary.csv" ] || { cat "$TMP/sweep/slurm/"*.out 2>/dev/null | tail -n 20; fail "the sweep's gather job wrote no summary.csv"; }
nok=$(awk -F, 'NR > 1 && $8 == 1' "$TMP/sweep/summary.csv" | wc -l)
[ "$nok" = 2 ] || { cat "$TMP/sweep/summary.csv"; fail "sweep: $nok of 2 runs finished"; }
pass "launch/sweep --submit: 2 array runs and the gather job ($(elapsed))"

# --- 4. the real trainer: checkpoint on SIGUSR1, requeue, resume -------------
keys=$("$OURO" train --help 2>/dev/null | sed -n 's/^  \([a-z_]*\)  .*/\1/p')
if ! echo "$keys" | grep -qx resume; then
    echo "SKIP (sub-check): this ouroboros has no resume= key, so the real trainer's"
    echo "  SIGUSR1 -> checkpoint -> requeue -> resume path was not run; the batch"
    echo "  side was checked above with a stand-in trainer."
else
    ck=
    echo "$keys" | grep -qx ckpt_every && ck=ckpt_every=25
    RARGS="data=$CORPUS schedule=ouroboros $TINY steps=600 log_every=10 eval_every=300 $ck"
    train ref600 $RARGS emulate=1 ranks=3
    OURO_ARGS=$RARGS; export OURO_ARGS
    submit resume --ntasks=3 --time=10 "$top_srcdir/slurm/one-node.sbatch" out="$TMP/resume-run"
    unset OURO_ARGS
    jid=$(cat "$TMP/resume.jid")
    # Stop it once it has checkpointed and before it ends.
    wait_for 90 "the run to pass step 50" sh -c \
        "awk -F'[:,]' '/\"step\"/ { s = \$2 } END { exit !(s + 0 >= 50) }' '$TMP/resume-run/metrics.jsonl' 2>/dev/null"
    scancel --batch --signal=USR1 "$jid"
    release_requeued "$jid"
    wait_job resume 120
    cp "$TMP/resume.out" "$TMP/resume.log"
    grep -q 'resume=latest' "$TMP/resume-run/launch.txt" || fail "resume: the requeued job did not pass resume=latest"
    # A trainer that handles SIGUSR1 stops after an agreed step with a
    # checkpoint there; one that does not dies, and the requeued job goes
    # on from the last periodic checkpoint. Both must end bit for bit equal.
    how=$(sed -n 's/.*\(stopped after step [0-9]*\).*/\1 with a checkpoint/p' "$TMP/resume.out" | head -n 1)
    [ -n "$how" ] || how="killed by SIGUSR1, resumed from the last periodic checkpoint"
    same_sha resume ref600 "SIGUSR1 -> checkpoint -> requeue -> resume == uninterrupted run ($how)"
fi
echo "slurm test done in $(elapsed)"
