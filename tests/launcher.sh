#!/bin/sh
# launch/ouro-run, launch/sweep and launch/perfmodel: the commands the
# launcher builds for this machine, a hostfile, GPUs and a Slurm
# allocation (--dry-run), its errors, a real 3-rank run through it (same
# weights as emulate=1 ranks=3), a two-run local sweep with its CSV files,
# and the performance model on that sweep.
. "$(dirname "$0")/lib.sh"
need_mpi

RUN=$top_srcdir/launch/ouro-run
# The launcher must set Open MPI's root switches itself.
unset OMPI_ALLOW_RUN_AS_ROOT OMPI_ALLOW_RUN_AS_ROOT_CONFIRM OURO_LAUNCHER
unset SLURM_JOB_ID SLURM_NTASKS SLURM_JOB_NUM_NODES SLURM_NNODES SLURM_GPUS_ON_NODE SLURM_GPUS_PER_NODE

# dry NAME ARGS...: the --dry-run command line of `ouro-run ARGS` in $TMP/NAME.cmd
dry() {
    _n=$1; shift
    "$RUN" --dry-run --bin "$OURO" "$@" >"$TMP/$_n.cmd" 2>"$TMP/$_n.err" ||
        { cat "$TMP/$_n.err"; fail "$_n: ouro-run --dry-run $* exited non-zero"; }
}
# has NAME WORDS: the command of NAME contains WORDS (a fixed string)
has() {
    grep -qF -- "$2" "$TMP/$1.cmd" || { cat "$TMP/$1.cmd"; fail "$1: no '$2' in the command"; }
}
hasnt() {
    ! grep -qF -- "$2" "$TMP/$1.cmd" || { cat "$TMP/$1.cmd"; fail "$1: '$2' should not be in the command"; }
}
# refuses NAME PATTERN ARGS...: ouro-run exits 2 with an error matching PATTERN
refuses() {
    _n=$1 _p=$2; shift 2
    _rc=0
    "$RUN" --dry-run --bin "$OURO" "$@" >"$TMP/$_n.out" 2>&1 || _rc=$?
    [ "$_rc" = 2 ] || { cat "$TMP/$_n.out"; fail "$_n: ouro-run $* exited $_rc, not 2"; }
    grep -q "$_p" "$TMP/$_n.out" || { cat "$TMP/$_n.out"; fail "$_n: no '$_p' in the error"; }
}

"$RUN" --help | grep -q -- '--dry-run' || fail "ouro-run --help does not describe --dry-run"
pass "ouro-run --help"

cores=$(nproc)
over=$((cores + 1))
dry local -n "$over" schedule=ouroboros out="$TMP/x"
has local "mpirun -np $over"
has local "--oversubscribe"
has local "OPENBLAS_NUM_THREADS=1"
has local "-x OPENBLAS_NUM_THREADS"
has local "train schedule=ouroboros out=$TMP/x"
if [ "$(id -u)" = 0 ]; then
    has local "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1"
else
    hasnt local "OMPI_ALLOW_RUN_AS_ROOT"
fi
pass "local: mpirun -np $over on $cores cores is oversubscribed, one BLAS thread, root handled"

dry one -n 1 schedule=single out="$TMP/x"
has one "--map-by core --bind-to core"
hasnt one "--oversubscribe"
dry threads -n 1 --threads 2 schedule=single out="$TMP/x"
has threads "OPENBLAS_NUM_THREADS=2"
has threads "threads=2"
pass "binding to cores when the ranks fit; --threads sets the BLAS threads and threads="

printf 'nodeA slots=4\nnodeB slots=2  # comment\n\n' >"$TMP/hosts"
dry hostfile --hostfile "$TMP/hosts" schedule=dp out="$TMP/x"
has hostfile "mpirun -np 6 --hostfile $TMP/hosts"
has hostfile "-x PATH"
dry gpu --hostfile "$TMP/hosts" --device cuda --gpus-per-node 4 schedule=ouroboros replicas=2 out="$TMP/x"
has gpu "--map-by ppr:4:node"
has gpu "NCCL_DEBUG=WARN"
has gpu "--rank-exec"
pass "hostfile: ranks = slots, PATH exported; cuda: one rank per GPU, NCCL variables"

# The GPU a rank sees comes from its local rank.
v=$(OMPI_COMM_WORLD_LOCAL_RANK=3 OURO_GPUS_PER_NODE=2 "$RUN" --rank-exec sh -c 'echo $CUDA_VISIBLE_DEVICES')
[ "$v" = 1 ] || fail "--rank-exec: local rank 3 of 2 GPUs saw CUDA_VISIBLE_DEVICES=$v, not 1"
v=$(SLURM_LOCALID=1 CUDA_VISIBLE_DEVICES=4,5 "$RUN" --rank-exec sh -c 'echo $CUDA_VISIBLE_DEVICES')
[ "$v" = 5 ] || fail "--rank-exec: local rank 1 of Slurm's GPUs 4,5 saw $v, not 5"
pass "--rank-exec gives each rank its own GPU"

