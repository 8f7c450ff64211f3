#!/bin/sh
# run.sh - the GPU test suite, in one command:
#
#   tests/gpu/run.sh [BUILD_DIR]
#
# BUILD_DIR defaults to $top_builddir (set by `make check`, which runs this
# from the build directory) or else ./build (by hand, from the source
# root). It builds nothing: BUILD_DIR must hold a CUDA build of
# src/ouroboros and the test programs (cd BUILD_DIR && make && make
# tests/gpu/test_gpu_kernels tests/gpu/test_gpu_model tests/params_diff).
#
# Items, each PASS, FAIL, SKIP or NOTRUN, each in processes of its own
# under a time limit (coreutils `timeout`), so that a crash or a hang in
# one hides none of the others:
#   device              the GPU the CUDA runtime sees (none: exit 77);
#   kernels-GROUP       test_gpu_kernels GROUP, one item per kernel group:
#                       every CUDA kernel against the CPU ops;
#   model-fp32/-bf16    test_gpu_model: the whole model through the
#                       Backend, as one module and as two;
#   model-bf16-mma      the same in bf16 with OURO_ATTENTION=mma;
#   cpu-vs-cuda-fp32    50 training steps device=cuda precision=fp32
#                       against device=cpu from the same seed: the weights
#                       (tests/params_diff) and the final losses;
#   determinism-bf16    two device=cuda precision=bf16 runs end with the
#                       same params_sha256;
#   bp-3-ranks, ouroboros-3-ranks
#                       3 MPI ranks sharing the GPU (device=cuda
#                       precision=fp32) give the params_sha256 of their
#                       serial emulation (emulate=1 ranks=3);
#   resume-bf16         a run stopped at step 9 with a checkpoint and
#                       resumed ends as the uninterrupted one (in-flight
#                       activations of ouroboros-pipelined on the GPU).
# A line per item as it ends (with the failing checks of a failed one),
# then a summary table of at most ~30 lines, printed last.
#
# Time limits per process: 60 s for a kernel group, 90 s for a model
# test, 120 s for a training run, 150 s for an MPI run: ten times what
# each takes on an H100 (one to five seconds, mostly starting CUDA), so
# only a hang reaches them.
#
# Exit status: 0 every item passed (SKIP only for a missing MPI launcher),
# 1 an item failed or was not run, 77 no GPU (automake's SKIP).
#
# Environment:
#   OURO_GPU_LOGS=DIR  copy every log, the run metrics and summary.txt to
#                      DIR at the end (created if needed); defaults to
#                      $OUT when that is set (the output folder of a
#                      remote run), else logs stay in the scratch
#                      directory, kept when something failed.
#   GPU_SUITE_BUDGET=S seconds the suite may take (default 480): an item
#                      still running then is cut, later ones are NOTRUN,
#                      so the summary is always printed. Normal runs take
#                      one to two minutes on an H100.
#   KEEP_TMP=1         keep the scratch directory.
#   MPIRUN             the MPI launcher (default mpirun).
#
# tests/lib.sh is not sourced: it needs the Python documentation corpus,
# which GPU machines often lack; this suite writes its own synthetic text.
# The helpers below follow lib.sh's.

set -u

BUILD=${1:-${top_builddir:-./build}}
BUILD=$(cd "$BUILD" 2>/dev/null && pwd) ||
    { echo "run.sh: no build directory ${1:-${top_builddir:-./build}}" >&2; exit 1; }
OURO=$BUILD/src/ouroboros
KERNELS=$BUILD/tests/gpu/test_gpu_kernels
MODEL_TEST=$BUILD/tests/gpu/test_gpu_model
PARAMS_DIFF=$BUILD/tests/params_diff
MPIRUN=${MPIRUN:-mpirun}
LOGS=${OURO_GPU_LOGS:-${OUT:-}}
BUDGET=${GPU_SUITE_BUDGET:-480}

