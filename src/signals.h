/* signals.h - stopping a run cleanly on a signal.
 *
 * SIGUSR1 (what a Slurm job asks for before its time limit with
 * --signal, and what mpirun and srun pass on to the ranks) and SIGTERM
 * (scancel, pre-emption, the time limit itself) ask the run to stop: the
 * ranks agree on the step to stop after, write a checkpoint there and
 * exit, and `resume=latest` continues the run bit for bit. */
#ifndef OURO_SIGNALS_H
#define OURO_SIGNALS_H

void stop_signal_install(void);
/* The signal number received since install, or 0. */
int stop_signal_received(void);
/* "SIGUSR1", "SIGTERM" or "no signal", for messages. */
const char *stop_signal_name(void);

#endif
