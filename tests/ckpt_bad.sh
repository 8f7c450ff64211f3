#!/bin/sh
# A damaged checkpoint is never loaded: resuming from it, inspecting it or
# evaluating it ends with one line on stderr that names the bad file and
# says what is wrong, a non-zero status, and not a byte of the checkpoint
# changed. The damage: a missing shard, a truncated shard, a flipped byte
# in a tensor (caught by the shard's SHA-256 in the manifest, and with the
# manifest made to agree, by the dataset's Fletcher32), a manifest of
# another model size, a tensor of the wrong shape, a checkpoint from a
# newer format version, and a directory that is missing, a file, empty or
# unreadable.
. "$(dirname "$0")/lib.sh"
need_mpi
TAMPER=${CKPT_TAMPER:-$top_builddir/tests/ckpt_tamper}
[ -x "$TAMPER" ] || fail "no $TAMPER (make check builds it)"
"$OURO" inspect "$TMP" 2>&1 | grep -q 'need HDF5' && skip "built without HDF5"

# Two ranks (emulated: one process, so one stderr line), 8 steps.
RUN="$TINY steps=8 eval_every=0 sample_tokens=0 schedule=ouroboros emulate=1 ranks=2"
train good $RUN ckpt_every=4
GOOD=$TMP/good/ckpt/step-00000004
[ -f "$GOOD/shard-00001.h5" ] || fail "no checkpoint at $GOOD"
train other $RUN n_layer=2 ckpt_every=4 # another model size

# fresh NAME: a copy of the good checkpoint, to damage.
fresh() { rm -rf "$TMP/$1"; mkdir -p "$TMP/$1"; cp -r "$GOOD" "$TMP/$1/step-00000004"; echo "$TMP/$1/step-00000004"; }
sums() { if [ -e "$1" ]; then find "$1" -type f | LC_ALL=C sort | xargs sha256sum; fi; }

# rejects WHAT DIR NEEDLE command...: fails with exactly one stderr line
# holding "error:" and NEEDLE, and leaves DIR as it was.
rejects() {
    what=$1 dir=$2 needle=$3; shift 3
    sums "$dir" >"$TMP/before"
    if "$@" >"$TMP/out" 2>"$TMP/err"; then fail "$what: exited 0"; fi
    [ "$(wc -l <"$TMP/err")" -eq 1 ] || { cat "$TMP/err"; fail "$what: not one stderr line"; }
    grep -q 'error:' "$TMP/err" || fail "$what: no 'error:' in: $(cat "$TMP/err")"
    grep -qF -- "$needle" "$TMP/err" || fail "$what: '$needle' not in: $(cat "$TMP/err")"
    sums "$dir" | cmp -s - "$TMP/before" || fail "$what: the checkpoint files changed"
    pass "$what: $(cat "$TMP/err")"
}

# each WHAT DIR NEEDLE: inspect, eval and resume all reject it.
each() {
    rejects "inspect, $1" "$2" "$3" "$OURO" inspect "$2"
    rejects "eval, $1" "$2" "$3" "$OURO" eval checkpoint="$2" data="$CORPUS"
    rejects "resume, $1" "$2" "$3" "$OURO" train data="$CORPUS" out="$TMP/resumed" $RUN resume="$2"
}

d=$(fresh missing); rm "$d/shard-00001.h5"
each "missing shard" "$d" "$d/shard-00001.h5: missing shard"

d=$(fresh truncated); size=$(wc -c <"$d/shard-00001.h5")
head -c $((size / 2)) "$GOOD/shard-00001.h5" >"$d/shard-00001.h5"
each "truncated shard" "$d" "$d/shard-00001.h5: $((size / 2)) bytes, the manifest says $size"