# As `make check`: one BLAS thread (bit-exact CPU runs), Open MPI allowed to
# run as root and to place more ranks than cores, shared-memory messages
# copied through a buffer (containers often forbid single-copy reads).
OPENBLAS_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
export OPENBLAS_NUM_THREADS OMPI_ALLOW_RUN_AS_ROOT OMPI_ALLOW_RUN_AS_ROOT_CONFIRM
export OMPI_MCA_rmaps_base_oversubscribe OMPI_MCA_btl_vader_single_copy_mechanism
LC_ALL=C
export LC_ALL

TMP=$(mktemp -d "${TMPDIR:-/tmp}/ouro-gpu.XXXXXX") || exit 1
TABLE=$TMP/table.txt
: >"$TABLE"
START=$(date +%s)
N_PASS=0 N_FAIL=0 N_SKIP=0 N_NOTRUN=0
FAILED=
GPU_NAME="no GPU seen yet"

# Logs go to $LOGS (if set) whatever happens; the scratch directory is
# kept when something failed and there is no $LOGS to look at.
save_logs() {
    [ -n "$LOGS" ] || return 0
    mkdir -p "$LOGS" 2>/dev/null || { echo "run.sh: cannot create $LOGS" >&2; return 0; }
    for f in "$TMP"/*.log "$TMP"/summary.txt "$TMP"/diff; do
        [ -f "$f" ] && cp "$f" "$LOGS/" 2>/dev/null
    done
    for f in "$TMP"/*/metrics.jsonl; do
        [ -f "$f" ] && cp "$f" "$LOGS/$(basename "$(dirname "$f")").metrics.jsonl" 2>/dev/null
    done
    return 0
}
cleanup() {
    save_logs
    if [ "${KEEP_TMP:-0}" = 1 ] && [ -z "$LOGS" ]; then echo "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'echo "run.sh: interrupted"; print_table; exit 1' INT TERM HUP

# ------------------------------------------------------------------ helpers

elapsed() { echo $(($(date +%s) - START)); }

# limit SECONDS: the time an item may take, SECONDS or what is left of the
# budget if that is less; 0 when the budget is spent.
limit() {
    _left=$((BUDGET - $(elapsed)))
    if [ "$_left" -lt 10 ]; then
        echo 0
    elif [ "$_left" -lt "$1" ]; then
        echo "$_left"
    else
        echo "$1"
    fi
}

TIMEOUT=$(command -v timeout 2>/dev/null || true)
[ -n "$TIMEOUT" ] || echo "run.sh: no timeout command (coreutils); items run without a time limit"

# timed SECONDS LOG CMD...: CMD with its output in LOG, stopped after
# SECONDS (TERM, then KILL 10 s later; timeout signals CMD's whole process
# group, so mpirun's ranks go too). Returns CMD's status, 124 or 137 when
# it was stopped, which is noted at the end of LOG.
timed() {
    _t=$1 _log=$2
    shift 2
    [ "$_t" -ge 1 ] || _t=1 # timeout 0 would mean no limit at all
    if [ -n "$TIMEOUT" ]; then
        "$TIMEOUT" -k 10 "$_t" "$@" >"$_log" 2>&1
    else
        "$@" >"$_log" 2>&1
    fi
    _rc=$?
    case $_rc in
    124 | 137) printf '\nrun.sh: stopped after the time limit of %s s\n' "$_t" >>"$_log" ;;
    esac
    return $_rc
}

# squeeze: runs of blanks to one space, for one-line details.
squeeze() { tr -s ' \t' '  ' | sed 's/^ //; s/ $//'; }

# result STATUS ITEM SECONDS DETAIL: the item's line now, a row of the table
# for the end.
result() {
    case $1 in
    PASS) N_PASS=$((N_PASS + 1)) ;;
    SKIP) N_SKIP=$((N_SKIP + 1)) ;;
    NOTRUN) N_NOTRUN=$((N_NOTRUN + 1)); FAILED="$FAILED $2" ;;
    *) N_FAIL=$((N_FAIL + 1)); FAILED="$FAILED $2" ;;
    esac
    echo "$1: $2 (${3}s)${4:+: $4}"
    printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$(printf '%s' "${4:-}" | tr '\t\n' '  ')" >>"$TABLE"
}

