/* aipm.h: the public API of the native sampler.
 *
 * The text between the CDEF markers is also the cffi cdef (csrc/build_native.py reads it),
 * so it must stay plain declarations: no preprocessor lines, no inline code.
 *
 * Conventions (borrowed from pyinstrument and psutil): functions return >= 0 on success and
 * a negative AIPM_E* code on failure; the engine keeps a message naming the failing call and
 * file for the last failure of a setup function (aipm_last_error). The sampler thread never
 * fails: it counts errors per channel instead.
 */
#ifndef AIPM_H
#define AIPM_H

#include <stddef.h>
#include <stdint.h>

/* AIPM_CDEF_BEGIN */

/* One reading. 24 bytes; the Python side mirrors it as a numpy structured dtype. */
typedef struct {
    int64_t t_ns;      /* CLOCK_MONOTONIC time the reading refers to */
    double value;      /* in the channel's unit, already scaled (J, W, %, bytes) */
    uint32_t channel;  /* id returned by aipm_add_* */
    uint32_t flags;    /* AIPM_FLAG_* */
} aipm_record;

enum {
    AIPM_MAX_CHANNELS = 256 /* channels one engine can hold; the sources share them */
};

enum {
    AIPM_FLAG_REPEAT = 1,   /* value unchanged, emitted only so that a live channel shows it is alive */
    AIPM_FLAG_FINAL = 2     /* last reading, taken when the sampler stopped */
};

enum {
    AIPM_OK = 0,
    AIPM_ENOMEM = -1,
    AIPM_EOPEN = -2,       /* open/dlopen failed; aipm_last_error says which file and why */
    AIPM_EREAD = -3,       /* a first read failed */
    AIPM_EPARSE = -4,      /* the file did not hold a number */
    AIPM_ESYMBOL = -5,     /* a library function is missing */
    AIPM_ENVML = -6,       /* NVML returned an error; aipm_last_error has its text */
    AIPM_EARG = -7,        /* bad argument (unknown channel, GPU index out of range) */
    AIPM_ESTATE = -8,      /* not allowed while running (or not running) */
    AIPM_EGONE = -9,       /* the file was removed while open */
    AIPM_ETIMEOUT = -10    /* aipm_start: the first pass of readings did not finish in time */
};

/* What an NVML channel reads; one GPU can have several. */
enum {
    AIPM_NVML_POWER_SAMPLES = 0,  /* nvmlDeviceGetSamples(TOTAL_POWER): driver's buffered trace, W */
    AIPM_NVML_POWER_INSTANT = 1,  /* field NVML_FI_DEV_POWER_INSTANT (186), W */
    AIPM_NVML_ENERGY = 2,         /* nvmlDeviceGetTotalEnergyConsumption, J (counter) */
    AIPM_NVML_UTILIZATION = 3,    /* nvmlDeviceGetUtilizationRates .gpu, % */
    AIPM_NVML_MEMORY_USED = 4,    /* nvmlDeviceGetMemoryInfo .used, bytes */
    AIPM_NVML_POWER_AVERAGE = 5   /* nvmlDeviceGetPowerUsage, W (a 1 s average on Ampere and newer) */
};

typedef struct {
    uint64_t reads;           /* successful reads */
    uint64_t errors;          /* failed reads */
    uint64_t changes;         /* readings that differed from the previous one (or new buffered samples) */
    uint64_t read_ns_total;   /* wall time spent inside successful reads */
    int64_t last_read_ns;     /* time of the last successful read (tells stale from dead) */
    int64_t last_change_ns;   /* time of the last change */
    int32_t last_error;       /* errno or NVML code of the last failure, 0 if none */
    int32_t last_error_kind;  /* AIPM_E* of the last failure */
    double last_value;
    int64_t interval_ns;      /* the current read interval: the period, or longer while backed off */
} aipm_channel_stats;

/* The sampler is two threads, each with its own ring: the fast thread reads files, MSRs and
 * perf counters (microseconds a read) on their deadlines; the library thread makes the library
 * calls that can take milliseconds (NVML), so that they never delay a fast deadline. */
