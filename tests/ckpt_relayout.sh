#!/bin/sh
# Resuming with another layout: a checkpoint of ouroboros on 3 ranks (K=4)
# resumed on 2 ranks (K=3) and on 1 rank (single). Parameters and
# optimizer state are loaded by tensor name, so the weights at the moment
# of loading are exactly the checkpoint's (a resume with nothing left to
# run ends with them: its final params_sha256); the delayed gradients in
# flight are dropped with a warning and the pipeline fills again, and the
# loss goes on from where it was instead of starting over.
. "$(dirname "$0")/lib.sh"
need_mpi
"$OURO" inspect "$TMP" 2>&1 | grep -q 'need HDF5' && skip "built without HDF5"

# Fast enough learning that a restart from scratch would show.
RUN="$TINY lr=3e-3 warmup=3 eval_every=0 sample_tokens=0"
mpitrain 3 three $RUN schedule=ouroboros stop_after=10
CK=$TMP/three/ckpt/step-00000010
"$OURO" inspect "$CK" >"$TMP/inspect.log" 2>&1 || { tail -n 3 "$TMP/inspect.log"; fail "inspect $CK"; }
want=$(sed -n 's/^checkpoint OK: .* params_sha256=//p' "$TMP/inspect.log")

# Loaded, nothing run (steps=10): the weights are the checkpoint's.
mpitrain 2 two-load $RUN schedule=ouroboros resume="$CK" steps=10
train one-load $RUN schedule=single resume="$CK" steps=10
for run in two-load one-load; do
    got=$(final_sha "$TMP/$run.log")
    [ "$got" = "$want" ] || fail "$run: loaded params_sha256 $got, the checkpoint has $want"
done
grep -q 'warning: .*the layout changed (ouroboros on 3 ranks, K=4.*now ouroboros on 2 ranks, K=3.*in-flight state (delayed gradients) is dropped' \
    "$TMP/two-load.log" || { grep -i warn "$TMP/two-load.log"; fail "no re-layout warning"; }
pass "3 ranks -> 2 ranks and -> 1 rank: the loaded weights are the checkpoint's ($want)"
v2=$(final_field "$TMP/two-load.log" val_loss)
v1=$(final_field "$TMP/one-load.log" val_loss)
[ "$v2" = "$v1" ] || fail "the same weights give val_loss $v2 on 2 ranks, $v1 on 1"
pass "and the same validation loss on 2 ranks and on 1: $v2"

# Continued to step 20: the loss goes on smoothly.
mpitrain 2 two $RUN schedule=ouroboros resume="$CK"
train one $RUN schedule=single resume="$CK"
loss_at() { awk -v s="$2" '$1 == "step" && $2 == s "/20" { print $5 }' "$TMP/$1.log"; }
l5=$(loss_at three 5) l10=$(loss_at three 10)
for run in two one; do
    l15=$(loss_at $run 15) l20=$(loss_at $run 20)
    echo "$run: loss at step 5 $l5, 10 $l10 (3 ranks) | resumed: 15 $l15, 20 $l20"
    awk -v a="$l5" -v b="$l10" -v c="$l15" -v d="$l20" \
        'BEGIN { exit !(c < a && c - b < 0.4 && b - c < 0.6 && d < a) }' ||
        fail "$run: the loss does not go on from step 10 ($l5 $l10 -> $l15 $l20)"
done
pass "after re-layout the loss goes on from step 10's $l10"

# An exact schedule re-laid out is still exact: bp on 3 ranks stopped at
# 10 and finished as bp on 2 ranks == single all the way (bp is single,
# bit for bit, on any number of ranks).
train single $RUN schedule=single
mpitrain 3 bp3 $RUN schedule=bp stop_after=10
mpitrain 2 bp2 $RUN schedule=bp resume="$TMP/bp3"
same_sha single bp2 "bp: 3 ranks to step 10, then 2 ranks == single"

# Running past the end of the checkpoint's run: its last messages were
# never sent, so the fill restarts (warned), and the run completes.
train short $RUN steps=10 schedule=ouroboros-pipelined emulate=1 ranks=3
train longer $RUN schedule=ouroboros-pipelined emulate=1 ranks=3 resume="$TMP/short"
grep -q 'warning: resume: steps=20 runs past the checkpoint.s run (steps=10)' "$TMP/longer.log" ||
    { grep -i warn "$TMP/longer.log"; fail "no warning for steps past the checkpoint's run"; }
pass "steps=20 from the final checkpoint of a steps=10 run: warned, fill restarted, $(grep '^final' "$TMP/longer.log" | cut -d' ' -f2-3)"