# print_table: the summary, last thing printed (the tail of the output is
# what a remote run returns). One row per item, details cut to one line.
print_table() {
    echo
    echo "================ GPU suite summary ================"
    echo "GPU: $GPU_NAME"
    echo "build: $BUILD ($("$OURO" version 2>&1 | head -n 1))"
    awk -F'\t' 'BEGIN { printf "%-20s %-6s %5s  %s\n", "item", "result", "secs", "detail" }
        { d = $4; if (length(d) > 100) d = substr(d, 1, 97) "..."
          printf "%-20s %-6s %5s  %s\n", $2, $1, $3, d }' "$TABLE"
    echo "total: $N_PASS passed, $N_FAIL failed, $N_SKIP skipped, $N_NOTRUN not run" \
        "in $(elapsed) s${FAILED:+ (failed or not run:$FAILED)}"
    if [ -n "$LOGS" ]; then
        echo "logs: $LOGS"
    else
        echo "logs: $TMP (kept if something failed; OURO_GPU_LOGS=DIR saves them)"
    fi
}

# show_failure LOG: the FAIL lines (at most 10) and the end of LOG,
# indented, squeezed to one line each.
show_failure() {
    grep -E '^FAIL|FAIL$' "$1" | head -n 10 | squeeze | cut -c1-200 | sed 's/^/    /'
    echo "    ... last lines of $(basename "$1"):"
    tail -n 4 "$1" | squeeze | cut -c1-200 | sed 's/^/    /'
    KEEP_TMP=1
}

# verdict ITEM RC LOG SECONDS: the result of a test program from its exit
# status and its last lines ("N checks, M failed"; a check line cut short
# by a crash or a time limit names the check that was running).
verdict() {
    _summary=$(grep -E '^[0-9]+ checks, [0-9]+ failed$' "$3" | tail -n 1)
    case $2 in
    0) result PASS "$1" "$4" "$_summary" ;;
    77) result SKIP "$1" "$4" "$(tail -n 1 "$3")" ;;
    1) if [ -n "$_summary" ]; then
           _first=$(grep -E '^FAIL|FAIL$' "$3" | head -n 1 | squeeze | cut -c1-120)
           result FAIL "$1" "$4" "$_summary; first: $_first"
       else
           # test_gpu_model names each run on a "---- " line before it
           _in=$(grep '^---- ' "$3" | tail -n 1 | cut -c6-)
           result FAIL "$1" "$4" "died${_in:+ in $_in}: $(tail -n 1 "$3" | squeeze | cut -c1-160)"
       fi
       show_failure "$3" ;;
    124 | 137)
       _at=$(grep -v '^run.sh: ' "$3" | grep -v '^$' | tail -n 1 | squeeze | cut -c1-120)
       result FAIL "$1" "$4" "time limit hit in: $_at"
       show_failure "$3" ;;
    *) result FAIL "$1" "$4" "exit status $2: $(tail -n 1 "$3" | squeeze | cut -c1-150)"
       show_failure "$3" ;;
    esac
}

# run_program ITEM SECONDS PROGRAM ARGS...: a test program as one item.
run_program() {
    _item=$1 _secs=$2 _prog=$3
    shift 3
    if [ ! -x "$_prog" ]; then
        result FAIL "$_item" 0 "no program $_prog (make ${_prog#"$BUILD"/} in $BUILD)"
        return 1
    fi
    _lim=$(limit "$_secs")
    if [ "$_lim" = 0 ]; then
        result NOTRUN "$_item" 0 "the suite's time budget (GPU_SUITE_BUDGET=$BUDGET s) is spent"
        return 1
    fi
    _t0=$(date +%s)
    timed "$_lim" "$TMP/$_item.log" "$_prog" "$@"
    _prc=$?
    verdict "$_item" "$_prc" "$TMP/$_item.log" $(($(date +%s) - _t0))
    return $_prc
}