typedef struct {
    uint64_t wakeups;            /* fast thread's loop iterations */
    uint64_t missed_deadlines;   /* channel periods skipped because a loop was late (both threads) */
    uint64_t overflows;          /* records dropped because a ring was full (both rings) */
    uint64_t records_written;    /* records that made it into the rings */
    int64_t lateness_max_ns;     /* fast thread's worst wake-up lateness against its deadline */
    int64_t lateness_sum_ns;     /* over the fast thread's wake-ups */
    int64_t cpu_ns;              /* CPU time used by both sampler threads */
    uint32_t ring_capacity;      /* of each ring */
    uint32_t n_channels;
    uint64_t library_wakeups;    /* library thread's loop iterations */
    int64_t library_lateness_max_ns;
    int64_t library_cpu_ns;      /* the library thread's part of cpu_ns */
} aipm_sampler_stats;

typedef struct aipm_engine aipm_engine;

aipm_engine *aipm_engine_new(uint32_t ring_capacity_log2);
void aipm_engine_free(aipm_engine *e);
const char *aipm_last_error(aipm_engine *e);
/* The errno (or, after AIPM_ENVML, the NVML return code) behind the last failure of a setup
 * function; 0 where the failure has none (a bad argument, a file that is not a number). */
int32_t aipm_last_errno(aipm_engine *e);
int64_t aipm_now_ns(void);

/* Channels. Each returns the new channel id (>= 0) or an AIPM_E* code. Periods in ns.
 * A setup function opens what it reads once and reads it once, so that a channel that
 * cannot work fails here, with a message, rather than later in the sampler. */
int aipm_add_text_counter(aipm_engine *e, const char *path, double scale, int64_t period_ns);
int aipm_add_msr_counter(aipm_engine *e, const char *path, uint64_t reg, double scale,
                         int64_t period_ns);
int aipm_add_perf_counter(aipm_engine *e, uint32_t type, uint64_t config, int cpu, double scale,
                          int64_t period_ns);
int aipm_add_lateness_channel(aipm_engine *e);  /* records the sampler's wake-up lateness, ns */

/* NVML: open the library (dlopen + dlsym + nvmlInit); returns the number of GPUs. */
int aipm_nvml_open(aipm_engine *e, const char *library_path);
int aipm_nvml_device_name(aipm_engine *e, uint32_t gpu, char *buf, uint32_t len);
int aipm_add_nvml_channel(aipm_engine *e, uint32_t gpu, int kind, int64_t period_ns);
const char *aipm_nvml_error_string(aipm_engine *e, int32_t code);

/* Read a quiet channel less often: once its reading has not changed for quiet_ns (and while
 * its reads fail), each read doubles its interval, up to max_interval_ns; the first change
 * brings it back to its period. Reads go on (the channel is still seen and reported), only
 * fewer. quiet_ns 0 turns it off (the default). Not while running. */
int aipm_set_backoff(aipm_engine *e, uint32_t channel, int64_t quiet_ns, int64_t max_interval_ns);

/* Record every reading, changed or not (for studies of the sources at full rate); off by default. */
void aipm_set_record_unchanged(aipm_engine *e, int on);

/* aipm_start returns once every channel holds a first reading; when that takes longer than
 * this limit (default 2 s) it stops the sampler again and fails with AIPM_ETIMEOUT. */
void aipm_set_first_pass_limit(aipm_engine *e, int64_t limit_ns);
int aipm_start(aipm_engine *e);
int aipm_stop(aipm_engine *e);      /* joins the thread; emits one FINAL record per channel */
int aipm_running(aipm_engine *e);

/* Copies up to max records out of the ring, oldest first; returns how many. */
size_t aipm_drain(aipm_engine *e, aipm_record *out, size_t max);
size_t aipm_pending(aipm_engine *e);
int aipm_channel_stats_get(aipm_engine *e, uint32_t channel, aipm_channel_stats *out);
void aipm_sampler_stats_get(aipm_engine *e, aipm_sampler_stats *out);

