#!/bin/sh
# run.sh - the GPU test suite, in one command:
#
#   tests/gpu/run.sh [BUILD_DIR]        (BUILD_DIR defaults to ./build)
#
# It builds nothing. BUILD_DIR must hold a CUDA build of src/ouroboros and
# the test programs (cd BUILD_DIR && make && make tests/gpu/test_gpu_kernels
# tests/gpu/test_gpu_model tests/params_diff). Items, each PASS, FAIL or
# SKIP, then a summary:
#   1. test_gpu_kernels: every CUDA kernel against the CPU ops;
#   2. test_gpu_model: the whole model through the Backend, fp32 and bf16;
#   3. 50 training steps device=cuda precision=fp32 against device=cpu from
#      the same seed: the weights (tests/params_diff) and the final losses;
#   4. two device=cuda precision=bf16 runs end with the same params_sha256;
#   5. schedule=bp and schedule=ouroboros on 3 MPI ranks sharing the GPU
#      (device=cuda precision=fp32) give the params_sha256 of their serial
#      emulation (emulate=1 ranks=3).
# Exit status: 0 all passed, 1 something failed, 77 no GPU (automake's
# SKIP). KEEP_TMP=1 keeps the logs and run directories.
#
# tests/lib.sh is not sourced: it needs the Python documentation corpus,
# which GPU machines often lack; this suite writes its own synthetic text.
# The helpers below follow lib.sh's.

set -u

BUILD=${1:-${top_builddir:-./build}}
BUILD=$(cd "$BUILD" 2>/dev/null && pwd) ||
    { echo "run.sh: no build directory ${1:-./build}" >&2; exit 1; }
OURO=$BUILD/src/ouroboros
KERNELS=$BUILD/tests/gpu/test_gpu_kernels
MODEL_TEST=$BUILD/tests/gpu/test_gpu_model
PARAMS_DIFF=$BUILD/tests/params_diff
MPIRUN=${MPIRUN:-mpirun}

# As `make check`: one BLAS thread (bit-exact CPU runs), Open MPI allowed to
# run as root and to place more ranks than cores, shared-memory messages
# copied through a buffer (containers often forbid single-copy reads).
OPENBLAS_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
export OPENBLAS_NUM_THREADS OMPI_ALLOW_RUN_AS_ROOT OMPI_ALLOW_RUN_AS_ROOT_CONFIRM
export OMPI_MCA_rmaps_base_oversubscribe OMPI_MCA_btl_vader_single_copy_mechanism
LC_ALL=C
export LC_ALL

TMP=$(mktemp -d "${TMPDIR:-/tmp}/ouro-gpu.XXXXXX")
cleanup() { if [ "${KEEP_TMP:-0}" = 1 ]; then echo "kept $TMP"; else rm -rf "$TMP"; fi; }
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

N_PASS=0 N_FAIL=0 N_SKIP=0
FAILED=
# result STATUS ITEM DETAIL: one line per item, counted.
result() {
    case $1 in
    PASS) N_PASS=$((N_PASS + 1)) ;;
    SKIP) N_SKIP=$((N_SKIP + 1)) ;;
    *) N_FAIL=$((N_FAIL + 1)); FAILED="$FAILED $2" ;;
    esac
    echo "$1: $2${3:+: $3}"
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

# show_failure WHAT: the end of the log of the run $_n.
show_failure() {
    echo "  $1 failed; its last lines:"
    tail -n 15 "$TMP/$_n.log" | sed 's/^/    /'
    KEEP_TMP=1
}

# train NAME key=value...: one process; 0 when it ran and printed a final line.
train() {
    _n=$1; shift
    "$OURO" train data="$CORPUS" out="$TMP/$_n" "$@" >"$TMP/$_n.log" 2>&1 &&
        [ -n "$(final_field "$TMP/$_n.log" params_sha256)" ] ||
        { show_failure "$_n: ouroboros train $*"; return 1; }
}

# mpitrain NP NAME key=value...: the same under mpirun with NP ranks.
mpitrain() {
    _np=$1 _n=$2; shift 2
    "$MPIRUN" -np "$_np" --oversubscribe "$OURO" train data="$CORPUS" out="$TMP/$_n" "$@" \
        >"$TMP/$_n.log" 2>&1 && [ -n "$(final_field "$TMP/$_n.log" params_sha256)" ] ||
        { show_failure "$_n: $MPIRUN -np $_np ouroboros train $*"; return 1; }
}

# close A B REL: both present and |A - B| <= REL * |B|
close() {
    [ -n "$1" ] && [ -n "$2" ] &&
        awk -v a="$1" -v b="$2" -v r="$3" 'BEGIN { d = a - b; exit !(d * d <= r * r * b * b) }'
}

# run_program ITEM PROGRAM: a test program; its FAIL lines are shown.
run_program() {
    if [ ! -x "$2" ]; then
        result FAIL "$1" "no program $2 (make $(basename "$2") in the build directory)"
        return 1
    fi
    "$2" >"$TMP/$1.log" 2>&1
    _rc=$?
    case $_rc in
    0) result PASS "$1" "$(tail -n 1 "$TMP/$1.log")" ;;
    77) result SKIP "$1" "$(tail -n 1 "$TMP/$1.log")" ;;
    *) grep '^FAIL' "$TMP/$1.log" | head -n 40 | sed 's/^/  /'
       tail -n 3 "$TMP/$1.log" | sed 's/^/  /'
       result FAIL "$1" "exit status $_rc (log: $TMP/$1.log)"
       KEEP_TMP=1 ;;
    esac
    return $_rc
}