# A small text with the statistics of words: 300 KB of words drawn from a
# fixed list by a Park-Miller generator (exact in awk's doubles), so every
# machine writes the same bytes.
make_corpus() {
    awk -v bytes=300000 'BEGIN {
        nw = split("the of and to in is it that was for on are with as his they be " \
            "at one have this from or had by word but what some we can out other were " \
            "all there when up use your how said an each she which do their time if " \
            "will way about many then them write would like so these her long make " \
            "thing see him two has look more day could go come did number sound no " \
            "most people my over know water than call first who may down side been", w, " ")
        x = 20240520; n = 0; line = ""
        while (n < bytes) {
            x = (x * 16807) % 2147483647
            word = w[1 + x % nw]
            x = (x * 16807) % 2147483647
            if (x % 9 != 0) { line = line word " "; continue }
            line = line word ".\n"   # a sentence ends about every 9 words
            printf "%s", line
            n += length(line)
            line = ""
        }
    }' >"$1"
}

# final_field LOG KEY: KEY's value on the line
#   final step=N train_loss=X val_loss=Y params_sha256=H
final_field() {
    awk -v k="$2" '$1 == "final" {
        for (i = 2; i <= NF; i++) if (index($i, k "=") == 1) print substr($i, length(k) + 2)
    }' "$1" | tail -n 1
}

# Why the last run failed, for the item's detail.
RUN_WHY=

# run_failed NAME RC WHAT: notes why run NAME failed and shows its log's end.
run_failed() {
    case $2 in
    124 | 137) RUN_WHY="$1: time limit hit" ;;
    0) RUN_WHY="$1: no final line" ;;
    *) # the program's own error line if there is one, else the log's last
       _err=$(grep -m 1 'error' "$TMP/$1.log")
       [ -n "$_err" ] || _err=$(grep -v '^$' "$TMP/$1.log" | tail -n 1)
       RUN_WHY="$1: exit $2: $(echo "$_err" | squeeze | cut -c1-100)" ;;
    esac
    echo "  $1 failed ($3); its last lines:"
    tail -n 12 "$TMP/$1.log" | cut -c1-200 | sed 's/^/    /'
    KEEP_TMP=1
}

# train SECONDS NAME key=value...: one process; 0 when it ran and printed a
# final line.
train() {
    _secs=$1 _n=$2
    shift 2
    _lim=$(limit "$_secs")
    [ "$_lim" != 0 ] || { RUN_WHY="$_n: the suite's time budget is spent"; return 1; }
    timed "$_lim" "$TMP/$_n.log" "$OURO" train data="$CORPUS" out="$TMP/$_n" "$@"
    _rc=$?
    [ $_rc -eq 0 ] && [ -n "$(final_field "$TMP/$_n.log" params_sha256)" ] && return 0
    run_failed "$_n" $_rc "ouroboros train $*"
    return 1
}

# mpitrain SECONDS NP NAME key=value...: the same under mpirun with NP ranks.
mpitrain() {
    _secs=$1 _np=$2 _n=$3
    shift 3
    _lim=$(limit "$_secs")
    [ "$_lim" != 0 ] || { RUN_WHY="$_n: the suite's time budget is spent"; return 1; }
    timed "$_lim" "$TMP/$_n.log" "$MPIRUN" $MPI_FLAGS -np "$_np" "$OURO" train \
        data="$CORPUS" out="$TMP/$_n" "$@"
    _rc=$?
    [ $_rc -eq 0 ] && [ -n "$(final_field "$TMP/$_n.log" params_sha256)" ] && return 0
    run_failed "$_n" $_rc "$MPIRUN $MPI_FLAGS -np $_np ouroboros train $*"
    return 1
}

