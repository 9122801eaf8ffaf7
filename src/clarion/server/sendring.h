/* clarion.server sendring: many sockets' sends in one system call, through io_uring.
 *
 * The flush writes one frame (or one run of frames) to each of many connections per loop
 * iteration. Sent one by one, each is a system call; handed to an io_uring ring together, they
 * go in one, each still a non-blocking send that completes (or fails with EAGAIN) at once.
 * Pure C, no Python: _fastloop.c decides what to send and what a result means.
 */
#ifndef CLARION_SENDRING_H
#define CLARION_SENDRING_H

#include <stddef.h>
#include <sys/types.h>

typedef struct {
    int fd;
    const void *buf;
    size_t len;
    ssize_t res; /* set by sendring_send: bytes sent, or -errno */
} sendring_entry;

/* Open this process's ring (again after a fork): 0, or an errno with *why saying what was
 * missing or refused. */
int sendring_open(const char **why);

/* Close it; later sends go one by one until sendring_open. */
void sendring_close(void);

/* Whether sends go through the ring: it is open in this process (a forked child opens its
 * own here). */
int sendring_ready(void);

/* Send each entry's bytes on its socket, without blocking and without SIGPIPE, and set its
 * res, as send(2) would have: through the ring when it is open, else (or for whatever the ring
 * could not take) one send(2) each. */
void sendring_send(sendring_entry *entries, size_t n);

#endif
