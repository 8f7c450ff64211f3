/* main.c - the `ouroboros` command: dispatches to its subcommands. */
#include <stdio.h>
#include <string.h>

#include "checkpoint.h"
#include "device.h"
#include "profile.h"
#include "sample.h"
#include "train.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: ouroboros COMMAND [--config FILE] [key=value ...]\n\n"
            "Trains GPT-2 language models split into modules across MPI ranks,\n"
            "with the Ouroboros delayed-gradient schedule (NeurIPS 2019).\n\n"
            "commands:\n"
            "  train    train a model (see `ouroboros train --help`)\n"
            "  sample   generate text from a trained run (`ouroboros sample --help`)\n"
            "  eval     the loss of a checkpoint on a split (`ouroboros eval --help`)\n"
            "  inspect  show and verify a checkpoint: ouroboros inspect DIR\n"
            "  profile  time each module's forward and backward (`ouroboros profile --help`)\n"
            "  version  print the version and the backends built in\n");
}

int main(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "train") == 0) return cmd_train(argc - 2, argv + 2);
    if (strcmp(cmd, "sample") == 0) return cmd_sample(argc - 2, argv + 2);
    if (strcmp(cmd, "eval") == 0) return cmd_eval(argc - 2, argv + 2);
    if (strcmp(cmd, "inspect") == 0) return cmd_inspect(argc - 2, argv + 2);
    if (strcmp(cmd, "profile") == 0) return cmd_profile(argc - 2, argv + 2);
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
        printf("ouroboros %s (%s)\n", PACKAGE_VERSION, device_build_summary());
        return 0;
    }
    fprintf(stderr, "ouroboros: error: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