# run_failure ITEM: the row of an item one of whose runs failed (NOTRUN
# when it could not start for the budget).
run_failure() {
    case $RUN_WHY in
    *"time budget"*) result NOTRUN "$1" "$(secs)" "$RUN_WHY" ;;
    *) result FAIL "$1" "$(secs)" "a run failed: $RUN_WHY" ;;
    esac
}

# close A B REL: both present and |A - B| <= REL * |B|
close() {
    [ -n "$1" ] && [ -n "$2" ] &&
        awk -v a="$1" -v b="$2" -v r="$3" 'BEGIN { d = a - b; exit !(d * d <= r * r * b * b) }'
}

# same_sha ITEM A B LABEL_A LABEL_B SAYS: the row of ITEM, PASS when the
# runs A and B ended with the same params_sha256 (saying SAYS and the
# hash), else FAIL naming both.
same_sha() {
    _a=$(final_field "$TMP/$2.log" params_sha256)
    _b=$(final_field "$TMP/$3.log" params_sha256)
    if [ "$_a" = "$_b" ]; then
        result PASS "$1" "$(secs)" "$6: $(echo "$_a" | cut -c1-16)..."
    else
        result FAIL "$1" "$(secs)" "$4 $_a, $5 $_b"
    fi
}

# begin_item: the time an item starts, for its row.
begin_item() { T0=$(date +%s); }
secs() { echo $(($(date +%s) - T0)); }

# ------------------------------------------------------------------ checks

[ -x "$OURO" ] || { echo "run.sh: no program $OURO; build first" >&2; exit 1; }
case $("$OURO" version 2>&1) in
*cuda*) ;;
*) echo "run.sh: $OURO was built without CUDA ($("$OURO" version 2>&1));" \
       "configure with --with-cuda" >&2
   exit 1 ;;
esac
echo "GPU suite: $("$OURO" version), build $BUILD, budget $BUDGET s"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=index,name,memory.total,compute_mode,driver_version \
        --format=csv,noheader 2>&1 | sed 's/^/  nvidia-smi: /'
fi

# The device. test_gpu_kernels --device exits 77 when the CUDA runtime
# sees no GPU; without the program, nvidia-smi decides.
begin_item
if [ -x "$KERNELS" ]; then
    timed "$(limit 60)" "$TMP/device.log" "$KERNELS" --device
    rc=$?
else
    echo "run.sh: no $KERNELS; asking nvidia-smi whether there is a GPU" >"$TMP/device.log"
    if nvidia-smi -L >>"$TMP/device.log" 2>&1; then rc=0; else rc=77; fi
fi
case $rc in
0) GPU_NAME=$(grep -E '^device 0:|^GPU 0:' "$TMP/device.log" | head -n 1 | cut -d' ' -f3-)
   GPU_NAME=${GPU_NAME:-unknown}
   result PASS device "$(secs)" "$GPU_NAME" ;;
77) GPU_NAME="none visible"
    result SKIP device "$(secs)" "no GPU visible: $(tail -n 1 "$TMP/device.log")"
    print_table
    echo "summary: no GPU visible; the suite is skipped"
    exit 77 ;;
*) result FAIL device "$(secs)" "exit $rc: $(tail -n 1 "$TMP/device.log" | squeeze | cut -c1-150)"
   show_failure "$TMP/device.log" ;;
esac

# The kernels, one group per process.
# (not GROUPS: bash, which may be sh, ignores assignments to that name)
KERNEL_GROUPS=$("$KERNELS" --list 2>/dev/null) ||
    KERNEL_GROUPS="cast elementwise gelu embedding layernorm attention bias crossentropy
optimizer reductions"
for g in $KERNEL_GROUPS; do
    run_program "kernels-$g" 60 "$KERNELS" "$g"
done

