# shellcheck shell=bash
# ouro-job.sh - the part every sbatch template shares; sourced, not run.
#
#   . "$OURO_ROOT/slurm/ouro-job.sh"
#   ouro_job [ouro-run option ...] -- [key=value ...]
#
# ouro_job runs launch/ouro-run in the background, and waits for it:
#  - its output goes both to the job's output file and to
#    OUT/job-JOBID.RESTART.log;
#  - SIGUSR1 (the time-limit warning: #SBATCH --signal=B:USR1@SECONDS) is
#    passed on to the ranks, which checkpoint and exit; the job then
#    requeues itself (scontrol requeue) unless training has finished;
#  - SIGTERM (scancel, pre-emption, the time limit itself) is passed on
#    as SIGUSR1 too, but the job does not requeue itself: Slurm decides;
#  - when a checkpoint exists (OUT/ckpt/latest) the run resumes from it
#    (resume=latest), so a requeued job continues where it stopped.
#
# Training has finished when this attempt's log has a line
# `final step=N ...` with N equal to steps= in OUT/config.txt.
#
# Variables (all optional):
#   OURO_LAUNCHER      srun or mpirun (default: srun --mpi=pmix when Slurm
#                      has PMIx, else mpirun)
#   OURO_DEVICE        cpu or cuda (default cpu)
#   OURO_OUT           run directory (default runs/slurm-JOBID, or
#                      runs/slurm-ARRAYJOB-TASK in a job array)
#   OURO_ARGS          trainer arguments, split on blanks, before the others
#   OURO_CKPT_EVERY    checkpoint every N steps (ckpt_every=N), if supported
#   OURO_MAX_REQUEUES  stop requeueing after this many restarts (default 20)
#   OURO_STOP_SIGNAL   signal sent to the ranks to make them checkpoint and
#                      exit (default USR1)
#   OURO_BIN           the ouroboros program (default build/src/ouroboros)
#   OURO_RUN_OPTS      more launch/ouro-run options, split on blanks

ouro_job_log() { echo "ouro-job[$(date +%H:%M:%S)]: $*"; }

# ouro_job_keys BIN: the keys `BIN train --help` lists.
ouro_job_keys() {
    "$1" train --help 2>/dev/null | sed -n 's/^  \([a-z_][a-z0-9_]*\)  .*/\1/p' || true
}

