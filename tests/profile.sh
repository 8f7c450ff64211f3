#!/bin/sh
# `ouroboros profile` on the CPU: one table row per module of the plan,
# each with positive forward, backward and total times, the per-rank sums
# and the imbalance line; --help prints usage. Timings themselves are not
# asserted (they depend on the machine), only that they were measured.
. "$(dirname "$0")/lib.sh"

MODEL="n_layer=3 n_head=2 n_embd=32 block_size=32 batch_size=4 device=cpu"

# check_profile NAME MODULES RANKS key=value...: the run succeeds and its
# table has exactly MODULES rows numbered 1..MODULES, with 10 columns,
#   module rank blocks parts params fwd_ms bwd_ms total_ms MFLOP/tok GFLOP/s
# positive times, blocks adding up to n_layer, and RANKS "rank R:" lines.
check_profile() {
    name=$1 modules=$2 ranks=$3; shift 3
    "$OURO" profile $MODEL "$@" >"$TMP/$name.out" 2>&1 ||
        { cat "$TMP/$name.out"; fail "$name: ouroboros profile $* exited non-zero"; }
    grep -q '^ *module  *rank  *blocks  *parts' "$TMP/$name.out" ||
        { cat "$TMP/$name.out"; fail "$name: no table header"; }
    awk -v want="$modules" '
        $1 ~ /^[0-9]+$/ && NF == 10 {
            rows++
            if ($1 != rows) { print "row " rows " is numbered " $1; bad = 1 }
            if (!($6 > 0 && $7 > 0 && $8 > 0)) { print "module " $1 ": times " $6 ", " $7 ", " $8 " not all positive"; bad = 1 }
            if ($5 <= 0) { print "module " $1 ": " $5 " parameters"; bad = 1 }
            blocks += $3
        }
        END {
            if (rows != want) { print rows + 0 " rows, expected " want; bad = 1 }
            if (blocks != 3) { print "blocks add up to " blocks + 0 ", not n_layer=3"; bad = 1 }
            exit bad
        }' "$TMP/$name.out" >"$TMP/$name.why" ||
        { cat "$TMP/$name.out"; fail "$name: $(cat "$TMP/$name.why")"; }
    n=$(grep -c '^rank [0-9]*: module' "$TMP/$name.out" || true)
    [ "$n" -eq "$ranks" ] || { cat "$TMP/$name.out"; fail "$name: $n rank lines, expected $ranks"; }
    grep -q '^imbalance: ' "$TMP/$name.out" || { cat "$TMP/$name.out"; fail "$name: no imbalance line"; }
    pass "$name: $modules modules on $ranks ranks, all timed"
}

# ouroboros on 2 ranks: K = 3 modules (embedding, middle blocks, blocks + head)
check_profile ouroboros-2 3 2 schedule=ouroboros ranks=2
# the default rank count of a pipeline schedule is 2
check_profile bp-default 3 2 schedule=bp
# 3 ranks: K = 4 modules, an explicit partition
check_profile gpipe-3 4 3 schedule=gpipe ranks=3 micro_batches=2 partition=0,2,1,0
# single: the whole model as one module on one rank
check_profile single 1 1 schedule=single

"$OURO" profile --help >"$TMP/help" 2>&1 || fail "ouroboros profile --help exited non-zero"
grep -q "^usage: ouroboros profile" "$TMP/help" || fail "ouroboros profile --help printed no usage"
pass "ouroboros profile --help"
"$OURO" --help | grep -q '^  profile ' || fail "ouroboros --help does not list profile"
pass "ouroboros --help lists profile"
