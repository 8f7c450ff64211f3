# lib.sh - shared set-up of the shell tests, sourced by every tests/*.sh.
#
# Under `make check` automake exports top_builddir, top_srcdir and MPIRUN.
# By hand:  OURO=/path/to/ouroboros top_builddir=. top_srcdir=. sh tests/x.sh
# Exit codes follow automake: 0 pass, 1 fail, 77 skip. KEEP_TMP=1 keeps the
# scratch directory for a look after a failure.

set -eu

top_builddir=${top_builddir:-.}
top_srcdir=${top_srcdir:-.}
OURO=${OURO:-$top_builddir/src/ouroboros}
MPIRUN=${MPIRUN:-mpirun}

# The same environment `make check` gives: one BLAS thread (bit-exact and
# no oversubscription), and Open MPI allowed to run as root with more
# ranks than cores.
: "${OPENBLAS_NUM_THREADS:=1}" "${OMPI_ALLOW_RUN_AS_ROOT:=1}"
: "${OMPI_ALLOW_RUN_AS_ROOT_CONFIRM:=1}" "${OMPI_MCA_rmaps_base_oversubscribe:=1}"
export OPENBLAS_NUM_THREADS OMPI_ALLOW_RUN_AS_ROOT OMPI_ALLOW_RUN_AS_ROOT_CONFIRM
export OMPI_MCA_rmaps_base_oversubscribe
# Byte order for globs and sort, so the corpus is the same everywhere.
LC_ALL=C
export LC_ALL

# fail goes to stderr so that it shows even inside $(...).
fail() { echo "FAIL: $*" >&2; exit 1; }
pass() { echo "PASS: $*"; }
skip() { echo "SKIP: $*"; exit 77; }

[ -x "$OURO" ] || fail "no program at $OURO (build it, or set OURO=)"

# Scratch directory, removed on exit. A test that starts background jobs
# sets ON_EXIT to a command that stops them; it runs first.
ON_EXIT=
TMP=$(mktemp -d "${TMPDIR:-/tmp}/ouro-test.XXXXXX")
cleanup() {
    eval "$ON_EXIT" || true
    if [ "${KEEP_TMP:-0}" = 1 ]; then echo "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

need_mpi() {
    command -v "$MPIRUN" >/dev/null 2>&1 || skip "no MPI launcher ($MPIRUN)"
}

# A small but real text corpus: the first 600 KB of the Python library
# docs in byte order of the file names. Real text makes the losses
# meaningful; the fixed order makes it the same bytes on every run.
DOCS=/usr/share/doc/python3.11/html/_sources/library
CORPUS=$TMP/corpus.txt
set -- "$DOCS"/*.rst.txt
[ -f "$1" ] || skip "no corpus in $DOCS (apt-get install python3.11-doc)"
cat "$@" | head -c 600000 >"$CORPUS"
set --

# A model that trains 20 steps in about a second.
TINY="n_layer=3 n_head=2 n_embd=32 block_size=32 batch_size=4 steps=20 \
log_every=5 eval_every=10 eval_batches=2 sample_tokens=20"

# train NAME key=value...: one process, output in $TMP/NAME.log, run
# directory $TMP/NAME. Fails the test, showing the log, if the run fails.
# (Shell functions share variables: the helpers' own start with _.)
train() {
    _n=$1; shift
    "$OURO" train data="$CORPUS" out="$TMP/$_n" "$@" >"$TMP/$_n.log" 2>&1 ||
        { tail -n 20 "$TMP/$_n.log"; fail "$_n: ouroboros train $* exited non-zero"; }
}

# mpitrain NP NAME key=value...: the same under mpirun with NP ranks.
mpitrain() {
    _np=$1 _n=$2; shift 2
    "$MPIRUN" -np "$_np" "$OURO" train data="$CORPUS" out="$TMP/$_n" "$@" \
        >"$TMP/$_n.log" 2>&1 ||
        { tail -n 20 "$TMP/$_n.log"; fail "$_n: mpirun -np $_np ouroboros train $* exited non-zero"; }
}

# final_field FILE KEY: KEY's value on the line
#   final step=N train_loss=X val_loss=Y params_sha256=H
final_field() {
    _v=$(awk -v k="$2" '$1 == "final" {
            for (i = 2; i <= NF; i++) if (index($i, k "=") == 1) print substr($i, length(k) + 2)
        }' "$1" | tail -n 1)
    [ -n "$_v" ] || fail "$1: no final line with $2="
    echo "$_v"
}
final_sha() { final_field "$1" params_sha256; }

# same_sha A B WHAT: the runs named A and B ended with the same weights.
same_sha() {
    _a=$(final_sha "$TMP/$1.log")
    _b=$(final_sha "$TMP/$2.log")
    [ "$_a" = "$_b" ] || fail "$3: $1 $_a != $2 $_b"
    pass "$3"
}
