#!/bin/sh
# Bad input must end the program with one clear line on stderr,
#   ouroboros: error: <what, naming the key or file>
# and a non-zero status; --help must print usage and succeed.
. "$(dirname "$0")/lib.sh"

# Small and fast, so a check that wrongly starts training ends quickly.
BASE="n_layer=3 n_head=2 n_embd=32 block_size=32 batch_size=4 steps=2 sample_tokens=0"

# expect_error WHAT NEEDLE command...: the command fails with exactly one
# stderr line, which contains "error:" and NEEDLE.
expect_error() {
    what=$1 needle=$2; shift 2
    if "$@" >"$TMP/out" 2>"$TMP/err"; then fail "$what: exited 0"; fi
    lines=$(wc -l <"$TMP/err")
    [ "$lines" -eq 1 ] || { cat "$TMP/err"; fail "$what: $lines stderr lines, not 1"; }
    grep -q 'error:' "$TMP/err" || fail "$what: no 'error:' in: $(cat "$TMP/err")"
    grep -qF -- "$needle" "$TMP/err" || fail "$what: '$needle' not in: $(cat "$TMP/err")"
    pass "$what: $(cat "$TMP/err")"
}
bad() {
    what=$1 needle=$2; shift 2
    expect_error "$what" "$needle" "$OURO" train $BASE out="$TMP/run" "$@"
}

bad "unknown key" bogus data="$CORPUS" bogus=1
bad "negative size" n_layer data="$CORPUS" n_layer=-2
bad "n_embd not a multiple of n_head" n_embd data="$CORPUS" n_embd=30 n_head=4
bad "non-numeric integer" steps data="$CORPUS" steps=abc
bad "non-numeric real" lr data="$CORPUS" lr=1e-3x
bad "bad enum" schedule data="$CORPUS" schedule=foo
bad "missing config file" "$TMP/none.cfg" --config "$TMP/none.cfg" data="$CORPUS"

# The error names the file and the line of the unknown key.
printf 'n_layer=3\n# a comment\nwarp_speed=9\n' >"$TMP/bad.cfg"
bad "unknown key in config file" "$TMP/bad.cfg:3" --config "$TMP/bad.cfg" data="$CORPUS"

: >"$TMP/empty.txt"
bad "empty data file" "$TMP/empty.txt" data="$TMP/empty.txt"
printf 'too short' >"$TMP/short.txt"
bad "data shorter than block_size" "$TMP/short.txt" data="$TMP/short.txt"

# llm.c token shard: a 256 x int32 little-endian header (magic 20240520,
# version 1, token count), then uint16 tokens. 2000 tokens, all 0 except
# 65535 at index 1234. mkbin FILE MAGIC_BYTES (printf octal escapes).
mkbin() {
    {
        printf "$2"
        printf '\001\000\000\000\320\007\000\000' # version 1, 2000 tokens
        head -c 1012 /dev/zero                   # rest of the header
        head -c 2468 /dev/zero                   # tokens 0..1233
        printf '\377\377'                        # token 1234 = 65535
        head -c 1530 /dev/zero                   # tokens 1235..1999
    } >"$1"
}
mkbin "$TMP/badmagic.bin" '\210\330\064\002' # 20240520 has bytes 88 d8 34 01
bad ".bin with a bad magic" magic data="$TMP/badmagic.bin" vocab_size=300
mkbin "$TMP/bigtoken.bin" '\210\330\064\001'
bad ".bin token >= vocab_size" "index 1234" data="$TMP/bigtoken.bin" vocab_size=300

# A learning rate that blows the weights up: the update stops the run and
# names the first tensor whose gradient is not finite.
bad "diverging training" "non-finite gradient in" data="$CORPUS" steps=20 \
    optimizer=sgd lr=1000 warmup=0 grad_clip=0 log_every=100

# 3 ranks per pipeline hold 4 modules; n_layer=3 blocks.
EMU="emulate=1 ranks=3 schedule=ouroboros"
bad "partition with too few entries" partition $EMU data="$CORPUS" partition=1,1,1
bad "partition with the wrong sum" partition $EMU data="$CORPUS" partition=1,1,1,1

# `single` is one process; under mpirun every rank must refuse it. mpirun
# adds its own lines, so only the status and our message are checked.
need_mpi
if "$MPIRUN" -np 2 "$OURO" train $BASE out="$TMP/run" data="$CORPUS" schedule=single \
    >"$TMP/mpi.log" 2>&1; then
    fail "schedule=single under mpirun -np 2: exited 0"
fi
grep -q 'error:.*single' "$TMP/mpi.log" ||
    { cat "$TMP/mpi.log"; fail "schedule=single under mpirun -np 2: no error line naming single"; }
pass "schedule=single under mpirun -np 2: $(grep 'error:' "$TMP/mpi.log" | head -n 1)"

for cmd in "" train sample; do
    name="ouroboros${cmd:+ $cmd} --help"
    "$OURO" $cmd --help >"$TMP/help" 2>&1 || fail "$name exited non-zero"
    grep -q "^usage: ouroboros" "$TMP/help" || fail "$name printed no usage"
    pass "$name"
done
