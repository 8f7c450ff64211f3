/* transport_common.c - helpers shared by the transports. */
#include <stdio.h>

#include "transport.h"

void msg_describe(MsgKey key, char *out, size_t outlen) {
    static const char *names[] = {"?", "data", "activation", "gradient",
                                  "reduction input", "reduction result",
                                  "evaluation activation", "statistics",
                                  "parameters", "checkpoint message"};
    const char *name = key.kind >= 1 && key.kind <= MSG_CKPT ? names[key.kind] : "?";
    snprintf(out, outlen, "%s of %s %lld (part %d)", name,
             key.kind == MSG_REDUCE || key.kind == MSG_RESULT || key.kind == MSG_STATS ||
                     key.kind == MSG_CKPT
                 ? "step" : "minibatch",
             (long long)key.id, key.micro);
}
