/* internal.h: what the C files share and the Python side never sees. */
#ifndef AIPM_INTERNAL_H
#define AIPM_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <time.h>

#include "aipm.h"

/* ---- ring buffer: single producer (sampler thread), single consumer (drain) ---- */
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
typedef enum { CH_TEXT, CH_MSR, CH_PERF, CH_NVML, CH_LATENESS } channel_type;

struct nvml_lib;

typedef struct {
    channel_type type;
    int fd;                     /* text, msr, perf */
    uint64_t reg;               /* msr register */
    double scale;
    int64_t period_ns;
    int64_t next_due_ns;
    int64_t last_emit_ns;
    int is_buffered;            /* emits its own timestamps (NVML sample buffer) */
    uint32_t gpu;
    int nvml_kind;
    unsigned long long nvml_last_seen_us;
    int have_value;
    double value;
    aipm_channel_stats stats;   /* written by the sampler, read by others, both under stats_lock */
} aipm_channel;

/* A read function stores a value (in the channel's unit) and returns 0, or returns an AIPM_E*
 * code and sets *err to an errno or NVML code. Buffered channels push their own records. */
int source_read_text(aipm_channel *c, double *value, int32_t *err);
int source_read_msr(aipm_channel *c, double *value, int32_t *err);
int source_read_perf(aipm_channel *c, double *value, int32_t *err);
int source_text_still_linked(aipm_channel *c);
int nvml_read(struct aipm_engine *e, aipm_channel *c, double *value, int32_t *err);

#define AIPM_MAX_CHANNELS 256
#define AIPM_HEARTBEAT_NS 1000000000LL   /* an unchanged value is re-emitted this often */
#define AIPM_MAX_SLEEP_NS 20000000LL     /* the loop checks for stop at least this often */

/* What the sampler counts about itself; written by it under stats_lock, copied under it. */
typedef struct {
    uint64_t wakeups, missed;
    int64_t lateness_max_ns, lateness_sum_ns, cpu_ns;
} sampler_counts;

struct aipm_engine {
    aipm_ring ring;
    aipm_channel channels[AIPM_MAX_CHANNELS];
    uint32_t n_channels;
    int lateness_channel;       /* -1 if none */
    _Atomic int record_unchanged; /* emit every reading, not only changes; may flip while running */
    pthread_t thread;
    _Atomic int running;
    _Atomic int first_pass_done; /* every channel has been read once since start */
    pthread_mutex_t stats_lock;  /* guards every channel's stats and `counts` */
    sampler_counts counts;
    struct nvml_lib *nvml;
    char error[512];
};

void engine_set_error(struct aipm_engine *e, const char *fmt, ...);
void engine_emit(struct aipm_engine *e, uint32_t channel, int64_t t_ns, double value, uint32_t flags);
int64_t clock_ns(clockid_t clk);
int64_t realtime_to_monotonic_offset_ns(void);
void nvml_close(struct aipm_engine *e);

#endif