# flip DIR DATASET: inverts one byte in the middle of wte's numbers.
flip() {
    off=$("$TAMPER" offset "$1/shard-00000.h5" "$2") || fail "no offset of $2"
    off=$((off + 1000))
    byte=$(dd if="$1/shard-00000.h5" bs=1 skip="$off" count=1 2>/dev/null | od -An -tu1 | tr -d ' ')
    printf "$(printf '\\%03o' $((255 - byte)))" |
        dd of="$1/shard-00000.h5" bs=1 seek="$off" conv=notrunc 2>/dev/null
}
d=$(fresh flipped); flip "$d" params/wte
cmp -s "$d/shard-00000.h5" "$GOOD/shard-00000.h5" && fail "the byte flip changed nothing"
each "flipped byte in a tensor" "$d" "$d/shard-00000.h5: SHA-256"
d=$(fresh flipped-rehashed); flip "$d" params/wte; "$TAMPER" rehash "$d"
each "flipped byte, manifest agreeing" "$d" "$d/shard-00000.h5: reading params/wte failed its Fletcher32 checksum"

d=$(fresh shape); "$TAMPER" reshape "$d/shard-00000.h5" params/wte; "$TAMPER" rehash "$d"
each "tensor of the wrong shape" "$d" "$d/shard-00000.h5: tensor params/wte has shape [32, 256], the model needs [256, 32]"

d=$(fresh newer); "$TAMPER" set-int "$d/manifest.h5" format_version 2
each "newer format version" "$d" "$d/manifest.h5: checkpoint format version 2"

# The manifest of another model size: resuming this model from it, and a
# manifest swapped in from the other run (its shards are not these).
rejects "resume another model size" "$GOOD" "$GOOD/manifest.h5: the checkpoint holds another model size" \
    "$OURO" train data="$CORPUS" out="$TMP/resumed" $RUN n_embd=64 resume="$GOOD"
d=$(fresh swapped); cp "$TMP/other/ckpt/step-00000004/manifest.h5" "$d/manifest.h5"
rejects "inspect, manifest of another run" "$d" "$d/shard-00000.h5: " "$OURO" inspect "$d"
rejects "resume, manifest of another model size" "$d" "$d/manifest.h5: the checkpoint holds another model size" \
    "$OURO" train data="$CORPUS" out="$TMP/resumed" $RUN resume="$d"

# Directories that are not checkpoints.
each "missing directory" "$TMP/nowhere" "$TMP/nowhere: cannot open the checkpoint"
each "a file, not a directory" "$CORPUS" "$CORPUS: not a checkpoint directory"
mkdir -p "$TMP/empty/step-00000004"
each "empty step directory" "$TMP/empty/step-00000004" "$TMP/empty/step-00000004/manifest.h5: missing"
each "directory with no checkpoint" "$TMP/empty" "$TMP/empty: not a checkpoint"
if [ "$(id -u)" != 0 ]; then # root reads every directory
    d=$(fresh unreadable); chmod 000 "$d"
    rejects "unreadable directory" "$d" "$d: cannot" "$OURO" inspect "$d"
    chmod 755 "$d"
fi

# resume=latest in the run directory itself: the run's checkpoints stay
# as they are, and under mpirun the job fails naming the file.
cp -r "$TMP/good" "$TMP/run"
rm "$TMP/run/ckpt/step-00000008/shard-00000.h5"
sums "$TMP/run/ckpt" >"$TMP/run-before"
if "$MPIRUN" -np 2 "$OURO" train data="$CORPUS" out="$TMP/run" $TINY steps=8 schedule=ouroboros \
    resume=latest >"$TMP/mpi.log" 2>&1; then fail "mpirun resume of a bad checkpoint exited 0"; fi
grep -q "error: .*$TMP/run/ckpt/step-00000008/shard-00000.h5: missing shard" "$TMP/mpi.log" ||
    { tail -n 5 "$TMP/mpi.log"; fail "mpirun: no error naming the missing shard"; }
sums "$TMP/run/ckpt" | cmp -s - "$TMP/run-before" || fail "mpirun: the run's checkpoints changed"
pass "mpirun -np 2 resume=latest of a bad checkpoint fails naming the shard; nothing written"

# The good one is fine throughout.
"$OURO" inspect "$GOOD" >"$TMP/inspect.log" 2>&1 || { tail -n 3 "$TMP/inspect.log"; fail "inspect of the good checkpoint"; }
pass "the good checkpoint: $(tail -n 1 "$TMP/inspect.log")"
