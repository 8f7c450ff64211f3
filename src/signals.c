/* signals.c - see signals.h. A signal handler can only set a flag; the
 * flag is process-wide because signals are. */
#define _POSIX_C_SOURCE 200809L
#include "signals.h"

#include <signal.h>
#include <string.h>

static volatile sig_atomic_t received;

static void on_stop_signal(int sig) { received = sig; }

void stop_signal_install(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGUSR1, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

int stop_signal_received(void) { return received; }

const char *stop_signal_name(void) {
    return received == SIGTERM ? "SIGTERM" : received == SIGUSR1 ? "SIGUSR1" : "no signal";
}
