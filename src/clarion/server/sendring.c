/* Many sockets' sends in one system call, through io_uring (see sendring.h).
 *
 * No liburing: the kernel's own header and two system calls, which is all a ring of plain
 * sends needs. Every send asks MSG_DONTWAIT, so the kernel completes it (or fails it with
 * EAGAIN) within the submitting call and nothing stays in flight past sendring_send: the
 * caller's buffers are free again when it returns. A kernel that would instead park a send
 * until its socket drains is found when the ring opens (a probe on a full socket) and the ring
 * is then not used; should one ever be parked later, it is cancelled and the ring closed.
 *
 * Callers hold the GIL (one caller at a time). A forked child drops the ring it shares with its
 * parent and opens its own at its next send.
 */
#include "sendring.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#if defined(__linux__) && defined(__has_include)
#if __has_include(<linux/io_uring.h>)
#include <linux/io_uring.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#if defined(__NR_io_uring_setup) && defined(__NR_io_uring_enter)
#define HAVE_RING 1
#endif
#endif
#endif

#define SEND_FLAGS (MSG_DONTWAIT | MSG_NOSIGNAL)
#define NOT_DONE (-EINPROGRESS) /* no send returns it: an entry the ring did not take */

static ssize_t send_one(int fd, const void *buf, size_t len) {
    ssize_t sent;
    do {
        sent = send(fd, buf, len, SEND_FLAGS);
    } while (sent < 0 && errno == EINTR);
    return sent < 0 ? -errno : sent;
}

#ifdef HAVE_RING

#define RING_ENTRIES 256
#define CANCEL_TAG (UINT64_C(1) << 63)
#define MAX_LEN 0x7ffff000u /* as much as one send(2) takes */

static struct {
    int fd;
    unsigned entries;
    unsigned *sq_head, *sq_tail, *sq_mask, *sq_array;
    unsigned *cq_head, *cq_tail, *cq_mask;
    struct io_uring_sqe *sqes;
    struct io_uring_cqe *cqes;
    void *sq_map, *cq_map;
    size_t sq_size, cq_size, sqes_size;
} ring = {.fd = -1};

static int reopen_in_child; /* a forked child opens its own ring at its next send */
static int fork_hook;

static void unmap(void) {
    if (ring.sqes != NULL) munmap(ring.sqes, ring.sqes_size);
    if (ring.cq_map != NULL && ring.cq_map != ring.sq_map) munmap(ring.cq_map, ring.cq_size);
    if (ring.sq_map != NULL) munmap(ring.sq_map, ring.sq_size);
    if (ring.fd >= 0) close(ring.fd);
    memset(&ring, 0, sizeof ring);
    ring.fd = -1;
}

static void in_child(void) {
    if (ring.fd >= 0) {
        unmap();
        reopen_in_child = 1;
    }
}

static int enter(unsigned submit, unsigned wait, unsigned flags) {
    int rc;
    do {
        rc = (int)syscall(__NR_io_uring_enter, ring.fd, submit, wait, flags, NULL, 0);
    } while (rc < 0 && errno == EINTR);
    return rc;
}

static struct io_uring_sqe *next_sqe(unsigned tail) {
    unsigned index = tail & *ring.sq_mask;
    ring.sq_array[index] = index;
    struct io_uring_sqe *sqe = &ring.sqes[index];
    memset(sqe, 0, sizeof *sqe);
    return sqe;
}

/* The completions posted so far: each send's result into its entry (of `k`); returns how many
 * sends' (not cancels') were read. */
static unsigned reap(sendring_entry *e, unsigned k, unsigned *cancels) {
    unsigned head = *ring.cq_head, mask = *ring.cq_mask, got = 0;
    unsigned tail = __atomic_load_n(ring.cq_tail, __ATOMIC_ACQUIRE);
    for (; head != tail; head++) {
        struct io_uring_cqe *cqe = &ring.cqes[head & mask];
        if (cqe->user_data & CANCEL_TAG) {
            (*cancels)--;
        } else if (cqe->user_data < k) {
            e[cqe->user_data].res = cqe->res;
            got++;
        }
    }
    __atomic_store_n(ring.cq_head, head, __ATOMIC_RELEASE);
    return got;
}