/* On-demand NVML queries (src_nvml.c), made from the caller's thread (a benchmark, at a run's
 * edges), never by the sampler. Each returns a count (>= 0) or an AIPM_E* code, with the
 * failing call in aipm_last_error. */
typedef struct {
    uint32_t pid;
    uint64_t used_bytes;      /* UINT64_MAX where NVML cannot tell (NVML_VALUE_NOT_AVAILABLE) */
} aipm_process_memory;
typedef struct {
    uint32_t pid;
    uint64_t t_us;            /* the sample's stamp, µs since the epoch */
    uint32_t sm_pct;          /* % of the driver's sample period a kernel of this process ran */
    uint32_t mem_pct;
} aipm_process_util;
/* nvmlDeviceGetComputeRunningProcesses: what each compute process holds on the GPU. */
int aipm_nvml_process_memory(aipm_engine *e, uint32_t gpu, aipm_process_memory *out, uint32_t max);
/* nvmlDeviceGetProcessUtilization: the driver's per-process samples stamped after since_us. */
int aipm_nvml_process_util(aipm_engine *e, uint32_t gpu, uint64_t since_us, aipm_process_util *out,
                           uint32_t max);
/* GPM (Hopper and newer): metrics are averages between two samples of one GPU. */
typedef struct aipm_gpm_sample aipm_gpm_sample;
int aipm_gpm_supported(aipm_engine *e, uint32_t gpu);   /* 1 supported, 0 not, or AIPM_E* */
int aipm_gpm_sample_new(aipm_engine *e, aipm_gpm_sample **out);  /* a buffer, in *out */
int aipm_gpm_sample_take(aipm_engine *e, uint32_t gpu, aipm_gpm_sample *s);
/* values[i] of metric ids[i] between first and second (taken later, same GPU); codes[i] is
 * NVML's return for that metric (values[i] NaN unless 0). Returns n or AIPM_E*. */
int aipm_gpm_metrics(aipm_engine *e, const aipm_gpm_sample *first, const aipm_gpm_sample *second,
                     const uint32_t *ids, uint32_t n, double *values, int32_t *codes);
void aipm_gpm_sample_free(aipm_engine *e, aipm_gpm_sample *s);

/* CUDA events through the CUDA runtime this process has already loaded (cudart.c): the runtime
 * is looked up, never loaded (NULL, with the reason in error, when it is not mapped or lacks an
 * event function). Events and streams are raw cudaEvent_t / cudaStream_t handles; each call
 * returns the runtime's cudaError_t (0 success, 600 cudaErrorNotReady from a query). */
typedef struct aipm_cudart aipm_cudart;
aipm_cudart *aipm_cudart_open(const char *library_path, char *error, size_t error_len);
void aipm_cudart_close(aipm_cudart *rt);
int aipm_cudart_event_create(const aipm_cudart *rt, uintptr_t *event);
int aipm_cudart_event_destroy(const aipm_cudart *rt, uintptr_t event);
int aipm_cudart_event_record(const aipm_cudart *rt, uintptr_t event, uintptr_t stream);
int aipm_cudart_event_query(const aipm_cudart *rt, uintptr_t event);
int aipm_cudart_event_synchronize(const aipm_cudart *rt, uintptr_t event);
int aipm_cudart_event_elapsed_ms(const aipm_cudart *rt, uintptr_t start, uintptr_t end, float *ms);
/* Many marks' times in one call (the coordinator's drain): for i < n in order, stop at the first
 * mark whose ends[i] the GPU has not reached; else since_anchor_ms[i] = elapsed(anchors[i],
 * starts[i]) and duration_ms[i] = elapsed(starts[i], ends[i]). Returns how many were timed; a
 * runtime error other than not-ready stops there too, with its code in *error (else 0). */
size_t aipm_cudart_resolve(const aipm_cudart *rt, size_t n, const uintptr_t *anchors, const uintptr_t *starts,
                           const uintptr_t *ends, float *since_anchor_ms, float *duration_ms, int *error);

/* AIPM_CDEF_END */

#endif
