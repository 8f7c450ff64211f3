/* cli.c - see cli.h. */
#include "cli.h"

#include <stdio.h>
#include <string.h>

#include "common.h"

static void usage(FILE *f, const char *command, const char *description) {
    fprintf(f, "usage: ouroboros %s [--config FILE] [key=value ...]\n\n%s\n\n",
            command, description);
    fprintf(f, "A config file holds the same key=value pairs, one per line (# comments);\n"
               "key=value arguments override it. Keys (default, meaning):\n");
    config_print_help(f);
}

int cli_parse(int argc, char **argv, Config *c, const char *command,
              const char *description) {
    config_defaults(c);
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout, command, description);
            return 1;
        } else if (strcmp(a, "--config") == 0) {
            if (i + 1 >= argc) die("command line: --config needs a FILE");
            config_load_file(c, argv[++i]);
        } else if (strncmp(a, "--config=", 9) == 0) {
            config_load_file(c, a + 9);
        } else if (a[0] == '-') {
            die("command line: unknown option '%s' (see `ouroboros %s --help`)", a, command);
        } else {
            config_set(c, a, "command line");
        }
    }
    return 0;
}