# The model through the Backend, one precision per process.
run_program model-fp32 90 "$MODEL_TEST" fp32
run_program model-bf16 90 "$MODEL_TEST" bf16
# The same with the mma.sync attention (the default is WMMA; the kernels
# items above run every path on its own). A path the caller chose with
# OURO_ATTENTION stays in force for the other items.
caller_attention=${OURO_ATTENTION-unset}
OURO_ATTENTION=mma
export OURO_ATTENTION
run_program model-bf16-mma 90 "$MODEL_TEST" bf16
if [ "$caller_attention" = unset ]; then unset OURO_ATTENTION; else OURO_ATTENTION=$caller_attention; fi

CORPUS=$TMP/corpus.txt
make_corpus "$CORPUS"
# A model that trains 50 steps in seconds; head size 32 (a size the
# attention kernels handle), 3 blocks so that 3 ranks each get one.
MODEL="n_layer=3 n_head=2 n_embd=64 block_size=64 batch_size=4 log_every=10 \
eval_every=25 eval_batches=2 sample_tokens=0 seed=1337"

# device=cuda precision=fp32 ~ device=cpu. SGD with momentum and no
# clipping, as tests/exact_schedules.sh: the weights are linear in the
# gradients, so the difference measures the gradients' rounding. (AdamW
# would divide near-zero gradients, which are rounding noise on either
# device - e.g. the key biases, whose exact gradient is 0 - by their own
# root mean square and turn them into full-size steps.) The bound, 1e-3 of
# how far 50 steps moved the weights (params_diff A B TOL INIT: max |a-b|
# over max |a-init|): fp32 rounding differs between the devices by ~1e-6
# per op and grows slowly along the trajectory; a wrong gradient moves the
# weights by O(1) of that distance. The losses, printed from the same
# numbers, to 1e-3 relative.
SGD="$MODEL steps=50 optimizer=sgd lr=0.05 momentum=0.9 grad_clip=0"
item=cpu-vs-cuda-fp32
begin_item
if [ "$(limit 60)" = 0 ]; then
    result NOTRUN $item 0 "the suite's time budget (GPU_SUITE_BUDGET=$BUDGET s) is spent"
elif train 120 init $MODEL steps=0 device=cpu && train 120 sgd-cpu $SGD device=cpu &&
    train 120 sgd-cuda $SGD device=cuda precision=fp32; then
    "$PARAMS_DIFF" "$TMP/sgd-cpu/model.bin" "$TMP/sgd-cuda/model.bin" 1e-3 \
        "$TMP/init/model.bin" >"$TMP/diff" 2>&1
    drc=$?
    diff_line=$(squeeze <"$TMP/diff" | tr '\n' ' ')
    ratio=$(sed -n 's/.*ratio \([^ ]*\).*/\1/p' "$TMP/diff")
    if [ $drc -eq 0 ]; then
        why=
        for key in train_loss val_loss; do
            a=$(final_field "$TMP/sgd-cuda.log" $key) b=$(final_field "$TMP/sgd-cpu.log" $key)
            close "$a" "$b" 1e-3 || why="$why $key cuda $a cpu $b;"
        done
        if [ -z "$why" ]; then
            result PASS $item "$(secs)" \
                "weights moved apart by $ratio of their travel (<= 1e-3); losses within 1e-3"
        else
            result FAIL $item "$(secs)" "losses differ:$why weights: $diff_line"
        fi
    elif [ $drc -eq 1 ]; then
        result FAIL $item "$(secs)" \
            "weights moved apart by $ratio of their travel (> 1e-3): $diff_line"
    else
        result FAIL $item "$(secs)" "params_diff could not compare (exit $drc): $diff_line"
    fi
else
    run_failure $item
fi

# GPU determinism in the default precision and optimizer (bf16, AdamW).
item=determinism-bf16
begin_item
if [ "$(limit 60)" = 0 ]; then
    result NOTRUN $item 0 "the suite's time budget (GPU_SUITE_BUDGET=$BUDGET s) is spent"
elif train 120 bf16-a $MODEL steps=50 device=cuda precision=bf16 &&
    train 120 bf16-b $MODEL steps=50 device=cuda precision=bf16; then
    la=$(final_field "$TMP/bf16-a.log" train_loss)
    same_sha $item bf16-a bf16-b "params_sha256" "then" "the same params_sha256 twice (loss $la)"