# ------------------------------------------------------------------ checks

[ -x "$OURO" ] || { echo "run.sh: no program $OURO; build first" >&2; exit 1; }
case $("$OURO" version 2>&1) in
*cuda*) ;;
*) echo "run.sh: $OURO was built without CUDA ($("$OURO" version 2>&1));" \
       "configure with --with-cuda" >&2
   exit 1 ;;
esac
echo "GPU suite: $("$OURO" version), build $BUILD"
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | sed 's/^/  /'

# 1, 2: the test programs. Item 1 also tells whether there is a GPU.
run_program test_gpu_kernels "$KERNELS"
if [ $? -eq 77 ]; then
    for item in test_gpu_model cpu-vs-cuda-fp32 determinism-bf16 bp-3-ranks ouroboros-3-ranks; do
        result SKIP "$item" "no GPU"
    done
    echo "summary: no GPU visible; $N_SKIP items skipped"
    exit 77
fi
run_program test_gpu_model "$MODEL_TEST"

CORPUS=$TMP/corpus.txt
make_corpus "$CORPUS"
# A model that trains 50 steps in seconds; head size 32 (a size the
# attention kernels handle), 3 blocks so that 3 ranks each get one.
MODEL="n_layer=3 n_head=2 n_embd=64 block_size=64 batch_size=4 log_every=10 \
eval_every=25 eval_batches=2 sample_tokens=0 seed=1337"

# 3. device=cuda precision=fp32 ~ device=cpu. SGD with momentum and no
# clipping, as tests/exact_schedules.sh: the weights are linear in the
# gradients, so the difference measures the gradients' rounding. (AdamW
# would divide near-zero gradients, which are rounding noise on either
# device - e.g. the key biases, whose exact gradient is 0 - by their own
# root mean square and turn them into full-size steps.) The bound, 1e-3 of
# how far 50 steps moved the weights: fp32 rounding differs between the
# devices by ~1e-6 per op and grows slowly along the trajectory; a wrong
# gradient moves the weights by O(1) of that distance. The losses, printed
# from the same numbers, to 1e-3 relative.
SGD="$MODEL steps=50 optimizer=sgd lr=0.05 momentum=0.9 grad_clip=0"
item=cpu-vs-cuda-fp32
if train init $MODEL steps=0 device=cpu &&
    train sgd-cpu $SGD device=cpu && train sgd-cuda $SGD device=cuda precision=fp32; then
    if "$PARAMS_DIFF" "$TMP/sgd-cpu/model.bin" "$TMP/sgd-cuda/model.bin" 1e-3 \
        "$TMP/init/model.bin" >"$TMP/diff" 2>&1; then
        why=
        for key in train_loss val_loss; do
            a=$(final_field "$TMP/sgd-cuda.log" $key) b=$(final_field "$TMP/sgd-cpu.log" $key)
            close "$a" "$b" 1e-3 || why="$why $key cuda $a cpu $b;"
        done
        if [ -z "$why" ]; then
            result PASS $item "weights $(cat "$TMP/diff"); losses within 1e-3"
        else
            result FAIL $item "losses differ:$why"
        fi
    else
        result FAIL $item "weights $(cat "$TMP/diff")"
    fi
else
    result FAIL $item "a run failed"
fi

# 4. GPU determinism in the default precision and optimizer (bf16, AdamW).
item=determinism-bf16
if train bf16-a $MODEL steps=50 device=cuda precision=bf16 &&
    train bf16-b $MODEL steps=50 device=cuda precision=bf16; then
    a=$(final_field "$TMP/bf16-a.log" params_sha256)
    b=$(final_field "$TMP/bf16-b.log" params_sha256)
    if [ "$a" = "$b" ]; then
        result PASS $item "params_sha256 $a twice"
    else
        result FAIL $item "params_sha256 $a, then $b"
    fi
else
    result FAIL $item "a run failed"
fi

# 5. 3 ranks on one GPU == the serial emulation, bit for bit: the executor
# and the transport must not change a single number. The ranks share the
# GPU, so messages go through host memory.
if command -v "$MPIRUN" >/dev/null 2>&1; then
    for sched in bp ouroboros; do
        item=$sched-3-ranks
        GPU3="$MODEL steps=20 schedule=$sched device=cuda precision=fp32"
        if mpitrain 3 "$sched-mpi" $GPU3 && train "$sched-emu" $GPU3 emulate=1 ranks=3; then
            a=$(final_field "$TMP/$sched-mpi.log" params_sha256)
            b=$(final_field "$TMP/$sched-emu.log" params_sha256)
            if [ "$a" = "$b" ]; then
                result PASS $item "mpirun -np 3 == emulate=1 ranks=3: $a"
            else
                result FAIL $item "mpirun -np 3 $a, emulate=1 ranks=3 $b"
            fi
        else
            result FAIL $item "a run failed"
        fi
    done
else
    result SKIP bp-3-ranks "no MPI launcher ($MPIRUN)"
    result SKIP ouroboros-3-ranks "no MPI launcher ($MPIRUN)"
fi

echo "summary: $N_PASS passed, $N_FAIL failed, $N_SKIP skipped${FAILED:+ (failed:$FAILED)}"
if [ "$N_FAIL" -gt 0 ]; then
    KEEP_TMP=1
    exit 1
fi
exit 0
