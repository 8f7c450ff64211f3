#!/bin/sh
# `bp` is exact backprop around the ring with the same summation order as
# `single`, so its weights must equal single's bit for bit (ALGORITHM.md
# section 4), on any number of ranks and with either activation policy.
. "$(dirname "$0")/lib.sh"
need_mpi

train single $TINY schedule=single
for np in 1 2 3; do
    mpitrain "$np" "bp$np" $TINY schedule=bp
    same_sha single "bp$np" "bp on $np rank(s) == single"
done
mpitrain 3 bp3replay $TINY schedule=bp activations=replay
same_sha single bp3replay "bp activations=replay on 3 ranks == single"