else
    run_failure $item
fi

# 3 ranks on one GPU == the serial emulation, bit for bit: the executor
# and the transport must not change a single number. The ranks share the
# GPU, so messages go through host memory (NCCL refuses two ranks on one
# GPU; the transport falls back). Open MPI needs --oversubscribe where the
# machine has fewer cores than ranks, and --allow-run-as-root as root (the
# OMPI_ALLOW_RUN_AS_ROOT variables above do the same from Open MPI 4 on);
# other launchers get no flags.
MPI_FLAGS=
case $("$MPIRUN" --version 2>&1) in
*"Open MPI"* | *OpenRTE* | *"Open RTE"*)
    MPI_FLAGS=--oversubscribe
    [ "$(id -u)" = 0 ] && MPI_FLAGS="$MPI_FLAGS --allow-run-as-root" ;;
esac
for sched in bp ouroboros; do
    item=$sched-3-ranks
    begin_item
    GPU3="$MODEL steps=20 schedule=$sched device=cuda precision=fp32 comm_timeout=60"
    if ! command -v "$MPIRUN" >/dev/null 2>&1; then
        result SKIP $item 0 "no MPI launcher ($MPIRUN)"
    elif [ "$(limit 60)" = 0 ]; then
        result NOTRUN $item 0 "the suite's time budget (GPU_SUITE_BUDGET=$BUDGET s) is spent"
    elif mpitrain 150 3 "$sched-mpi" $GPU3 && train 120 "$sched-emu" $GPU3 emulate=1 ranks=3; then
        same_sha $item "$sched-mpi" "$sched-emu" "mpirun -np 3" "emulate=1 ranks=3" \
            "mpirun -np 3 == emulate=1 ranks=3"
    else
        run_failure $item
    fi
done

# A checkpoint in mid-run and a resume on the GPU, against the run that
# never stopped: the backend's own export and import of the in-flight
# activations (and of the weights a delayed backward keeps) and the
# state's download and upload. Emulated ranks, so no launcher is needed.
item=resume-bf16
begin_item
RES="$MODEL steps=20 schedule=ouroboros-pipelined activations=store emulate=1 ranks=3"
RES="$RES device=cuda precision=bf16"
if "$OURO" inspect "$TMP" 2>&1 | grep -q 'need HDF5'; then
    result SKIP $item 0 "built without HDF5: no checkpoints"
elif [ "$(limit 60)" = 0 ]; then
    result NOTRUN $item 0 "the suite's time budget (GPU_SUITE_BUDGET=$BUDGET s) is spent"
elif train 120 resume-whole $RES; then
    _lim=$(limit 120)
    timed "$_lim" "$TMP/resume-stop.log" "$OURO" train data="$CORPUS" out="$TMP/resume-r" \
        $RES stop_after=9
    if ! grep -q '^stopped after step 9 of 20' "$TMP/resume-stop.log"; then
        result FAIL $item "$(secs)" "no 'stopped after step 9' ($TMP/resume-stop.log): $(tail -n 1 "$TMP/resume-stop.log")"
    elif train 120 resume-go $RES resume=latest out="$TMP/resume-r"; then
        if ! grep -q 'in-flight state restored' "$TMP/resume-go.log"; then
            result FAIL $item "$(secs)" "the resume did not restore the in-flight state"
        else
            same_sha $item resume-whole resume-go "uninterrupted" "stopped and resumed" \
                "stopped after step 9, resumed == uninterrupted"
        fi
    else
        run_failure $item
    fi
else
    run_failure $item
fi

print_table >"$TMP/summary.txt"
cat "$TMP/summary.txt"
if [ "$N_FAIL" -gt 0 ] || [ "$N_NOTRUN" -gt 0 ]; then
    KEEP_TMP=1
    exit 1
fi
exit 0
