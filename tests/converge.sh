#!/bin/sh
# Delayed gradients must not cost much accuracy: on the default corpus,
# with the same budget and hyperparameters, ouroboros on 2 ranks (K=3
# modules: the blocks of module 2 one step stale, the embedding two) ends
# within 3% of exact backprop's validation loss.
#
# The budget is about 25 s a run on 2 cores. Staleness costs more as the
# learning rate grows; at this lr (the program's default) and warm-up the
# gap measured about 2% over three seeds. At lr=2e-3 it is about 15%
# (val 3.28 vs 2.85 after 400 steps), which is why lr is not higher.
. "$(dirname "$0")/lib.sh"
need_mpi

CONV="data=default n_layer=4 n_head=4 n_embd=64 block_size=64 batch_size=8 \
steps=400 lr=1e-3 warmup=100 eval_every=0 eval_batches=16 log_every=100 \
sample_tokens=0"

mpitrain 2 bp $CONV schedule=bp
mpitrain 2 ouroboros $CONV schedule=ouroboros
bp=$(final_field "$TMP/bp.log" val_loss)
ouro=$(final_field "$TMP/ouroboros.log" val_loss)
ratio=$(awk -v o="$ouro" -v b="$bp" 'BEGIN { printf "%.4f", o / b }')
echo "val_loss after 400 steps: bp $bp, ouroboros $ouro (ratio $ratio)"

# Both must have learned something: a byte model starts at ln 256 = 5.55.
awk -v b="$bp" 'BEGIN { exit !(b < 3.5) }' || fail "bp did not learn: val_loss $bp"
awk -v r="$ratio" 'BEGIN { exit !(r <= 1.03) }' ||
    fail "ouroboros val_loss $ouro is more than 3% above bp's $bp"
pass "ouroboros val_loss $ouro is within 3% of bp's $bp"
