/* settings.c - see settings.h. */
#include "settings.h"

#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

typedef enum { K_INT, K_DBL, K_STR, K_ENUM } KeyType;

typedef struct {
    const char *name;
    KeyType type;
    size_t offset;
    double lo, hi;       /* K_INT, K_DBL */
    const char *deflt;   /* default, as text */
    const char *choices; /* K_ENUM: "a|b|c", first is the default */
    const char *help;
} KeyInfo;

#define STR_(x) #x
#define KI_INT(n, d, l, h, hp) {#n, K_INT, offsetof(Config, n), l, h, STR_(d), NULL, hp},
#define KI_DBL(n, d, l, h, hp) {#n, K_DBL, offsetof(Config, n), l, h, STR_(d), NULL, hp},
#define KI_STR(n, d, hp) {#n, K_STR, offsetof(Config, n), 0, 0, d, NULL, hp},
#define KI_ENUM(n, ch, hp) {#n, K_ENUM, offsetof(Config, n), 0, 0, NULL, ch, hp},
static const KeyInfo KEYS[] = {CONFIG_KEYS(KI_INT, KI_DBL, KI_STR, KI_ENUM)};
#define N_KEYS (sizeof KEYS / sizeof KEYS[0])

static const KeyInfo *find_key(const char *name, size_t len) {
    for (size_t i = 0; i < N_KEYS; i++)
        if (strlen(KEYS[i].name) == len && strncmp(KEYS[i].name, name, len) == 0)
            return &KEYS[i];
    return NULL;
}

/* Is value one of the "|"-separated choices? */
static int enum_has(const char *choices, const char *value) {
    size_t n = strlen(value);
    for (const char *p = choices; *p;) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == n && strncmp(p, value, n) == 0) return 1;
        p += len + (bar ? 1 : 0);
    }
    return 0;
}

static void set_value(Config *c, const KeyInfo *k, const char *value,
                      const char *where) {
    char *field = (char *)c + k->offset;
    char *end = NULL;
    errno = 0;
    switch (k->type) {
    case K_INT: {
        long v = strtol(value, &end, 10);
        if (*value == '\0' || *end != '\0' || errno)
            die("%s: %s=%s is not an integer", where, k->name, value);
        if (v < (long)k->lo || v > (long)k->hi)
            die("%s: %s=%ld is out of range [%.0f, %.0f]", where, k->name, v,
                k->lo, k->hi);
        *(int *)field = (int)v;
        break;
    }
    case K_DBL: {
        double v = strtod(value, &end);
        if (*value == '\0' || *end != '\0' || errno || !isfinite(v))
            die("%s: %s=%s is not a number", where, k->name, value);
        if (v < k->lo || v > k->hi)
            die("%s: %s=%g is out of range [%g, %g]", where, k->name, v, k->lo,
                k->hi);
        *(double *)field = v;
        break;
    }
    case K_STR:
        if (strlen(value) >= 512)
            die("%s: %s is longer than 511 characters", where, k->name);
        strcpy(field, value);
        break;
    case K_ENUM:
        if (!enum_has(k->choices, value))
            die("%s: %s=%s is not one of %s", where, k->name, value,
                k->choices);
        strcpy(field, value);
        break;
    }
}

void config_defaults(Config *c) {
    memset(c, 0, sizeof *c);
    for (size_t i = 0; i < N_KEYS; i++) {
        const KeyInfo *k = &KEYS[i];
        if (k->type == K_ENUM) {
            char first[64];
            size_t len = strcspn(k->choices, "|");
            memcpy(first, k->choices, len);
            first[len] = '\0';
            set_value(c, k, first, "default");
        } else {
            set_value(c, k, k->deflt, "default");
        }
    }
}

static const char *trim(char *s) {
    while (*s == ' ' || *s == '\t') s++;
    char *e = s + strlen(s);
    while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\n' ||
                     e[-1] == '\r'))
        *--e = '\0';
    return s;
}

void config_set(Config *c, const char *assignment, const char *where) {
    const char *eq = strchr(assignment, '=');
    if (!eq)
        die("%s: '%s' is not key=value (see `ouroboros train --help`)", where,
            assignment);
    char key[128];
    size_t klen = (size_t)(eq - assignment);
    if (klen >= sizeof key) klen = sizeof key - 1;
    memcpy(key, assignment, klen);
    key[klen] = '\0';
    const char *name = trim(key);
    const KeyInfo *k = find_key(name, strlen(name));
    if (!k)
        die("%s: unknown key '%s' (see `ouroboros train --help` for the keys)",
            where, name);
    char value[600];
    snprintf(value, sizeof value, "%s", eq + 1);
    set_value(c, k, trim(value), where);
}

void config_load_file(Config *c, const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) die("config file %s: %s", path, strerror(errno));
    char line[1024];
    int lineno = 0;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        char *hash = strchr(line, '#');
        if (hash) *hash = '\0';
        const char *s = trim(line);
        if (*s == '\0') continue;
        char where[600];
        snprintf(where, sizeof where, "%s:%d", path, lineno);
        config_set(c, s, where);
    }
    fclose(f);
}

void config_write(const Config *c, FILE *f) {
    for (size_t i = 0; i < N_KEYS; i++) {
        const KeyInfo *k = &KEYS[i];
        const char *field = (const char *)c + k->offset;
        switch (k->type) {
        case K_INT: fprintf(f, "%s=%d\n", k->name, *(const int *)field); break;
        case K_DBL: fprintf(f, "%s=%.17g\n", k->name, *(const double *)field); break;
        default: fprintf(f, "%s=%s\n", k->name, field); break;
        }
    }
}

void config_print_help(FILE *f) {
    for (size_t i = 0; i < N_KEYS; i++) {
        const KeyInfo *k = &KEYS[i];
        char deflt[600];
        if (k->type == K_ENUM)
            snprintf(deflt, sizeof deflt, "%s", k->choices);
        else
            snprintf(deflt, sizeof deflt, "%s", k->deflt);
        fprintf(f, "  %-16s %-22s %s\n", k->name, deflt, k->help);
    }
}
