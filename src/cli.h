/* cli.h - the command-line conventions shared by every command:
 *   ouroboros CMD [--config FILE] [key=value ...]  and  --help. */
#ifndef OURO_CLI_H
#define OURO_CLI_H

#include "settings.h"

/* Fills c from defaults, then --config files and key=value arguments in
 * order. Returns 1 (after printing usage) for --help, 0 otherwise; dies
 * on bad input. */
int cli_parse(int argc, char **argv, Config *c, const char *command,
              const char *description);

#endif