/* Sends the kernel parked instead of completing: cancel each and wait until all are done
 * (cancelled, or sent after all), so that no buffer is in the kernel's hands afterwards. */
static void cancel_parked(sendring_entry *e, unsigned k, unsigned parked) {
    unsigned tail = *ring.sq_tail, cancels = 0;
    for (unsigned i = 0; i < k; i++) {
        if (e[i].res != NOT_DONE) continue;
        struct io_uring_sqe *sqe = next_sqe(tail + cancels);
        sqe->opcode = IORING_OP_ASYNC_CANCEL;
        sqe->fd = -1;
        sqe->addr = i;
        sqe->user_data = CANCEL_TAG | i;
        cancels++;
    }
    __atomic_store_n(ring.sq_tail, tail + cancels, __ATOMIC_RELEASE);
    enter(cancels, 0, 0);
    while (parked > 0 || cancels > 0) {
        parked -= reap(e, k, &cancels);
        if ((parked > 0 || cancels > 0) && enter(0, 1, IORING_ENTER_GETEVENTS) < 0) break;
    }
}

static void prep_send(struct io_uring_sqe *sqe, const sendring_entry *entry, uint64_t index) {
    sqe->opcode = IORING_OP_SEND;
    sqe->fd = entry->fd;
    sqe->addr = (uint64_t)(uintptr_t)entry->buf;
    sqe->len = entry->len > MAX_LEN ? MAX_LEN : (unsigned)entry->len;
    sqe->msg_flags = SEND_FLAGS;
    sqe->user_data = index;
}

/* Hand the kernel what is queued up to `tail + k`: how many it took; what it did not take is
 * taken back out of the queue (those entries stay NOT_DONE). 0 with *broken set if the ring
 * itself failed. */
static unsigned submit(unsigned tail, unsigned k, int *broken) {
    __atomic_store_n(ring.sq_tail, tail + k, __ATOMIC_RELEASE);
    int submitted = enter(k, 0, 0);
    if (submitted < 0 && errno != EAGAIN && errno != EBUSY && errno != ENOMEM) *broken = 1;
    unsigned taken = submitted < 0 ? 0 : (unsigned)submitted;
    if (taken < k) __atomic_store_n(ring.sq_tail, tail + taken, __ATOMIC_RELEASE);
    return taken;
}

/* Up to ring.entries sends through the ring: 0 = each entry done or NOT_DONE (to be sent by
 * hand), 1 = the ring is not fit for use (it failed, or the kernel parked a send, now
 * cancelled). */
static int ring_chunk(sendring_entry *e, unsigned k) {
    unsigned tail = *ring.sq_tail, cancels = 0;
    int broken = 0;
    for (unsigned i = 0; i < k; i++) prep_send(next_sqe(tail + i), &e[i], i);
    unsigned taken = submit(tail, k, &broken);
    unsigned got = reap(e, k, &cancels);
    if (got < taken) {
        cancel_parked(e, k, taken - got);
        return 1;
    }
    return broken;
}

