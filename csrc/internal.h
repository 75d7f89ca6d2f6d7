/* internal.h: what the C files share and the Python side never sees. Every function that one
 * file defines and another calls is declared here (the build warns of any that is not). */
#ifndef AIPM_INTERNAL_H
#define AIPM_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <time.h>

#include "aipm.h"

/* ---- ring buffer (ring.c): single producer (sampler thread), single consumer (drain) ---- */
typedef struct {
    aipm_record *slots;
    uint64_t mask;              /* capacity - 1, capacity a power of two */
    _Atomic uint64_t head;      /* next slot the producer writes; only the producer stores it */
    _Atomic uint64_t tail;      /* next slot the consumer reads; only the consumer stores it */
    _Atomic uint64_t overflows; /* records dropped because the ring was full */
    _Atomic uint64_t written;
} aipm_ring;

int ring_init(aipm_ring *r, uint32_t capacity_log2);
void ring_free(aipm_ring *r);
void ring_push(aipm_ring *r, const aipm_record *rec); /* drops (and counts) when full */
size_t ring_drain(aipm_ring *r, aipm_record *out, size_t max);
size_t ring_pending(aipm_ring *r);

/* ---- channels ---- */
typedef struct aipm_channel aipm_channel;

/* What the sampler does with one kind of channel. A source file defines one table per kind it
 * offers; the engine calls through it and knows nothing else about the kind. */
typedef struct {
    /* Reads once at the sampler's call. A plain kind stores a value in the channel's unit and
     * returns AIPM_OK; a buffered kind (buffered = 1) pushes its own timestamped records with
     * engine_emit and returns how many. On failure: an AIPM_E* code, *err set to an errno or
     * NVML code. NULL: never polled (the loop writes the channel itself). */
    int (*read)(aipm_engine *e, aipm_channel *c, uint32_t id, double *value, int32_t *err);
    /* Optional, asked at heartbeat rate: 0 while the source is still there, else the errno
     * that says why not (the channel then counts an AIPM_EGONE error). */
    int32_t (*gone)(const aipm_channel *c);
    void (*release)(aipm_channel *c); /* optional: gives back what the setup opened */
    int buffered;
    /* 1: a library call that may take milliseconds (NVML): read on the library thread, never
     * on the fast one, whose 1 kHz deadlines it would delay */
    int library;
} channel_ops;

struct aipm_channel {
    const channel_ops *ops;
    int fd;                     /* text, msr, perf */
    uint64_t reg;               /* msr register */
    double scale;
    int64_t period_ns;
    int64_t interval_ns;        /* the current read interval: period_ns, or longer when backed off */
    int64_t backoff_quiet_ns;   /* 0: never backed off (aipm_set_backoff) */
    int64_t backoff_max_ns;
    int64_t quiet_since_ns;     /* time of the last change (or of the start) */
    int lane;                   /* the sampler thread that reads it (SAMPLER_FAST, SAMPLER_LIBRARY) */
    int64_t next_due_ns;
    int64_t last_emit_ns;
    uint32_t gpu;
    unsigned long long nvml_last_seen_us;
    int have_value;
    double value;
    aipm_channel_stats stats;   /* written by the sampler, read by others, both under stats_lock */
};

#define AIPM_HEARTBEAT_NS 1000000000LL   /* an unchanged value is re-emitted this often */
#define AIPM_MAX_SLEEP_NS 20000000LL     /* the loop checks for stop at least this often */
#define AIPM_LIBRARY_NICE 10             /* the library thread's niceness above the process's */
#define AIPM_FIRST_PASS_LIMIT_NS 2000000000LL /* default wait in aipm_start for every first reading */

/* What a sampler thread counts about itself; written by it under stats_lock, copied under it. */
typedef struct {
    uint64_t wakeups, missed;
    int64_t lateness_max_ns, lateness_sum_ns, cpu_ns;
} sampler_counts;

enum { SAMPLER_FAST = 0, SAMPLER_LIBRARY = 1, SAMPLER_THREADS = 2 };

/* One sampler thread: the channels whose lane is its index, its own ring (one producer each,
 * so the rings stay lock-free), its counts. A thread with no channel is not started. */
typedef struct {
    aipm_engine *engine;
    int index;
    aipm_ring ring;
    pthread_t thread;
    int started;
    _Atomic int first_pass_done; /* each of its channels has been read once since start */
    sampler_counts counts;       /* under the engine's stats_lock */
} sampler_lane;

struct nvml_lib;

struct aipm_engine {
    sampler_lane lanes[SAMPLER_THREADS];
    aipm_channel channels[AIPM_MAX_CHANNELS];
    uint32_t n_channels;        /* changed only while the sampler is stopped */
    int lateness_channel;       /* -1 if none */
    _Atomic int record_unchanged; /* emit every reading, not only changes; may flip while running */
    int64_t first_pass_limit_ns;
    _Atomic int running;
    pthread_mutex_t stats_lock;  /* guards every channel's stats and every lane's `counts` */
    struct nvml_lib *nvml;
    int32_t error_errno;         /* errno or NVML code of the last setup failure, 0 if none */
    char error[512];
};

/* ---- engine.c, for the sources ---- */
/* Keeps the message (printf-style) and the errno or NVML code of a setup failure; returns rc,
 * so that a source can `return engine_fail(e, AIPM_EOPEN, errno, "open(%s): ...", ...)`. */
int engine_fail(aipm_engine *e, int rc, int32_t err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* A zeroed channel of this kind with fd -1, not yet counted; NULL (message set) if none may be
 * added now. The source opens and checks it, then commits it or gives it back. */
aipm_channel *engine_new_channel(aipm_engine *e, const channel_ops *ops, int64_t period_ns);
int engine_commit_channel(aipm_engine *e); /* returns the new channel's id */
/* Pushes a record into the ring of the thread that reads `channel` (call it from that thread). */
void engine_emit(aipm_engine *e, uint32_t channel, int64_t t_ns, double value, uint32_t flags);
int64_t clock_ns(clockid_t clk);
int64_t realtime_to_monotonic_offset_ns(void);

/* ---- src_nvml.c, for the engine ---- */
void nvml_close(aipm_engine *e);

#endif
