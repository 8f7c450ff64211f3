#!/bin/sh
# Every schedule is deterministic on the CPU, independent of timing
# (ALGORITHM.md section 7), so the distributed run under mpirun must give
# bit-identical weights to `emulate=1 ranks=P`, one process that plays
# every rank in a valid order.
. "$(dirname "$0")/lib.sh"
need_mpi

# check NP NAME key=value...: mpirun -np NP run == its emulation.
check() {
    np=$1 name=$2; shift 2
    mpitrain "$np" "$name" $TINY "$@"
    train "$name-emu" $TINY emulate=1 ranks="$np" "$@"
    same_sha "$name" "$name-emu" "$* on $np ranks == emulate=1 ranks=$np"
}

for sched in ouroboros ouroboros-pipelined; do
    for act in store replay; do
        for np in 2 3; do
            check "$np" "$sched-$act-$np" schedule="$sched" activations="$act"
        done
    done
done
check 4 hybrid schedule=ouroboros replicas=2
check 3 warmup schedule=ouroboros-pipelined bp_warmup_steps=5
check 3 gpipe schedule=gpipe micro_batches=2

# Guard against a vacuous pass: delayed gradients must change the weights,
# so the ouroboros runs cannot equal exact backprop.
train single $TINY schedule=single
sha_single=$(final_sha "$TMP/single.log")
sha_ouro=$(final_sha "$TMP/ouroboros-store-3.log")
[ "$sha_single" != "$sha_ouro" ] || fail "ouroboros on 3 ranks gave exactly single's weights"
pass "ouroboros (delayed gradients) differs from single"
