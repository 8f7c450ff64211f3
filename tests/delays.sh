#!/bin/sh
# The traces of real runs follow the schedules of ALGORITHM.md section 4,
# action for action. With K modules on K-1 ranks, in step t:
#   ouroboros:  module k forwards minibatch t; module K backprops t;
#               module k < K backprops t-(K-k), and only when that is >= 0.
#   ouroboros-pipelined: module k forwards t-k+1; module k < K backprops
#               t-2K+k+1; module K forwards and backprops t-K+1 (each only
#               when >= 0).
#   both:       every rank updates once, and nothing else happens.
# Placement: modules 1 and K on rank 0, module k on rank k-1 otherwise.
. "$(dirname "$0")/lib.sh"
need_mpi

STEPS=12

# check_trace SCHEDULE K DIR: every trace line expected, every expected
# line present, once.
check_trace() {
    for r in $(seq 0 $(($2 - 2))); do
        [ -s "$3/trace-rank$r.txt" ] || fail "$1 K=$2: no $3/trace-rank$r.txt"
    done
    [ ! -e "$3/trace-rank$(($2 - 1)).txt" ] || fail "$1 K=$2: a trace from rank $(($2 - 1)) of $(($2 - 1)) ranks"
    awk -v mode="$1" -v K="$2" -v S="$STEPS" '
        function home(m) { return m == 1 || m == K ? 0 : m - 1 }
        function want(t, r, act, m, mb) { if (mb >= 0) wanted[t " " r " " act " " m " " mb] = 1 }
        function bad(msg) { if (++errors <= 10) print "  " msg; }
        BEGIN {
            for (t = 0; t < S; t++) {
                for (k = 1; k <= K; k++) {
                    if (mode == "ouroboros") {
                        f = t; b = k == K ? t : t - (K - k)
                    } else {
                        f = t - k + 1; b = k == K ? t - K + 1 : t - 2 * K + k + 1
                    }
                    want(t, home(k), "fwd", k, f)
                    want(t, home(k), "bwd", k, b)
                }
                for (r = 0; r < K - 1; r++) want(t, r, "update", 0, t)
            }
        }
        {
            where = FILENAME ":" FNR ": " $0
            file_rank = FILENAME
            sub(/.*trace-rank/, "", file_rank); sub(/\.txt$/, "", file_rank)
            if (NF != 11 || $1 != "step" || $3 != "rank" || $6 != "module" ||
                $8 != "mb" || $10 != "micro" || $11 != 0) { bad("malformed: " where); next }
            if ($4 != file_rank) bad("rank " $4 " in the trace of rank " file_rank ": " where)
            if ($5 != "update" && $4 != home($7))
                bad("module " $7 " runs on rank " $4 ", not " home($7) ": " where)
            key = $2 " " $4 " " $5 " " $7 " " $9
            if (seen[key]++) bad("twice: " where)
            else if (!(key in wanted)) bad("not in the schedule: " where)
        }
        END {
            for (key in wanted)
                if (!(key in seen)) {
                    split(key, p, " ")
                    bad("missing: step " p[1] " rank " p[2] " " p[3] " module " p[4] " mb " p[5])
                }
            if (errors) { print "  problems: " errors; exit 1 }
        }' "$3"/trace-rank*.txt >"$TMP/problems" ||
        { cat "$TMP/problems"; fail "$1 with K=$2 modules breaks its schedule"; }
    pass "$1 with K=$2 modules on $(($2 - 1)) ranks follows its schedule for $STEPS steps"
}

for sched in ouroboros ouroboros-pipelined; do
    for np in 2 3 4; do
        mpitrain "$np" "$sched-$np" $TINY steps=$STEPS trace=1 schedule="$sched"
        check_trace "$sched" $((np + 1)) "$TMP/$sched-$np"
    done
done
