#!/bin/sh
# The executor's GPU paths, checked on the CPU. device=cpu-staged is the
# CPU's math behind a GPU's memory contract: the executor keeps separate
# host copies of the state, stages every activation and gradient through
# host buffers, sums replica gradients through the host copy, downloads
# before a checkpoint and uploads after a resume, exactly as it does for
# device=cuda. The numbers are the CPU's, so every run must end with the
# same weights as device=cpu, bit for bit.
. "$(dirname "$0")/lib.sh"
need_mpi

# both NAME NP key=value...: the run on the CPU and staged (NP=0: one
# process), and their weights compared.
both() {
    _name=$1 _np=$2; shift 2
    for _dev in cpu cpu-staged; do
        if [ "$_np" = 0 ]; then train "$_name-$_dev" $TINY device=$_dev "$@"
        else mpitrain "$_np" "$_name-$_dev" $TINY device=$_dev "$@"; fi
    done
    same_sha "$_name-cpu" "$_name-cpu-staged" "$* on ${_np#0} ranks: staged == cpu"
}

both single 0 schedule=single
both bp 2 schedule=bp
both gpipe 2 schedule=gpipe micro_batches=2
both dp 2 schedule=dp
both ouro 3 schedule=ouroboros
both pipe-replay 3 schedule=ouroboros-pipelined activations=replay
both hybrid 0 schedule=ouroboros replicas=2 emulate=1 ranks=4

# A checkpoint taken mid-run (stored activations, weights kept for the
# delayed backward, messages in flight) and resumed, all through the
# staged paths, ends as the uninterrupted run does.
if "$OURO" inspect "$TMP" 2>&1 | grep -q 'need HDF5'; then
    echo "SKIP: checkpoints (built without HDF5)"
else
    S="schedule=ouroboros-pipelined activations=store device=cpu-staged"
    mpitrain 3 resumed-1 $TINY $S stop_after=9 out="$TMP/resumed"
    grep -q '^stopped after step 9 of 20' "$TMP/resumed-1.log" ||
        { tail -n 5 "$TMP/resumed-1.log"; fail "no 'stopped after step 9' line"; }
    mpitrain 3 resumed-2 $TINY $S resume=latest out="$TMP/resumed"
    grep -q 'in-flight state restored' "$TMP/resumed-2.log" ||
        { grep resume "$TMP/resumed-2.log"; fail "the staged resume did not restore the in-flight state"; }
    mpitrain 3 whole $TINY $S
    same_sha whole resumed-2 "ouroboros-pipelined staged: stopped after step 9 and resumed == uninterrupted"
fi