/* A send that the socket cannot take must fail at once (EAGAIN), not wait in the kernel. */
static int probe(const char **why) {
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, pair) < 0) {
        *why = "no socket pair to try it on";
        return errno;
    }
    int small = 1;
    setsockopt(pair[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
    static const char block[4096];
    while (send(pair[0], block, sizeof block, SEND_FLAGS) > 0) {
    }
    sendring_entry entry = {pair[0], block, sizeof block, NOT_DONE};
    unsigned tail = *ring.sq_tail, cancels = 0;
    int broken = 0;
    prep_send(next_sqe(tail), &entry, 0);
    unsigned taken = submit(tail, 1, &broken), got = reap(&entry, 1, &cancels);
    if (taken == 1 && got == 0) {
        /* Parked: with its peer gone the send fails, and its completion comes. */
        close(pair[1]);
        pair[1] = -1;
        while (reap(&entry, 1, &cancels) == 0 && enter(0, 1, IORING_ENTER_GETEVENTS) >= 0) {
        }
    }
    close(pair[0]);
    if (pair[1] >= 0) close(pair[1]);
    if (got == 1 && entry.res == -EAGAIN) return 0;
    *why = taken == 1 && got == 0 ? "this kernel's io_uring waits for a full socket"
                                  : "this kernel's io_uring does not send";
    return EOPNOTSUPP;
}

int sendring_open(const char **why) {
    if (ring.fd >= 0) return 0;
    reopen_in_child = 0;
    if (!fork_hook) {
        if (pthread_atfork(NULL, NULL, in_child) != 0) {
            *why = "no fork handler";
            return ENOMEM;
        }
        fork_hook = 1;
    }
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    int fd = (int)syscall(__NR_io_uring_setup, RING_ENTRIES, &p);
    if (fd < 0) {
        int err = errno;
        *why = err == ENOSYS ? "not in this kernel"
               : err == EPERM || err == EACCES ? "not allowed here"
                                               : "the ring could not be set up";
        return err;
    }
    ring.fd = fd;
    ring.entries = p.sq_entries;
    ring.sq_size = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    ring.cq_size = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    int single = (p.features & IORING_FEAT_SINGLE_MMAP) != 0;
    if (single && ring.cq_size > ring.sq_size) ring.sq_size = ring.cq_size;
    ring.sqes_size = p.sq_entries * sizeof(struct io_uring_sqe);
    void *sq = mmap(NULL, ring.sq_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd,
                    IORING_OFF_SQ_RING);
    ring.sq_map = sq == MAP_FAILED ? NULL : sq;
    void *cq = single ? sq
                      : mmap(NULL, ring.cq_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                             fd, IORING_OFF_CQ_RING);
    ring.cq_map = cq == MAP_FAILED ? NULL : cq;
    void *sqes = mmap(NULL, ring.sqes_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd,
                      IORING_OFF_SQES);
    ring.sqes = sqes == MAP_FAILED ? NULL : sqes;
    if (ring.sq_map == NULL || ring.cq_map == NULL || ring.sqes == NULL) {
        int err = errno;
        unmap();
        *why = "the ring could not be mapped";
        return err;
    }
    char *s = ring.sq_map, *c = ring.cq_map;
    ring.sq_head = (unsigned *)(s + p.sq_off.head);
    ring.sq_tail = (unsigned *)(s + p.sq_off.tail);
    ring.sq_mask = (unsigned *)(s + p.sq_off.ring_mask);
    ring.sq_array = (unsigned *)(s + p.sq_off.array);
    ring.cq_head = (unsigned *)(c + p.cq_off.head);
    ring.cq_tail = (unsigned *)(c + p.cq_off.tail);
    ring.cq_mask = (unsigned *)(c + p.cq_off.ring_mask);
    ring.cqes = (struct io_uring_cqe *)(c + p.cq_off.cqes);
    int err = probe(why);
    if (err != 0) unmap();
    return err;
}

void sendring_close(void) {
    reopen_in_child = 0;
    if (ring.fd >= 0) unmap();
}

int sendring_ready(void) {
    if (reopen_in_child) {
        const char *why;
        sendring_open(&why);
    }
    return ring.fd >= 0;
}

#else /* no io_uring: every send one by one */

int sendring_open(const char **why) {
    *why = "not built in (no io_uring on this system)";
    return EOPNOTSUPP;
}

void sendring_close(void) {}

int sendring_ready(void) { return 0; }

#endif

void sendring_send(sendring_entry *entries, size_t n) {
    for (size_t i = 0; i < n; i++) entries[i].res = NOT_DONE;
#ifdef HAVE_RING
    /* One send alone costs the same either way. */
    for (size_t done = 0; n > 1 && done < n && ring.fd >= 0;) {
        unsigned k = n - done < ring.entries ? (unsigned)(n - done) : ring.entries;
        if (ring_chunk(entries + done, k)) unmap();
        done += k;
    }
#endif
    for (size_t i = 0; i < n; i++)
        if (entries[i].res == NOT_DONE)
            entries[i].res = send_one(entries[i].fd, entries[i].buf, entries[i].len);
}
