/* profile.h - `ouroboros profile`: the measured cost of every module of a
 * pipeline on the configured backend, next to the FLOP estimate that
 * partition.c balances. */
#ifndef OURO_PROFILE_H
#define OURO_PROFILE_H

/* Builds the plan of `ranks` ranks (default 2; 1 for schedule=single) and
 * times the forward and the backward of each module on one micro-batch:
 * a warm-up, then the median of 5 runs. Prints one row per module, each
 * rank's sum and the imbalance. One process, no MPI. */
int cmd_profile(int argc, char **argv);

#endif