ouro_job() {
    local root=${OURO_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}
    local bin=${OURO_BIN:-${OURO:-$root/build/src/ouroboros}}
    local run_opts=() targs=() a
    while [[ $# -gt 0 ]]; do
        if [[ $1 == -- ]]; then shift; break; fi
        run_opts+=("$1"); shift
    done
    # OURO_ARGS and OURO_RUN_OPTS are word lists on purpose.
    # shellcheck disable=SC2206
    targs=(${OURO_ARGS:-} "$@")
    # shellcheck disable=SC2206
    run_opts+=(${OURO_RUN_OPTS:-})

    local jobid=${SLURM_JOB_ID:-local$$}
    local restart=${SLURM_RESTART_COUNT:-0}
    local out=${OURO_OUT:-}
    for a in "${targs[@]+"${targs[@]}"}"; do [[ $a == out=* ]] && out=${a#out=}; done
    if [[ -z $out ]]; then
        if [[ -n ${SLURM_ARRAY_JOB_ID:-} ]]; then
            out=runs/slurm-$SLURM_ARRAY_JOB_ID-$SLURM_ARRAY_TASK_ID
        else
            out=runs/slurm-$jobid
        fi
    fi
    mkdir -p "$out"

    local keys ckpt=0
    keys=$(ouro_job_keys "$bin")
    grep -qx resume <<<"$keys" && ckpt=1
    if [[ -n ${OURO_CKPT_EVERY:-} ]]; then
        if grep -qx ckpt_every <<<"$keys"; then
            targs+=("ckpt_every=$OURO_CKPT_EVERY")
        else
            ouro_job_log "OURO_CKPT_EVERY: this ouroboros has no ckpt_every key; ignored"
        fi
    fi

    ouro_job_log "job $jobid restart $restart on ${SLURM_JOB_NODELIST:-$(hostname)}: out=$out"
    local log=$out/job-$jobid.$restart.log
    local fifo
    fifo=$(mktemp -u "${TMPDIR:-/tmp}/ouro-job.XXXXXX")
    mkfifo "$fifo"
    tee -a "$log" <"$fifo" &
    local tee_pid=$!

    _ouro_job_stop=0 _ouro_job_requeue=0
    _ouro_job_pid=
    _ouro_job_sig=${OURO_STOP_SIGNAL:-USR1}
    trap '_ouro_job_on_signal USR1' USR1
    trap '_ouro_job_on_signal TERM' TERM

    "$root/launch/ouro-run" --bin "$bin" --out "$out" --resume \
        ${OURO_LAUNCHER:+--launcher "$OURO_LAUNCHER"} \
        ${OURO_DEVICE:+--device "$OURO_DEVICE"} \
        "${run_opts[@]+"${run_opts[@]}"}" -- "${targs[@]+"${targs[@]}"}" >"$fifo" 2>&1 &
    _ouro_job_pid=$!

    local rc
    while :; do
        rc=0
        wait "$_ouro_job_pid" || rc=$?
        # A trapped signal interrupts `wait`; the run goes on.
        if ((rc > 128)) && kill -0 "$_ouro_job_pid" 2>/dev/null; then continue; fi
        break
    done
    wait "$tee_pid" 2>/dev/null || true
    rm -f "$fifo"
    trap - USR1 TERM

    local steps done_step
    steps=$(sed -n 's/^steps=//p' "$out/config.txt" 2>/dev/null | tail -n 1)
    done_step=$(awk '$1 == "final" { for (i = 2; i <= NF; i++) if ($i ~ /^step=/) s = substr($i, 6) } END { print s }' "$log")
    if [[ -n $done_step && ( -z $steps || $done_step == "$steps" ) ]]; then
        ouro_job_log "training finished (step $done_step); exit status $rc"
        return "$rc"
    fi
    if ((_ouro_job_requeue)); then
        if ((!ckpt)); then
            ouro_job_log "stopped before the end, but this ouroboros cannot resume; not requeueing"
            return 1
        fi
        if ((restart >= ${OURO_MAX_REQUEUES:-20})); then
            ouro_job_log "stopped before the end after $restart restarts (OURO_MAX_REQUEUES); not requeueing"
            return 1
        fi
        if [[ ! -e $out/ckpt/latest ]]; then
            ouro_job_log "warning: no checkpoint in $out/ckpt/latest; the requeued job starts over"
        fi
        ouro_job_log "stopped at the time-limit warning (exit status $rc); requeueing job ${SLURM_JOB_ID:-?}"
        if [[ -n ${SLURM_JOB_ID:-} ]] && scontrol requeue "$SLURM_JOB_ID"; then
            return 0
        fi
        ouro_job_log "scontrol requeue failed (submitted with --no-requeue?)"
        return 1
    fi
    if ((_ouro_job_stop)); then
        ouro_job_log "stopped by SIGTERM (exit status $rc); Slurm decides whether the job comes back"
        return "$((rc == 0 ? 1 : rc))"
    fi
    ouro_job_log "the run ended before the last step with exit status $rc"
    return "$((rc == 0 ? 1 : rc))"
}

_ouro_job_on_signal() {
    _ouro_job_stop=1
    [[ $1 == USR1 ]] && _ouro_job_requeue=1
    ouro_job_log "got SIG$1: asking the ranks to checkpoint and stop (SIG$_ouro_job_sig)"
    if [[ -n $_ouro_job_pid ]]; then
        kill "-$_ouro_job_sig" "$_ouro_job_pid" 2>/dev/null || true
    fi
}
