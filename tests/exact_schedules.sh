#!/bin/sh
# gpipe (micro-batches on a 3-rank pipeline) and dp (2 ranks, each half the
# minibatch) compute the exact gradient of the same global batch as
# `single`, so they must train to the same weights up to rounding.
#
# Why not bit for bit: the minibatch gradient is a sum over sequences.
# single sums it in one pass; gpipe adds the micro-batch gradients one by
# one and dp adds the ranks' partial sums in an allreduce. Floating-point
# addition is not associative, so the last bits differ and drift a little
# over the steps. (They may happen to be equal; that is not asserted.)
. "$(dirname "$0")/lib.sh"
need_mpi

PARAMS_DIFF=${PARAMS_DIFF:-$top_builddir/tests/params_diff}
[ -x "$PARAMS_DIFF" ] || fail "no $PARAMS_DIFF (make check builds it; by hand: cc -o /tmp/params_diff tests/params_diff.c -lm and set PARAMS_DIFF)"

# compare WHAT TOL A B [INIT]: params_diff of the runs' model.bin.
compare() {
    what=$1 tol=$2 a=$3 b=$4
    init=${5:+$TMP/$5/model.bin}
    if "$PARAMS_DIFF" "$TMP/$a/model.bin" "$TMP/$b/model.bin" "$tol" $init >"$TMP/diff" 2>&1; then
        pass "$what: $(cat "$TMP/diff")"
    else
        fail "$what: $(cat "$TMP/diff")"
    fi
}

# 1. SGD with momentum and no clipping: the weights are linear in the
# gradients, so a wrong gradient scale (a sum instead of a mean over the
# micro-batches or ranks) would show as a difference as large as the
# training itself. Measured against how far training moved the weights
# (from the steps=0 weights), 20 steps differ by about 1e-6: 1e-4 leaves
# room for other BLAS kernels while any real error is far above it.
SGD="$TINY optimizer=sgd lr=0.05 momentum=0.9 grad_clip=0"
train init $TINY steps=0
train sgd-single $SGD schedule=single
mpitrain 3 sgd-gpipe $SGD schedule=gpipe micro_batches=2
mpitrain 2 sgd-dp $SGD schedule=dp
compare "sgd: gpipe micro_batches=2 on 3 ranks ~ single" 1e-4 sgd-single sgd-gpipe init
compare "sgd: dp on 2 ranks ~ single" 1e-4 sgd-single sgd-dp init

# 2. The default AdamW with clipping. Adam divides by the root of the
# squared gradients, which magnifies rounding in tiny gradients, so the
# difference is measured against the size of the weights: after 20 steps
# it is about 5e-7 of the largest weight; 1e-5 is the bound.
train adam-single $TINY schedule=single
mpitrain 3 adam-gpipe $TINY schedule=gpipe micro_batches=2
mpitrain 2 adam-dp $TINY schedule=dp
compare "adamw: gpipe micro_batches=2 on 3 ranks ~ single" 1e-5 adam-single adam-gpipe
compare "adamw: dp on 2 ranks ~ single" 1e-5 adam-single adam-dp

# The same batches are seen, so the reported losses agree too: the last
# minibatch's mean loss and the validation loss, to 1e-5 relative.
for key in val_loss train_loss; do
    for run in sgd-gpipe sgd-dp adam-gpipe adam-dp; do
        ref=${run%-*}-single
        v=$(final_field "$TMP/$run.log" $key)
        r=$(final_field "$TMP/$ref.log" $key)
        awk -v v="$v" -v r="$r" 'BEGIN { d = v - r; exit !(d * d <= 1e-10 * r * r) }' ||
            fail "$run reports $key=$v, single $key=$r"
    done
    pass "gpipe and dp report single's $key"
done
