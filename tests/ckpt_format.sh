#!/bin/sh
# Using a checkpoint without training: `eval` measures the loss the run
# reported, `sample` writes what the run's model.bin writes, `inspect`
# lists every tensor with its Hugging Face name and shape, and (when
# python3 has h5py) the weights read with h5py alone, as the format note
# in src/checkpoint.c shows, are the run's weights.
. "$(dirname "$0")/lib.sh"
"$OURO" inspect "$TMP" 2>&1 | grep -q 'need HDF5' && skip "built without HDF5"

train run $TINY schedule=single
CK=$TMP/run/ckpt/step-00000020

"$OURO" eval checkpoint="$TMP/run" split=valid >"$TMP/eval.log" 2>&1 || { cat "$TMP/eval.log"; fail "eval"; }
got=$(sed -n 's/^eval .* split=valid .* loss=\([0-9.]*\).*/\1/p' "$TMP/eval.log")
want=$(final_field "$TMP/run.log" val_loss)
[ "$got" = "$want" ] || fail "eval loss $got, the run's final val_loss $want"
pass "eval checkpoint=DIR split=valid: $got, the run's val_loss"
"$OURO" eval checkpoint="$CK" data="$CORPUS" split=test >"$TMP/test.log" 2>&1 || { cat "$TMP/test.log"; fail "eval split=test"; }
pass "$(cat "$TMP/test.log")"

"$OURO" sample out="$TMP/run" sample_tokens=40 >"$TMP/s1.txt" 2>&1 || { cat "$TMP/s1.txt"; fail "sample from model.bin"; }
"$OURO" sample checkpoint="$CK" sample_tokens=40 >"$TMP/s2.txt" 2>&1 || { cat "$TMP/s2.txt"; fail "sample from the checkpoint"; }
cmp -s "$TMP/s1.txt" "$TMP/s2.txt" || fail "sample from the checkpoint differs from model.bin's"
pass "sample checkpoint=DIR writes what model.bin writes"

"$OURO" inspect "$CK" >"$TMP/inspect.log" 2>&1 || { cat "$TMP/inspect.log"; fail "inspect"; }
for t in "wte  *\[256, 32\]" "wpe  *\[32, 32\]" "h.2.attn.c_attn.weight  *\[32, 96\]" \
    "h.0.mlp.c_proj.weight  *\[128, 32\]" "ln_f.bias  *\[32\]"; do
    grep -Eq "^  $t  *fp32  *shard-00000.h5  *updates 20$" "$TMP/inspect.log" ||
        fail "inspect does not list $t"
done
sha=$(sed -n 's/^checkpoint OK: .* params_sha256=//p' "$TMP/inspect.log")
[ "$sha" = "$(final_sha "$TMP/run.log")" ] || fail "inspect's params_sha256 $sha is not the run's"
pass "inspect lists the tensors by their GPT-2 names and shapes; params_sha256 is the run's"

PY=${PYTHON_H5PY:-/usr/bin/python3}
if "$PY" -c 'import h5py, numpy' 2>/dev/null; then
    # The canonical order of model.h, each tensor little-endian fp32.
    sha=$("$PY" - "$CK/manifest.h5" <<'PYEOF'
import hashlib, sys
import h5py, numpy as np
f = h5py.File(sys.argv[1], "r")
a = f.attrs
block = ["ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias",
         "attn.c_proj.weight", "attn.c_proj.bias", "ln_2.weight", "ln_2.bias",
         "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias"]
names = ["wte", "wpe"] + ["h.%d.%s" % (i, b) for i in range(int(a["n_layer"])) for b in block]
names += ["ln_f.weight", "ln_f.bias"]
assert sorted(names) == sorted(f["params"]), "the manifest links other tensors"
h = hashlib.sha256()
for n in names:
    h.update(np.ascontiguousarray(f["params"][n][()], dtype="<f4").tobytes())
print(h.hexdigest())
PYEOF
) || fail "h5py could not read the checkpoint"
    [ "$sha" = "$(final_sha "$TMP/run.log")" ] || fail "h5py reads weights with sha256 $sha, not the run's"
    pass "h5py alone reads the run's weights through the manifest's links"
    # The same weights in a plain numpy GPT-2 with Hugging Face's
    # conventions (Conv1D y = x W + b, tanh GELU, LayerNorm eps 1e-5, the
    # output projection tied to wte) give eval's validation loss: the
    # names and shapes mean what the format note says they mean.
    loss=$("$PY" - "$CK/manifest.h5" "$CORPUS" <<'PYEOF'
import sys
import h5py, numpy as np
f = h5py.File(sys.argv[1], "r")
P = {k: f["params"][k][()].astype(np.float64) for k in f["params"]}
L, H = int(f.attrs["n_layer"]), int(f.attrs["n_head"])
B, T = 4, int(f.attrs["block_size"])  # batch_size of the run
data = np.frombuffer(open(sys.argv[2], "rb").read(), dtype=np.uint8).astype(np.int64)
n = len(data)
train = n // 10 * 9 + n % 10 * 9 // 10
valid = data[train:train + (n - train) // 2]  # the held-out tail's first half
def ln(x, w, b):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + 1e-5) * P[w] + P[b]
def gelu(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
def loss_of(tok, tgt):
    x = P["wte"][tok] + P["wpe"][:T]
    C = x.shape[-1]
    mask = np.tril(np.ones((T, T), dtype=bool))
    for i in range(L):
        p = "h.%d." % i
        qkv = ln(x, p + "ln_1.weight", p + "ln_1.bias") @ P[p + "attn.c_attn.weight"] + P[p + "attn.c_attn.bias"]
        q, k, v = (t.reshape(B, T, H, C // H).transpose(0, 2, 1, 3) for t in np.split(qkv, 3, axis=-1))
        att = np.where(mask, q @ k.transpose(0, 1, 3, 2) / np.sqrt(C // H), -np.inf)
        att = np.exp(att - att.max(-1, keepdims=True))
        y = (att / att.sum(-1, keepdims=True) @ v).transpose(0, 2, 1, 3).reshape(B, T, C)
        x = x + y @ P[p + "attn.c_proj.weight"] + P[p + "attn.c_proj.bias"]
        h = gelu(ln(x, p + "ln_2.weight", p + "ln_2.bias") @ P[p + "mlp.c_fc.weight"] + P[p + "mlp.c_fc.bias"])
        x = x + h @ P[p + "mlp.c_proj.weight"] + P[p + "mlp.c_proj.bias"]
    logits = ln(x, "ln_f.weight", "ln_f.bias") @ P["wte"].T
    logits -= logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return -np.take_along_axis(logp, tgt[..., None], -1).mean()
total = 0.0
for i in range(2):  # eval_batches of the run
    starts = [((i * B + r) * T) % (len(valid) - T) for r in range(B)]
    tok = np.stack([valid[s:s + T] for s in starts])
    tgt = np.stack([valid[s + 1:s + T + 1] for s in starts])
    total += loss_of(tok, tgt)
print("%.6f" % (total / 2))
PYEOF
) || fail "the numpy GPT-2 could not run"
    awk -v a="$loss" -v b="$want" 'BEGIN { d = a - b; exit !(d * d < 1e-8) }' ||
        fail "a numpy GPT-2 with these weights has validation loss $loss, the run $want"
    pass "a numpy GPT-2 (Hugging Face conventions) with the h5py weights: val loss $loss, the run's $want"
else
    echo "SKIP: no h5py for $PY (apt-get install python3-h5py): the h5py read is not checked"
fi