# A Slurm allocation, with a stand-in srun that knows pmix.
mkdir -p "$TMP/bin"
cat >"$TMP/bin/srun" <<'EOF'
#!/bin/sh
[ "$1" = --mpi=list ] && { echo "MPI plugin types are..."; echo "	pmix"; echo "	none"; exit 0; }
echo "stand-in srun $*"
EOF
chmod +x "$TMP/bin/srun"
PATH=$TMP/bin:$PATH SLURM_JOB_ID=42 SLURM_NTASKS=6 SLURM_JOB_NUM_NODES=2 \
    dry slurm schedule=ouroboros replicas=2
has slurm "srun --mpi=pmix --ntasks=6 --kill-on-bad-exit=1"
has slurm "out=runs/slurm-42"
hasnt slurm "mpirun"
PATH=$TMP/bin:$PATH SLURM_JOB_ID=42 SLURM_NTASKS=6 SLURM_JOB_NUM_NODES=2 \
    dry slurm-mpirun --launcher mpirun schedule=ouroboros replicas=2
has slurm-mpirun "mpirun -np 6"
PATH=$TMP/bin:$PATH SLURM_JOB_ID=42 SLURM_NTASKS=8 SLURM_JOB_NUM_NODES=2 SLURM_GPUS_ON_NODE=4 \
    dry slurm-gpu --device cuda schedule=dp
has slurm-gpu "--ntasks=8 --kill-on-bad-exit=1 --nodes=2 --ntasks-per-node=4"
pass "Slurm: srun --mpi=pmix over the allocation's tasks, or mpirun; GPUs per node from Slurm"

mkdir -p "$TMP/r/ckpt" && : >"$TMP/r/ckpt/latest"
dry resume --resume schedule=bp out="$TMP/r"
if "$OURO" train --help | grep -q '^  resume '; then
    has resume "resume=latest"
    pass "--resume adds resume=latest when OUT/ckpt/latest exists"
else
    hasnt resume "resume="
    pass "--resume is ignored by a trainer without resume= (none here yet)"
fi

refuses replicas "multiple of replicas" -n 4 schedule=ouroboros replicas=3
refuses single "single runs on one rank" -n 2 schedule=single
refuses device "cpu or cuda" --device tpu
refuses option "unknown option" --frobnicate
refuses conflict "contradicts" --out a out=b
if ! command -v nvidia-smi >/dev/null 2>&1; then
    refuses nogpu "found no GPU" --device cuda -n 2 --hostfile "$TMP/hosts" --launcher mpirun
fi
pass "ouro-run refuses impossible rank counts and bad options (exit 2)"

# A real run through the launcher: same weights as the emulation.
"$RUN" --bin "$OURO" -n 3 -- data="$CORPUS" schedule=ouroboros $TINY out="$TMP/run3" \
    >"$TMP/run3.log" 2>&1 || { tail -n 20 "$TMP/run3.log"; fail "ouro-run -n 3 failed"; }
grep -q "mpirun -np 3" "$TMP/run3/launch.txt" || fail "no command in run3/launch.txt"
train emu3 $TINY schedule=ouroboros emulate=1 ranks=3
same_sha run3 emu3 "ouro-run -n 3 schedule=ouroboros == emulate=1 ranks=3"

# A two-run sweep here, gathered into CSV files; the model validates on it.
"$top_srcdir/launch/sweep" --bin "$OURO" --out "$TMP/sweep" --data "$CORPUS" --sizes tiny \
    --steps 12 --schedules single,ouroboros --ranks 1,2 --no-plots \
    >"$TMP/sweep.log" 2>&1 || { cat "$TMP/sweep.log"; fail "launch/sweep failed"; }
[ "$(awk -F, 'NR > 1 && $8 == 1' "$TMP/sweep/summary.csv" | wc -l)" = 3 ] ||
    { cat "$TMP/sweep/summary.csv"; fail "sweep: not 3 finished runs in summary.csv"; }
head -n 1 "$TMP/sweep/metrics.csv" | grep -q 'r1_compute,r1_wait,r1_comm' ||
    fail "sweep: metrics.csv lacks the per-rank columns"
[ "$(grep -c '^tiny-ouroboros-np2,' "$TMP/sweep/ranks.csv")" = 2 ] ||
    { cat "$TMP/sweep/ranks.csv"; fail "sweep: ranks.csv does not have the 2 ranks of tiny-ouroboros-np2"; }
pass "launch/sweep: 3 runs (single; ouroboros on 1 and 2 ranks) gathered into metrics, summary and ranks CSV"

"$top_srcdir/launch/perfmodel" validate "$TMP/sweep" >"$TMP/validate.log" 2>&1 ||
    { cat "$TMP/validate.log"; fail "perfmodel validate failed"; }
grep -q '| tiny *| ouroboros *| 2 ' "$TMP/validate.log" || { cat "$TMP/validate.log"; fail "perfmodel validate: no row for ouroboros on 2 ranks"; }
"$top_srcdir/launch/perfmodel" predict --model gpt2-xl --gpus 64 --nodes 8 --replicas 8 >"$TMP/predict.log" 2>&1 ||
    { cat "$TMP/predict.log"; fail "perfmodel predict failed"; }
grep -q '^| ouroboros-pipelined ' "$TMP/predict.log" || { cat "$TMP/predict.log"; fail "perfmodel predict: no ouroboros-pipelined row"; }
pass "launch/perfmodel validate and predict"
