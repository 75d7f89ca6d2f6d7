/* fake_nvml.c: a stand-in for libnvidia-ml.so.1, so that the NVML code paths can be tested on
 * machines without a GPU.
 *
 * It exports the NVML functions that csrc/src_nvml.c looks up, with the real signatures and
 * return codes, and answers from a scripted power trace instead of hardware. Everything is
 * computed from the clock on demand (there is no background thread): a call at time t sees
 * exactly what a driver that had been sampling since nvmlInit would hold at t. That keeps the
 * fake stateless between calls, hence safe to call from the sampler thread and from the test
 * thread at once, and makes the truth available in closed form (fake_nvml_energy_j).
 * The true power is the trace plus FAKE_NVML_LOAD's response to its steps; the energy
 * counter, nvmlDeviceGetPowerUsage, the truth helpers and the sensor all see it.
 *
 * Configuration, read from the environment by every nvmlInit_v2. NVML's init is reference
 * counted, and an init that finds the same settings in force shares them and their time
 * origin (the code under test and a test's ctypes handle then agree on the truth). An init
 * that finds different settings replaces them and restarts the origin even if references are
 * still held: otherwise a reference leaked by an earlier test (an engine never closed) would
 * silently pin that test's settings on the next one.
 *   FAKE_NVML_GPUS=N                 number of GPUs (default 1, at most 64)
 *   FAKE_NVML_TRACE=const:W          constant power (default const:100)
 *                   triangle:B,A,P   triangle wave from B up to B+A and back, period P ms,
 *                                    at B at the origin
 *                   square:L,H,P     L for the first half of each period, H for the second
 *                   segments:PATH    piecewise constant, from a text file of lines
 *                                    `START_MS WATTS` (ms after the origin, strictly
 *                                    increasing after rounding to whole µs; W in 0..1e7):
 *                                    each power holds from its start to the next one's,
 *                                    the first one's before it, the last one's after it.
 *                                    Blank lines and lines starting with # are skipped; at
 *                                    most 10,000,000 lines, looked up by binary search. A
 *                                    file that cannot be read or a bad line fails the init
 *                                    with the file and line named (START_MS within
 *                                    +-1e12)
 *                   GPU i draws the trace plus i*10 W.
 *   FAKE_NVML_LOAD=key=v[,key=v]     the GPU's true power at the trace's steps (default: none,
 *                                    the true power is the trace); see "Load response" below
 *   FAKE_NVML_SAMPLE_MS=ms           driver sampling period (default 20)
 *   FAKE_NVML_UTIL=G[,M]             utilisation rates in % (default 50,20)
 *   FAKE_NVML_LOSE_GPU_AFTER_S=s     device functions fail with GPU_IS_LOST s seconds after the
 *                                    init that put the settings in force
 *   FAKE_NVML_INIT_FAIL=1            nvmlInit_v2 fails with NVML_ERROR_UNKNOWN
 *   FAKE_NVML_CALL_US=fn:us[,fn:us]  the named NVML functions take that long a call (a sleep),
 *                                    e.g. nvmlDeviceGetTotalEnergyConsumption:4000 as on an H200
 *   FAKE_NVML_CALL_SPIN=1            those costs are CPU time spent spinning (the caller's thread
 *                                    CPU clock), as the real library's are, rather than sleeps:
 *                                    what a benchmark of the sampler's CPU needs
 *   FAKE_NVML_SENSOR=key=v[,key=v]   the power sensor's response (default: none, the samples hold
 *                                    the trace at their stamps); see "Sensor response" below
 *   FAKE_NVML_PROCESSES=pid:MiB:sm[,...]  compute processes on every GPU: pid (or "self", this
 *                                    process), the memory it holds in MiB, its SM utilisation in %
 *                                    (nvmlDeviceGetComputeRunningProcesses_v3,
 *                                    nvmlDeviceGetProcessUtilization: one sample per process,
 *                                    stamped at the call); default none
 *   FAKE_NVML_GPM=sm,occ,tensor,dram GPM supported, with these SM activity, SM occupancy, tensor
 *                                    and DRAM bandwidth utilisations in % (metrics 2, 3, 5, 10;
 *                                    others NOT_SUPPORTED); default: GPM not supported
 *   FAKE_NVML_FAULT=name[,name]      a broken driver, for the sampler's defences; each name once:
 *                    oversized_samples  nvmlDeviceGetSamples fills at most the caller's buffer
 *                                       but reports FAKE_OVERSIZE more samples than it holds
 *                    null_error_string  nvmlErrorString returns NULL
 *                    bad_value_type     samples and field values come with an unknown type (42)
 *                    unterminated_name  nvmlDeviceGetName fills the whole buffer, without a NUL
 *                    An unknown name fails the init; a new fault is one row in fault_names[].
 * Compile-time switches -DFAKE_NVML_OMIT_SAMPLES and -DFAKE_NVML_OMIT_ENERGY leave out
 * nvmlDeviceGetSamples and nvmlDeviceGetTotalEnergyConsumption, as older drivers do.
 *
 * Time origin: CLOCK_REALTIME at init, rounded down to a multiple of 20 ms. The driver's
 * sample k is taken at origin + k * FAKE_NVML_SAMPLE_MS and holds the true power at that instant
 * (unless FAKE_NVML_SENSOR says otherwise).
 *
 * Load response (FAKE_NVML_LOAD). A real GPU's power overshoots when its load rises and
 * settles slowly when it falls; that energy is drawn, so the counter sees it too. Keys, each
 * optional (0 or absent: off), in any order, with the same checks as FAKE_NVML_SENSOR's:
 *   overshoot=F     each rise of the trace by d adds F d e^(-age/O) to the power, age the time
 *   overshoot_ms=O  since the rise; F without O fails the init
 *   fall_ms=X       each fall by d leaves d e^(-age/X) above the new level, so that the power
 *                   approaches it with time constant X instead of at once
 * Only steps count (square and segments traces): a triangle's ramps get none. Every step's
 * tail adds up, however old: a segments trace keeps, per step, the tails' sum just after it
 * (one binary search and one exponential per lookup); a square trace's steps repeat every
 * period, so their tails sum as a geometric series (steady state since ever). The energy is
 * exact in closed form: a step's tail of C W with time constant T gives C T in all, so the
 * energy up to t is the sum of C T over the steps up to t minus T times each tail's power
 * left at t. No tail is cut off, so there is no truncation error, only the rounding of doubles.
 * This is the GPU's real power; FAKE_NVML_SENSOR's own overshoot is the sensor's, seen by the
 * samples only, and the two add.
 *
 * Sensor response (FAKE_NVML_SENSOR). A real H200's 50 Hz samples are not the power at their
 * stamps: they lag, smooth, overshoot on a rise, and their stamps are irregular. With this set,
 * a sample stamped t (and field 186 read at t) reports what a sensor with this response would
 * show at t; the energy counter, nvmlDeviceGetPowerUsage and the truth helpers keep the true
 * power. Keys, each optional (0 or absent: that part of the response is off), in any order:
 *   window_ms=W     the sensor averages the true power over W ms: what the rest of the response
 *                   acts on at s is the mean over [s - W, s], exactly (the true energy's
 *                   difference / W); with lag and tau the reading at t is the mean of the
 *                   lagged, low-passed power over [t - lag - W, t - lag] (the two filters
 *                   commute), and an overshoot follows the rises of the mean
 *   lag_ms=D        pure delay: the sensor sees the true power D ms late
 *   tau_ms=T        first-order low-pass with time constant T ms: after a step, the reading is
 *                   1 - e^(-x/T) of the way there x ms after the delay, halfway at D + T ln 2
 *                   (without overshoot, which brings that earlier)
 *   overshoot=F     each rise of what the sensor sees (a step or a ramp) adds F times its
 *   overshoot_ms=O  size, decaying with time constant O ms, to it, hence low-passed by T too;
 *                   falls get none. F without O fails the init
 *   jitter_ms=J     sample k >= 1 is stamped k * FAKE_NVML_SAMPLE_MS + j_k, j_k a hash of k
 *                   and the GPU index, uniform in [-J, J] (whole µs); J must be below half
 *                   the sample period, so stamps stay strictly increasing; sample 0 stays at
 *                   the origin
 * e.g. FAKE_NVML_SENSOR=lag_ms=5,tau_ms=10,jitter_ms=4,overshoot=0.3,overshoot_ms=30. Unknown or
 * repeated keys and values outside 0..1e6 fail the init too. The response is a step response
 * g(age): the value reported at t is the delayed input 10 longest time constants before t,
 * plus every increment of it since, each weighted by g at its age; the sum runs in steps of
 * the shortest time constant / 32 (at most 4096 steps), so an edge's age is exact to half a
 * step. It is deterministic and a pure function of the clock, about 1-3 µs a sample at
 * T = 10 ms, some tens of µs with FAKE_NVML_LOAD or window_ms, whose lookups it makes at each
 * step (a minute of 50 Hz samples then takes a fraction of a second). A later part of the response (distinct rise and fall constants, a power limit with
 * capping noise) is one more row in sensor_keys[] and one more term in step_response() or
 * sensed_power_w(), not a second fake.
 *
 * Test helpers (not NVML), on the real clock (CLOCK_REALTIME seconds or ns): fake_nvml_energy_j,
 * fake_nvml_energy_ns_j, fake_nvml_power_w, fake_nvml_sensed_w, fake_nvml_origin_us,
 * fake_nvml_calls, fake_nvml_reset_calls. On a clock the test controls (µs after the origin,
 * any time, past or future; NAN, or LLONG_MIN, before the first init), so that a test can step
 * through a minute of virtual time in a fraction of a second (tests/fakes/nvml_clock.py wraps
 * them):
 *   double fake_nvml_true_w(gpu, rel_us)             the true power at rel_us
 *   double fake_nvml_sensed_at_w(gpu, rel_us)        what a sample stamped rel_us reports
 *   long long fake_nvml_sample_stamp_us(gpu, k)      driver sample k's stamp, with the jitter
 *                                                    (k >= 0; LLONG_MIN otherwise)
 *   double fake_nvml_sample_w(gpu, k)                the value sample k holds, in whole mW as
 *                                                    the driver gives it, in W
 *   double fake_nvml_energy_between_j(gpu, from_us, to_us)  the true energy over the span
 * A test that loads this library with ctypes from the same path as the code under test shares
 * its state (the dynamic loader maps a file once), so it sees the same origin and the same
 * call counts.
 *
 * Plain C11 with libc only: no libm call is made (NAN is a compile-time constant), so the
 * library builds with nothing but `gcc -shared -fPIC`. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- NVML types: the very declarations the sampler is built with ---- */
#include "nvml_types.h"

/* A device handle is a pointer to one of these (NVML's is an opaque struct pointer too). */
struct fake_gpu {
    unsigned int index;
};
typedef struct fake_gpu *nvmlDevice_t;

#define NVML_SUCCESS 0
#define NVML_ERROR_UNINITIALIZED 1
#define NVML_ERROR_INVALID_ARGUMENT 2
#define NVML_ERROR_NOT_SUPPORTED 3
#define NVML_ERROR_NOT_FOUND 6
#define NVML_ERROR_INSUFFICIENT_SIZE 7
#define NVML_ERROR_GPU_IS_LOST 15
#define NVML_ERROR_UNKNOWN 999
#define NVML_TOTAL_POWER_SAMPLES 0
#define NVML_FI_DEV_POWER_INSTANT 186
#define NVML_DEVICE_NAME_BUFFER_SIZE 64

/* ---- the fake's own constants ---- */
#define FAKE_MAX_GPUS 64
#define FAKE_SAMPLE_DEPTH 120                  /* samples the driver keeps: ~2.4 s at 20 ms */
#define FAKE_ORIGIN_GRID_US 20000ULL           /* the origin is a multiple of 20 ms */
#define FAKE_ENERGY_OFFSET_MJ 123456789ULL     /* real counters count from driver load */
#define FAKE_GPU_STEP_W 10.0                   /* GPU i draws i * 10 W more than GPU 0 */
#define GIB (1024ULL * 1024ULL * 1024ULL)
#define FAKE_OVERSIZE 100000U                 /* oversized_samples: samples claimed beyond the buffer */
#define FAKE_MAX_PROCESSES 16
#define FAKE_BAD_VALUE_TYPE 42                /* bad_value_type: no nvmlValueType_t has it */

/* ---- FAKE_NVML_FAULT: one bit each ---- */
enum { FAULT_OVERSIZED_SAMPLES, FAULT_NULL_ERROR_STRING, FAULT_BAD_VALUE_TYPE, FAULT_UNTERMINATED_NAME, FAULT_COUNT };
static const char *const fault_names[FAULT_COUNT] = {
    "oversized_samples", "null_error_string", "bad_value_type", "unterminated_name",
};

/* ---- call counting ---- */
enum {
    FN_INIT,
    FN_SHUTDOWN,
    FN_ERROR_STRING,
    FN_GET_COUNT,
    FN_GET_HANDLE,
    FN_GET_NAME,
    FN_GET_SAMPLES,
    FN_GET_FIELD_VALUES,
    FN_GET_ENERGY,
    FN_GET_UTILIZATION,
    FN_GET_MEMORY,
    FN_GET_POWER,
    FN_GET_PROCESSES,
    FN_GET_PROCESS_UTIL,
    FN_GPM_SUPPORT,
    FN_GPM_ALLOC,
    FN_GPM_FREE,
    FN_GPM_GET,
    FN_GPM_METRICS,
    FN_COUNT
};
static const char *const fn_names[FN_COUNT] = {
    "nvmlInit_v2", "nvmlShutdown", "nvmlErrorString", "nvmlDeviceGetCount_v2",
    "nvmlDeviceGetHandleByIndex_v2", "nvmlDeviceGetName", "nvmlDeviceGetSamples",
    "nvmlDeviceGetFieldValues", "nvmlDeviceGetTotalEnergyConsumption",
    "nvmlDeviceGetUtilizationRates", "nvmlDeviceGetMemoryInfo", "nvmlDeviceGetPowerUsage",
    "nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetProcessUtilization",
    "nvmlGpmQueryDeviceSupport", "nvmlGpmSampleAlloc", "nvmlGpmSampleFree", "nvmlGpmSampleGet",
    "nvmlGpmMetricsGet",
};
static atomic_ulong fn_calls[FN_COUNT];

typedef enum { TRACE_CONST, TRACE_TRIANGLE, TRACE_SQUARE, TRACE_SEGMENTS } trace_kind;

/* A KEY=VALUE[,...] setting's keys: each a double field of its params struct. */
struct param_key {
    const char *name;
    size_t offset;
};

static double *param_field(void *params, const struct param_key *keys, size_t key) {
    return (double *)((char *)params + keys[key].offset);
}

/* FAKE_NVML_SENSOR's keys, as given (ms, or a fraction); all 0 when a key is absent. */
struct sensor_params {
    double lag_ms, tau_ms, overshoot, overshoot_ms, jitter_ms, window_ms;
};
static const struct param_key sensor_keys[] = {
    {"lag_ms", offsetof(struct sensor_params, lag_ms)},
    {"tau_ms", offsetof(struct sensor_params, tau_ms)},
    {"overshoot", offsetof(struct sensor_params, overshoot)},
    {"overshoot_ms", offsetof(struct sensor_params, overshoot_ms)},
    {"jitter_ms", offsetof(struct sensor_params, jitter_ms)},
    {"window_ms", offsetof(struct sensor_params, window_ms)},
};
#define N_SENSOR_KEYS (sizeof sensor_keys / sizeof sensor_keys[0])
#define FAKE_SENSOR_WINDOW 10        /* the response is summed over 10 time constants */
#define FAKE_SENSOR_STEPS_PER_TAU 32 /* in steps of the shorter constant / 32 */
#define FAKE_SENSOR_MAX_STEPS 4096

/* FAKE_NVML_LOAD's keys, as given; all 0 when a key is absent. */
struct load_params {
    double overshoot, overshoot_ms, fall_ms;
};
static const struct param_key load_keys[] = {
    {"overshoot", offsetof(struct load_params, overshoot)},
    {"overshoot_ms", offsetof(struct load_params, overshoot_ms)},
    {"fall_ms", offsetof(struct load_params, fall_ms)},
};
#define N_LOAD_KEYS (sizeof load_keys / sizeof load_keys[0])

#define FAKE_SEGMENTS_MAX 10000000LL /* lines of a segments file */

/* A segments trace, and per step (segment i >= 1 starts with a step from segment i - 1) the
 * load response's state just after it; see load_tails. Arrays of n, owned by the config. */
struct segments {
    long long n;
    long long *start_us;    /* strictly increasing */
    double *w;              /* power from start_us[i] on */
    double *cum_j;          /* trace energy from start_us[0] to start_us[i] */
    double *rise_w, *fall_w; /* the rises' and the falls' tails just after step i (0 for i = 0) */
    double *steps_j;        /* the full energy of the tails of steps 1..i */
};

/* The load response in the units it is computed in, derived once from its params at init. */
struct load {
    int on;                  /* FAKE_NVML_LOAD was set, with a response that is not all off */
    struct load_params p;
    double rise_tau_us, fall_tau_us; /* 0: that tail is off */
    /* square trace: its two steps per period (at phase 0 and at the half), each a family of
     * tails repeating every period: in steady state a tail of amp_w just after its step */
    struct step_family {
        long long phase_us;
        double tau_us, amp_w, full_j; /* full_j: one step's tail energy, C T */
    } family[2];
};

/* The response in the units it is computed in, derived once from the params at init. */
struct sensor {
    int on;                    /* FAKE_NVML_SENSOR was set */
    struct sensor_params p;
    long long lag_us, jitter_us, window_us;
    long long step_us;         /* the sum's step; 0: no filter, the delayed trace itself */
    int steps;
    double decay_tau, first_tau;   /* exp(-step / tau), exp(-step / 2 / tau): 0 if tau is 0 */
    double decay_os, first_os;     /* the same for overshoot_ms */
    double os_gain;                /* overshoot * O / (O - tau); see step_response */
    int os_same_constant;          /* O == tau: the overshoot term is (age / tau) e^(-age/tau) */
};

struct fake_config {
    unsigned int n_gpus;
    trace_kind kind;
    double lo, hi;          /* const: lo; triangle: lo = base, hi = base + amp; square: low, high */
    long long period_us;    /* triangle and square */
    struct segments seg;    /* segments */
    struct load load;
    long long sample_us;
    unsigned int util_gpu, util_mem;
    double lose_after_s;    /* < 0: never */
    long long call_us[FN_COUNT]; /* how long each function takes */
    int call_spin;          /* 1: call_us is CPU time spun, 0: a sleep */
    struct sensor sensor;
    unsigned int faults;    /* FAKE_NVML_FAULT: bit i set for fault_names[i] */
    unsigned int n_processes; /* FAKE_NVML_PROCESSES */
    struct fake_process {
        unsigned int pid;
        unsigned long long mem_bytes;
        unsigned int sm_pct;
    } processes[FAKE_MAX_PROCESSES];
    int gpm_on;               /* FAKE_NVML_GPM given */
    double gpm[4];            /* SM activity, occupancy, tensor, DRAM bandwidth, % */
};

/* Written only by nvmlInit_v2, under init_lock, and published by the release store of
 * `initialized`; the device functions read it after an acquire load. A change of settings
 * while another holder is calling races with its reads; every field stays valid on its own
 * (periods never 0), so such a holder sees a mix of old and new values at worst. */
static pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;
static int refcount;
static atomic_int initialized;
static struct fake_config cfg;
static long long origin_us;            /* CLOCK_REALTIME, µs; kept after shutdown for the helpers */
static atomic_int have_origin;
static long long init_monotonic_ns;
static struct fake_gpu gpus[FAKE_MAX_GPUS];

static int is_initialized(void) { return atomic_load_explicit(&initialized, memory_order_acquire); }

/* ---- clocks ---- */
static long long clock_ns(clockid_t clk) {
    struct timespec ts;
    clock_gettime(clk, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Counts a call and makes it take as long as FAKE_NVML_CALL_US says. The cost is read without
 * the init lock, like the rest of cfg (see above). */
static void count_call(int fn) {
    atomic_fetch_add_explicit(&fn_calls[fn], 1, memory_order_relaxed);
    long long us = is_initialized() ? cfg.call_us[fn] : 0;
    if (us > 0 && cfg.call_spin) {
        long long until = clock_ns(CLOCK_THREAD_CPUTIME_ID) + us * 1000;
        while (clock_ns(CLOCK_THREAD_CPUTIME_ID) < until) {
        }
    } else if (us > 0) {
        struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
        nanosleep(&ts, NULL);
    }
}

/* ---- the trace ---- */

/* floor division and modulo that also behave for times before the origin */
static long long floor_div(long long a, long long b) { return a / b - ((a % b != 0) && ((a < 0) != (b < 0))); }
static long long floor_mod(long long a, long long b) { return a - floor_div(a, b) * b; }

/* floor of a double without libm, for |x| < 2^63 */
static double floor_d(double x) {
    double t = (double)(long long)x;
    return t > x ? t - 1.0 : t;
}

/* e^x for x <= 0, without libm: halve x into [-1/2, 0], sum the series, square back. */
static double exp_neg(double x) {
    if (x < -700.0) return 0.0;
    int halvings = 0;
    while (x < -0.5) {
        x /= 2.0;
        halvings++;
    }
    double term = 1.0, sum = 1.0;
    for (int n = 1; n < 20; n++) {
        term *= x / n;
        sum += term;
    }
    while (halvings-- > 0) sum *= sum;
    return sum;
}

/* The last segment starting at or before t_us (µs after the origin); -1 before the first. */
static long long segment_at(double t_us) {
    const struct segments *sg = &cfg.seg;
    long long lo = -1, hi = sg->n; /* start_us[lo] <= t_us < start_us[hi], as if at -inf, +inf */
    while (hi - lo > 1) {
        long long mid = lo + (hi - lo) / 2;
        if ((double)sg->start_us[mid] <= t_us) lo = mid;
        else hi = mid;
    }
    return lo;
}

/* A square period's high half starts at the first phase where trace_power_w gives hi. */
static long long square_low_us(void) { return cfg.period_us - cfg.period_us / 2; }

/* Power of GPU 0's trace at rel_us µs after the origin, in W. Times are integers so that the
 * phase of a grid instant is exact: a triangle corner that falls on a sample is sampled at its
 * corner. */
static double trace_power_w(long long rel_us) {
    switch (cfg.kind) {
    case TRACE_CONST:
        return cfg.lo;
    case TRACE_TRIANGLE: {
        long long ph = floor_mod(rel_us, cfg.period_us);
        double x = (double)ph / (double)cfg.period_us;          /* [0, 1) */
        double f = x < 0.5 ? 2.0 * x : 2.0 * (1.0 - x);          /* 0 -> 1 -> 0 */
        return cfg.lo + (cfg.hi - cfg.lo) * f;
    }
    case TRACE_SQUARE: {
        long long ph = floor_mod(rel_us, cfg.period_us);
        return 2 * ph < cfg.period_us ? cfg.lo : cfg.hi;        /* steps up at half period */
    }
    case TRACE_SEGMENTS: {
        long long i = segment_at((double)rel_us);
        return cfg.seg.w[i < 0 ? 0 : i];
    }
    }
    return 0.0;
}

/* An integral of the GPU 0 trace up to rel_s seconds after the origin (any time, before the
 * origin too), in J: 0 at the origin for the periodic traces, at the first segment's start for
 * segments; take differences. Whole periods contribute their mean; the last, partial period is
 * integrated piecewise. */
static double trace_integral_j(double rel_s) {
    if (cfg.kind == TRACE_CONST) return cfg.lo * rel_s;
    if (cfg.kind == TRACE_SEGMENTS) {
        const struct segments *sg = &cfg.seg;
        double t_us = rel_s * 1e6;
        long long i = segment_at(t_us);
        if (i < 0) return sg->w[0] * (t_us - (double)sg->start_us[0]) / 1e6;
        return sg->cum_j[i] + sg->w[i] * (t_us - (double)sg->start_us[i]) / 1e6;
    }
    double p = (double)cfg.period_us / 1e6;
    double n = floor_d(rel_s / p);
    double x = rel_s - n * p;                   /* time into the current period */
    if (x < 0.0) x = 0.0;                       /* guard against rounding */
    if (x > p) x = p;
    double base = cfg.lo, amp = cfg.hi - cfg.lo;
    if (cfg.kind == TRACE_TRIANGLE) {
        double half = p / 2.0;
        double whole = p * (base + amp / 2.0);
        double part;
        if (x <= half) {
            part = base * x + amp * x * x / p;                        /* rising: amp * 2t/p */
        } else {
            double y = x - half;
            part = base * x + amp * half / 2.0 + amp * (y - y * y / p); /* falling: amp * (1 - 2y/p) */
        }
        return n * whole + part;
    }
    /* square: low for square_low_us() of each period, as trace_power_w has it */
    double low = (double)square_low_us() / 1e6;
    double whole = low * cfg.lo + (p - low) * cfg.hi;
    double part = x <= low ? cfg.lo * x : cfg.lo * low + cfg.hi * (x - low);
    return n * whole + part;
}

/* ---- the load response (FAKE_NVML_LOAD) ---- */

/* The load response of GPU 0 at t_us (µs after the origin): *tail_w the power its tails add
 * at t; *held_j the energy they have still to give (each tail's power times its time
 * constant); *steps_j the full energy of the tails of every step up to t, counted from a fixed
 * step. The response's energy over [a, b] is then the difference of (steps_j - held_j). */
static void load_tails(double t_us, double *tail_w, double *held_j, double *steps_j) {
    const struct load *ld = &cfg.load;
    *tail_w = *held_j = *steps_j = 0.0;
    if (!ld->on) return;
    if (cfg.kind == TRACE_SEGMENTS) {
        const struct segments *sg = &cfg.seg;
        long long i = segment_at(t_us);
        if (i <= 0) return; /* no step yet */
        double age = t_us - (double)sg->start_us[i];
        double rise = ld->rise_tau_us > 0.0 ? sg->rise_w[i] * exp_neg(-age / ld->rise_tau_us) : 0.0;
        double fall = ld->fall_tau_us > 0.0 ? sg->fall_w[i] * exp_neg(-age / ld->fall_tau_us) : 0.0;
        *tail_w = rise + fall;
        *held_j = (rise * ld->rise_tau_us + fall * ld->fall_tau_us) / 1e6;
        *steps_j = sg->steps_j[i];
        return;
    }
    if (cfg.kind != TRACE_SQUARE) return; /* no steps */
    double period = (double)cfg.period_us;
    for (int f = 0; f < 2; f++) {
        const struct step_family *fam = &ld->family[f];
        if (fam->amp_w == 0.0) continue;
        double k = floor_d((t_us - (double)fam->phase_us) / period); /* the last step's index */
        double age = t_us - (double)fam->phase_us - k * period;
        if (age < 0.0) age = 0.0; /* guard against rounding */
        double x = fam->amp_w * exp_neg(-age / fam->tau_us);
        *tail_w += x;
        *held_j += x * fam->tau_us / 1e6;
        *steps_j += k * fam->full_j;
    }
}

/* True power of GPU 0 at rel_us, in W: the trace and the load response's tails. */
static double true_power_w(long long rel_us) {
    double tail_w = 0.0, held_j, steps_j;
    load_tails((double)rel_us, &tail_w, &held_j, &steps_j);
    return trace_power_w(rel_us) + tail_w;
}

/* An integral of GPU 0's true power up to rel_s (any time), in J; take differences. */
static double true_integral_j(double rel_s) {
    double tail_w, held_j, steps_j;
    load_tails(rel_s * 1e6, &tail_w, &held_j, &steps_j);
    return trace_integral_j(rel_s) + steps_j - held_j;
}

static double gpu_power_w(unsigned int gpu, long long rel_us) {
    return true_power_w(rel_us) + FAKE_GPU_STEP_W * gpu;
}

/* The true energy of GPU `gpu` over [from_s, to_s] (seconds after the origin), in J. */
static double gpu_energy_between_j(unsigned int gpu, double from_s, double to_s) {
    return true_integral_j(to_s) - true_integral_j(from_s) + FAKE_GPU_STEP_W * gpu * (to_s - from_s);
}

/* Energy from the origin to rel_s, in J; 0 before the origin (where the counter starts). */
static double gpu_energy_j(unsigned int gpu, double rel_s) {
    if (rel_s <= 0.0) return 0.0;
    return gpu_energy_between_j(gpu, 0.0, rel_s);
}

/* ---- the sensor's response ---- */

/* What the step response g(age) adds for an increment d of the delayed trace at that age:
 * d (1 - e^(-age/tau)) for the low-pass, and for a rise the overshoot F e^(-age/O) passed
 * through the same low-pass, F O / (O - tau) (e^(-age/O) - e^(-age/tau)), or F (age/tau)
 * e^(-age/tau) where O == tau. e_tau and e_os are e^(-age/tau) and e^(-age/O) (0 for a
 * constant of 0, whose filter passes everything at once). */
static double step_response(const struct sensor *sn, double d, double age_us, double e_tau, double e_os) {
    double g = 1.0 - e_tau;
    if (d > 0.0 && sn->p.overshoot > 0.0) {
        if (sn->os_same_constant)
            g += sn->p.overshoot * age_us / (sn->p.tau_ms * 1000.0) * e_tau;
        else
            g += sn->os_gain * (e_os - e_tau);
    }
    return d * g;
}

/* What the sensor's filters act on at rel_us (GPU 0): the true power, or with window_ms its
 * mean over the window up to rel_us, exactly, from the true energy. */
static double sensor_input_w(long long rel_us) {
    long long w_us = cfg.sensor.window_us;
    if (w_us == 0) return true_power_w(rel_us);
    double t = (double)rel_us / 1e6, w = (double)w_us / 1e6;
    return (true_integral_j(t) - true_integral_j(t - w)) / w;
}

/* What the sensor of GPU `gpu` reports at rel_us: its delayed input FAKE_SENSOR_WINDOW time
 * constants back, plus each increment of it since, weighted by the step response at its age
 * (the increment over one step is placed at the step's middle). Every call at the same rel_us
 * sums the same terms in the same order, so it gives the same value. */
static double sensed_power_w(unsigned int gpu, long long rel_us) {
    const struct sensor *sn = &cfg.sensor;
    long long t0 = rel_us - sn->lag_us;
    double now = sensor_input_w(t0);
    if (sn->step_us == 0) return now + FAKE_GPU_STEP_W * gpu;
    double e_tau = sn->first_tau, e_os = sn->first_os, age_us = (double)sn->step_us / 2.0;
    double prev = now, sum = 0.0;
    for (int i = 1; i <= sn->steps; i++) {
        double earlier = sensor_input_w(t0 - (long long)i * sn->step_us);
        if (prev != earlier) sum += step_response(sn, prev - earlier, age_us, e_tau, e_os);
        prev = earlier;
        e_tau *= sn->decay_tau;
        e_os *= sn->decay_os;
        age_us += (double)sn->step_us;
    }
    return prev + sum + FAKE_GPU_STEP_W * gpu;
}

/* splitmix64's finaliser: a well-mixed hash of the sample index, so that every call agrees. */
static uint64_t mix64(uint64_t z) {
    z += 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* Stamp of sample k of GPU `gpu`, µs after the origin: on the grid, moved by the jitter if
 * one is set (never sample 0, which stays at the origin). |jitter| < half the period keeps
 * the stamps strictly increasing. */
static long long sample_stamp_us(unsigned int gpu, long long k) {
    long long t = k * cfg.sample_us, j = cfg.sensor.jitter_us;
    if (j == 0 || k <= 0) return t;
    uint64_t h = mix64((uint64_t)k ^ ((uint64_t)gpu << 56));
    return t + (long long)(h % (uint64_t)(2 * j + 1)) - j;
}

/* What a reading at rel_us reports: the sensor's response if one is set, else the true power. */
static double reported_power_w(unsigned int gpu, long long rel_us) {
    return cfg.sensor.on ? sensed_power_w(gpu, rel_us) : gpu_power_w(gpu, rel_us);
}

/* NVML reports power as an integer number of mW. */
static unsigned int to_mw(double w) {
    double mw = w * 1000.0 + 0.5;
    if (mw <= 0.0) return 0;
    if (mw >= (double)UINT_MAX) return UINT_MAX;
    return (unsigned int)mw;
}

/* ---- configuration ---- */

/* Reads a segments file into sg (see FAKE_NVML_TRACE). On an error writes what is wrong,
 * naming the file and line, into why and returns -1; sg then holds what was allocated. */
static int read_segments(const char *path, struct segments *sg, char *why, size_t why_len) {
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(why, why_len, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    char *line = NULL;
    size_t line_cap = 0;
    long long cap = 0, lineno = 0;
    int rc = 0;
    memset(sg, 0, sizeof *sg);
    while (getline(&line, &line_cap, f) >= 0) {
        lineno++;
        const char *p = line;
        while (*p == ' ' || *p == '\t') p++;
        if (*p == '\0' || *p == '\n' || *p == '\r' || *p == '#') continue;
        char *end1 = NULL, *end2 = NULL;
        double ms = strtod(p, &end1);
        double w = end1 != p ? strtod(end1, &end2) : 0.0;
        const char *bad = NULL;
        if (end1 == p || end2 == end1) bad = "want START_MS WATTS";
        else {
            while (*end2 == ' ' || *end2 == '\t' || *end2 == '\r' || *end2 == '\n') end2++;
            if (*end2 != '\0') bad = "want START_MS WATTS and nothing after";
            else if (!(ms > -1e12 && ms < 1e12)) bad = "START_MS must be within +-1e12";
            else if (!(w >= 0.0 && w <= 1e7)) bad = "WATTS must be in 0..1e7";
        }
        long long us = (long long)(ms * 1000.0 + (ms >= 0 ? 0.5 : -0.5));
        if (!bad && sg->n > 0 && us <= sg->start_us[sg->n - 1])
            bad = "START_MS must increase strictly (to the µs) from the line before";
        if (!bad && sg->n >= FAKE_SEGMENTS_MAX) bad = "more than 10000000 lines";
        if (bad) {
            snprintf(why, why_len, "%s line %lld: %s", path, lineno, bad);
            rc = -1;
            break;
        }
        if (sg->n == cap) {
            cap = cap ? 2 * cap : 1024;
            long long *s2 = realloc(sg->start_us, (size_t)cap * sizeof *s2);
            if (s2) sg->start_us = s2;
            double *w2 = s2 ? realloc(sg->w, (size_t)cap * sizeof *w2) : NULL;
            if (w2) sg->w = w2;
            if (!s2 || !w2) {
                snprintf(why, why_len, "%s line %lld: out of memory", path, lineno);
                rc = -1;
                break;
            }
        }
        sg->start_us[sg->n] = us;
        sg->w[sg->n] = w;
        sg->n++;
    }
    if (rc == 0 && ferror(f)) {
        snprintf(why, why_len, "%s: cannot read: %s", path, strerror(errno));
        rc = -1;
    }
    if (rc == 0 && sg->n == 0) {
        snprintf(why, why_len, "%s: no START_MS WATTS line", path);
        rc = -1;
    }
    free(line);
    fclose(f);
    if (rc != 0) return rc;
    long long n = sg->n;
    sg->cum_j = calloc((size_t)n, sizeof(double));
    sg->rise_w = calloc((size_t)n, sizeof(double));
    sg->fall_w = calloc((size_t)n, sizeof(double));
    sg->steps_j = calloc((size_t)n, sizeof(double));
    if (!sg->cum_j || !sg->rise_w || !sg->fall_w || !sg->steps_j) {
        snprintf(why, why_len, "%s: out of memory for %lld lines", path, n);
        return -1;
    }
    sg->cum_j[0] = 0.0;
    for (long long i = 1; i < n; i++)
        sg->cum_j[i] = sg->cum_j[i - 1] + sg->w[i - 1] * (double)(sg->start_us[i] - sg->start_us[i - 1]) / 1e6;
    return 0;
}

static void free_segments(struct segments *sg) {
    free(sg->start_us);
    free(sg->w);
    free(sg->cum_j);
    free(sg->rise_w);
    free(sg->fall_w);
    free(sg->steps_j);
    memset(sg, 0, sizeof *sg);
}

static int same_segments(const struct segments *a, const struct segments *b) {
    if (a->n != b->n) return 0;
    if (a->n == 0) return 1;
    return memcmp(a->start_us, b->start_us, (size_t)a->n * sizeof *a->start_us) == 0 &&
           memcmp(a->w, b->w, (size_t)a->n * sizeof *a->w) == 0;
}

/* On an error that is more than "not one of the forms", writes it into why (else leaves it
 * empty) and returns -1. */
static int parse_trace(const char *s, struct fake_config *c, char *why, size_t why_len) {
    double a = 0, b = 0, p = 0;
    char tail;
    why[0] = '\0';
    if (strncmp(s, "segments:", 9) == 0) {
        c->kind = TRACE_SEGMENTS;
        return read_segments(s + 9, &c->seg, why, why_len);
    }
    if (sscanf(s, "const:%lf %c", &a, &tail) == 1) {
        c->kind = TRACE_CONST;
        c->lo = c->hi = a;
        return 0;
    }
    if (sscanf(s, "triangle:%lf,%lf,%lf %c", &a, &b, &p, &tail) == 3 && p > 0) {
        c->kind = TRACE_TRIANGLE;
        c->lo = a;
        c->hi = a + b;
    } else if (sscanf(s, "square:%lf,%lf,%lf %c", &a, &b, &p, &tail) == 3 && p > 0) {
        c->kind = TRACE_SQUARE;
        c->lo = a;
        c->hi = b;
    } else {
        return -1;
    }
    c->period_us = (long long)(p * 1000.0 + 0.5);
    return c->period_us >= 2 ? 0 : -1;
}

static int function_index(const char *name, size_t len) {
    for (int i = 0; i < FN_COUNT; i++)
        if (strlen(fn_names[i]) == len && strncmp(fn_names[i], name, len) == 0) return i;
    return -1;
}

/* "nvmlDeviceGetTotalEnergyConsumption:4000,nvmlDeviceGetSamples:100" */
static int parse_call_costs(const char *s, struct fake_config *c) {
    while (*s) {
        const char *colon = strchr(s, ':');
        if (!colon) return -1;
        int fn = function_index(s, (size_t)(colon - s));
        char *end = NULL;
        long long us = strtoll(colon + 1, &end, 10);
        if (fn < 0 || end == colon + 1 || us < 0 || (*end != ',' && *end != '\0')) return -1;
        c->call_us[fn] = us;
        s = *end == ',' ? end + 1 : end;
    }
    return 0;
}

/* "oversized_samples,null_error_string": each a name of fault_names[], at most once. */
static int parse_faults(const char *s, unsigned int *faults) {
    *faults = 0;
    while (*s) {
        const char *comma = strchr(s, ',');
        size_t len = comma ? (size_t)(comma - s) : strlen(s);
        int f = 0;
        while (f < FAULT_COUNT && !(strlen(fault_names[f]) == len && strncmp(fault_names[f], s, len) == 0)) f++;
        if (f == FAULT_COUNT || (*faults & (1u << f))) return -1;
        *faults |= 1u << f;
        s = comma ? comma + 1 : s + len;
    }
    return 0;
}

static int has_fault(int f) { return is_initialized() && (cfg.faults & (1u << f)) != 0; }

/* "lag_ms=5,tau_ms=10": each of the n keys at most once, values in [0, 1e6], into the params
 * struct they describe (zeroed first; params_size bytes). On a bad value returns what is
 * wrong with it. */
static const char *parse_params(const char *s, const struct param_key *keys, size_t n, void *params,
                                size_t params_size) {
    unsigned int seen = 0;
    memset(params, 0, params_size);
    while (*s) {
        const char *eq = strchr(s, '=');
        if (!eq) return "want KEY=VALUE[,KEY=VALUE...]";
        size_t key = 0;
        while (key < n && !(strlen(keys[key].name) == (size_t)(eq - s) &&
                            strncmp(keys[key].name, s, (size_t)(eq - s)) == 0))
            key++;
        if (key == n) return "unknown key";
        if (seen & (1u << key)) return "a key given twice";
        seen |= 1u << key;
        char *end = NULL;
        double v = strtod(eq + 1, &end);
        if (end == eq + 1 || (*end != ',' && *end != '\0')) return "not a number";
        if (!(v >= 0.0 && v <= 1e6)) return "values must be in 0..1e6";
        *param_field(params, keys, key) = v;
        s = *end == ',' ? end + 1 : end;
    }
    return NULL;
}

static int same_params(const void *a, const void *b, const struct param_key *keys, size_t n) {
    for (size_t k = 0; k < n; k++)
        if (*param_field((void *)a, keys, k) != *param_field((void *)b, keys, k)) return 0;
    return 1;
}

/* Says on stderr that setting `name`=s is bad and why, listing its keys. */
static void bad_params(const char *name, const char *s, const char *why, const struct param_key *keys,
                       size_t n) {
    fprintf(stderr, "fake_nvml: bad %s=%s (%s; keys:", name, s, why);
    for (size_t k = 0; k < n; k++) fprintf(stderr, " %s", keys[k].name);
    fprintf(stderr, ")\n");
}

/* The load response's tails from its params and the trace (see load_tails): for a square
 * trace its two step families, for segments each step's state. Needs the trace parsed. */
static const char *derive_load(struct fake_config *c) {
    struct load *ld = &c->load;
    const struct load_params *p = &ld->p;
    if (p->overshoot > 0.0 && p->overshoot_ms <= 0.0) return "overshoot needs overshoot_ms";
    ld->rise_tau_us = p->overshoot > 0.0 ? p->overshoot_ms * 1000.0 : 0.0;
    ld->fall_tau_us = p->fall_ms * 1000.0;
    ld->on = ld->rise_tau_us > 0.0 || ld->fall_tau_us > 0.0;
    if (c->kind == TRACE_SQUARE) {
        /* family 0 steps from hi to lo at phase 0, family 1 from lo to hi at the half */
        const double step[2] = {c->lo - c->hi, c->hi - c->lo};
        const long long phase[2] = {0, c->period_us - c->period_us / 2};
        for (int f = 0; f < 2; f++) {
            struct step_family *fam = &ld->family[f];
            int rise = step[f] > 0.0;
            double tau = rise ? ld->rise_tau_us : ld->fall_tau_us;
            double size = rise ? p->overshoot * step[f] : -step[f]; /* the tail just after one step */
            fam->phase_us = phase[f];
            fam->tau_us = tau;
            fam->amp_w = tau > 0.0 ? size / (1.0 - exp_neg(-(double)c->period_us / tau)) : 0.0;
            fam->full_j = tau > 0.0 ? size * tau / 1e6 : 0.0;
        }
    } else if (c->kind == TRACE_SEGMENTS) {
        struct segments *sg = &c->seg;
        sg->rise_w[0] = sg->fall_w[0] = sg->steps_j[0] = 0.0;
        for (long long i = 1; i < sg->n; i++) {
            double d = sg->w[i] - sg->w[i - 1], dt = (double)(sg->start_us[i] - sg->start_us[i - 1]);
            double rise = 0.0, fall = 0.0, full = 0.0;
            if (ld->rise_tau_us > 0.0) {
                rise = sg->rise_w[i - 1] * exp_neg(-dt / ld->rise_tau_us) + (d > 0.0 ? p->overshoot * d : 0.0);
                full += d > 0.0 ? p->overshoot * d * ld->rise_tau_us / 1e6 : 0.0;
            }
            if (ld->fall_tau_us > 0.0) {
                fall = sg->fall_w[i - 1] * exp_neg(-dt / ld->fall_tau_us) + (d < 0.0 ? -d : 0.0);
                full += d < 0.0 ? -d * ld->fall_tau_us / 1e6 : 0.0;
            }
            sg->rise_w[i] = rise;
            sg->fall_w[i] = fall;
            sg->steps_j[i] = sg->steps_j[i - 1] + full;
        }
    }
    return NULL;
}

/* The response's step, window and decay factors from its params (see sensed_power_w). */
static const char *derive_sensor(struct sensor *sn, long long sample_us) {
    const struct sensor_params *p = &sn->p;
    if (p->overshoot > 0.0 && p->overshoot_ms <= 0.0) return "overshoot needs overshoot_ms";
    sn->lag_us = (long long)(p->lag_ms * 1000.0 + 0.5);
    sn->jitter_us = (long long)(p->jitter_ms * 1000.0 + 0.5);
    sn->window_us = (long long)(p->window_ms * 1000.0 + 0.5);
    if (2 * sn->jitter_us >= sample_us) return "jitter_ms must be below half of FAKE_NVML_SAMPLE_MS";
    double tau_us = p->tau_ms * 1000.0;
    double os_us = p->overshoot > 0.0 ? p->overshoot_ms * 1000.0 : 0.0;
    double shortest = tau_us > 0.0 && (os_us <= 0.0 || tau_us < os_us) ? tau_us : os_us;
    double longest = tau_us > os_us ? tau_us : os_us;
    sn->step_us = 0;
    sn->steps = 0;
    if (longest <= 0.0) return NULL; /* a pure delay */
    double window_us = FAKE_SENSOR_WINDOW * longest;
    long long step = (long long)(shortest / FAKE_SENSOR_STEPS_PER_TAU);
    if (step < 1) step = 1;
    if (window_us / (double)step > FAKE_SENSOR_MAX_STEPS)
        step = (long long)(window_us / FAKE_SENSOR_MAX_STEPS) + 1;
    sn->step_us = step;
    sn->steps = (int)(window_us / (double)step) + 1;
    sn->decay_tau = tau_us > 0.0 ? exp_neg(-(double)step / tau_us) : 0.0;
    sn->first_tau = tau_us > 0.0 ? exp_neg(-(double)step / 2.0 / tau_us) : 0.0;
    sn->decay_os = os_us > 0.0 ? exp_neg(-(double)step / os_us) : 0.0;
    sn->first_os = os_us > 0.0 ? exp_neg(-(double)step / 2.0 / os_us) : 0.0;
    sn->os_same_constant = os_us > 0.0 && os_us == tau_us;
    sn->os_gain = os_us > 0.0 && !sn->os_same_constant ? p->overshoot * os_us / (os_us - tau_us) : 0.0;
    return NULL;
}

/* FAKE_NVML_PROCESSES: PID:MIB:SM entries, comma separated; "self" is getpid(). */
static int parse_processes(const char *s, struct fake_config *c) {
    while (*s) {
        if (c->n_processes >= FAKE_MAX_PROCESSES) return -1;
        struct fake_process *p = &c->processes[c->n_processes];
        const char *rest;
        if (strncmp(s, "self:", 5) == 0) {
            p->pid = (unsigned int)getpid();
            rest = s + 4;
        } else {
            char *end;
            unsigned long pid = strtoul(s, &end, 10);
            if (end == s || pid == 0 || pid > UINT_MAX) return -1;
            p->pid = (unsigned int)pid;
            rest = end;
        }
        unsigned long long mib;
        unsigned int sm;
        int used = 0;
        if (sscanf(rest, ":%llu:%u%n", &mib, &sm, &used) != 2 || sm > 100) return -1;
        p->mem_bytes = mib * 1024ULL * 1024ULL;
        p->sm_pct = sm;
        c->n_processes++;
        s = rest + used;
        if (*s == ',') s++;
        else if (*s) return -1;
    }
    return 0;
}

static const char *env_or(const char *name, const char *fallback) {
    const char *v = getenv(name);
    return v && *v ? v : fallback;
}

/* Fills c from the environment; on a bad value says which on stderr (a silent fallback would
 * make a test pass against the wrong trace) and returns -1. */
static int read_config(struct fake_config *c) {
    memset(c, 0, sizeof *c);
    const char *s;
    char tail;

    s = env_or("FAKE_NVML_GPUS", "1");
    int n = -1;
    if (sscanf(s, "%d %c", &n, &tail) != 1 || n < 0 || n > FAKE_MAX_GPUS) goto bad_gpus;
    c->n_gpus = (unsigned int)n;

    s = env_or("FAKE_NVML_TRACE", "const:100");
    char why[512];
    if (parse_trace(s, c, why, sizeof why) != 0) {
        if (why[0])
            fprintf(stderr, "fake_nvml: bad FAKE_NVML_TRACE=%s (%s)\n", s, why);
        else
            fprintf(stderr, "fake_nvml: bad FAKE_NVML_TRACE=%s (want const:W, triangle:BASE,AMP,PERIOD_MS,"
                            " square:LOW,HIGH,PERIOD_MS or segments:PATH)\n", s);
        return -1;
    }
    s = getenv("FAKE_NVML_LOAD");
    if (s && *s) {
        const char *bad = parse_params(s, load_keys, N_LOAD_KEYS, &c->load.p, sizeof c->load.p);
        if (!bad) bad = derive_load(c);
        if (bad) {
            bad_params("FAKE_NVML_LOAD", s, bad, load_keys, N_LOAD_KEYS);
            return -1;
        }
    }

    s = env_or("FAKE_NVML_SAMPLE_MS", "20");
    double ms = 0;
    if (sscanf(s, "%lf %c", &ms, &tail) != 1 || ms <= 0) {
        fprintf(stderr, "fake_nvml: bad FAKE_NVML_SAMPLE_MS=%s\n", s);
        return -1;
    }
    c->sample_us = (long long)(ms * 1000.0 + 0.5);
    if (c->sample_us < 1) c->sample_us = 1;

    s = env_or("FAKE_NVML_UTIL", "50,20");
    int ug = -1, um = 20;
    int got = sscanf(s, "%d,%d %c", &ug, &um, &tail);
    if ((got != 1 && got != 2) || ug < 0 || ug > 100 || um < 0 || um > 100) {
        fprintf(stderr, "fake_nvml: bad FAKE_NVML_UTIL=%s (want GPU[,MEMORY] in %%)\n", s);
        return -1;
    }
    c->util_gpu = (unsigned int)ug;
    c->util_mem = (unsigned int)um;

    c->lose_after_s = -1.0;
    s = getenv("FAKE_NVML_LOSE_GPU_AFTER_S");
    if (s && *s) {
        if (sscanf(s, "%lf %c", &c->lose_after_s, &tail) != 1 || c->lose_after_s < 0) {
            fprintf(stderr, "fake_nvml: bad FAKE_NVML_LOSE_GPU_AFTER_S=%s\n", s);
            return -1;
        }
    }
    s = getenv("FAKE_NVML_CALL_US");
    if (s && *s && parse_call_costs(s, c) != 0) {
        fprintf(stderr, "fake_nvml: bad FAKE_NVML_CALL_US=%s (want NAME:US[,NAME:US...] of NVML"
                        " functions)\n", s);
        return -1;
    }
    s = getenv("FAKE_NVML_CALL_SPIN");
    c->call_spin = s && *s && strcmp(s, "0") != 0;
    s = getenv("FAKE_NVML_SENSOR");
    if (s && *s) {
        c->sensor.on = 1;
        const char *bad = parse_params(s, sensor_keys, N_SENSOR_KEYS, &c->sensor.p, sizeof c->sensor.p);
        if (!bad) bad = derive_sensor(&c->sensor, c->sample_us);
        if (bad) {
            bad_params("FAKE_NVML_SENSOR", s, bad, sensor_keys, N_SENSOR_KEYS);
            return -1;
        }
    }
    s = getenv("FAKE_NVML_PROCESSES");
    if (s && *s && parse_processes(s, c) != 0) {
        fprintf(stderr, "fake_nvml: bad FAKE_NVML_PROCESSES=%s (want PID:MIB:SM[,...], PID a number or"
                        " self, SM in %%, at most %d)\n", s, FAKE_MAX_PROCESSES);
        return -1;
    }
    s = getenv("FAKE_NVML_GPM");
    if (s && *s) {
        c->gpm_on = 1;
        int got = sscanf(s, "%lf,%lf,%lf,%lf %c", &c->gpm[0], &c->gpm[1], &c->gpm[2], &c->gpm[3], &tail);
        int ok = got == 4;
        for (int k = 0; k < 4 && ok; k++) ok = c->gpm[k] >= 0 && c->gpm[k] <= 100;
        if (!ok) {
            fprintf(stderr, "fake_nvml: bad FAKE_NVML_GPM=%s (want SM,OCCUPANCY,TENSOR,DRAM in %%)\n", s);
            return -1;
        }
    }
    s = getenv("FAKE_NVML_FAULT");
    if (s && *s && parse_faults(s, &c->faults) != 0) {
        fprintf(stderr, "fake_nvml: bad FAKE_NVML_FAULT=%s (want NAME[,NAME...], each once, of:", s);
        for (int f = 0; f < FAULT_COUNT; f++) fprintf(stderr, " %s", fault_names[f]);
        fprintf(stderr, ")\n");
        return -1;
    }
    return 0;

bad_gpus:
    fprintf(stderr, "fake_nvml: bad FAKE_NVML_GPUS=%s (want 0..%d)\n", s, FAKE_MAX_GPUS);
    return -1;
}

/* The sensor's derived values follow from its params and the sample period. */
static int same_sensor(const struct sensor *a, const struct sensor *b) {
    return a->on == b->on && same_params(&a->p, &b->p, sensor_keys, N_SENSOR_KEYS);
}

/* Field by field: a struct's padding is not copied by assignment, so memcmp could call equal
 * settings different, and an init would then restart the origin under the other holders. */
static int same_processes(const struct fake_config *a, const struct fake_config *b) {
    if (a->n_processes != b->n_processes) return 0;
    for (unsigned int i = 0; i < a->n_processes; i++) {
        const struct fake_process *p = &a->processes[i], *q = &b->processes[i];
        if (p->pid != q->pid || p->mem_bytes != q->mem_bytes || p->sm_pct != q->sm_pct) return 0;
    }
    return 1;
}

static int same_config(const struct fake_config *a, const struct fake_config *b) {
    return a->n_gpus == b->n_gpus && a->kind == b->kind && a->lo == b->lo && a->hi == b->hi &&
           a->period_us == b->period_us && same_segments(&a->seg, &b->seg) &&
           same_params(&a->load.p, &b->load.p, load_keys, N_LOAD_KEYS) && a->sample_us == b->sample_us &&
           a->util_gpu == b->util_gpu && a->util_mem == b->util_mem &&
           a->lose_after_s == b->lose_after_s && memcmp(a->call_us, b->call_us, sizeof a->call_us) == 0 &&
           a->call_spin == b->call_spin &&
           same_sensor(&a->sensor, &b->sensor) && a->faults == b->faults &&
           same_processes(a, b) && a->gpm_on == b->gpm_on && memcmp(a->gpm, b->gpm, sizeof a->gpm) == 0;
}

/* ---- common checks of the device functions ---- */

static int gpu_lost(void) {
    if (cfg.lose_after_s < 0) return 0;
    return (double)(clock_ns(CLOCK_MONOTONIC) - init_monotonic_ns) / 1e9 >= cfg.lose_after_s;
}

/* NVML's order: not initialised, then a bad handle, then the device's own state. */
static nvmlReturn_t check_device(nvmlDevice_t d) {
    if (!is_initialized()) return NVML_ERROR_UNINITIALIZED;
    uintptr_t p = (uintptr_t)d, lo = (uintptr_t)gpus, hi = (uintptr_t)(gpus + cfg.n_gpus);
    if (p < lo || p >= hi || (p - lo) % sizeof *gpus != 0) return NVML_ERROR_INVALID_ARGUMENT;
    if (gpu_lost()) return NVML_ERROR_GPU_IS_LOST;
    return NVML_SUCCESS;
}

static long long now_rel_us(void) { return clock_ns(CLOCK_REALTIME) / 1000 - origin_us; }

/* ---- NVML API ---- */

nvmlReturn_t nvmlInit_v2(void) {
    count_call(FN_INIT);
    const char *fail = getenv("FAKE_NVML_INIT_FAIL");
    if (fail && *fail && strcmp(fail, "0") != 0)
        return NVML_ERROR_UNKNOWN; /* what a machine whose driver is not loaded looks like */
    struct fake_config c;
    if (read_config(&c) != 0) {
        free_segments(&c.seg);
        return NVML_ERROR_UNKNOWN;
    }
    pthread_mutex_lock(&init_lock);
    if (refcount == 0 || !same_config(&c, &cfg)) {
        /* A holder of a reference (an engine a test never closed) may still be reading the old
         * segments: they are freed only when nobody holds one, else kept (a test's few MB). */
        if (refcount == 0) free_segments(&cfg.seg);
        cfg = c;
        for (unsigned int i = 0; i < FAKE_MAX_GPUS; i++) gpus[i].index = i;
        long long now_us = clock_ns(CLOCK_REALTIME) / 1000;
        origin_us = now_us - now_us % (long long)FAKE_ORIGIN_GRID_US;
        init_monotonic_ns = clock_ns(CLOCK_MONOTONIC);
        atomic_store_explicit(&have_origin, 1, memory_order_release);
        atomic_store_explicit(&initialized, 1, memory_order_release);
    } else {
        free_segments(&c.seg); /* the same as those in force */
    }
    refcount++;
    pthread_mutex_unlock(&init_lock);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlShutdown(void) {
    count_call(FN_SHUTDOWN);
    nvmlReturn_t rc = NVML_SUCCESS;
    pthread_mutex_lock(&init_lock);
    if (refcount == 0) {
        rc = NVML_ERROR_UNINITIALIZED;
    } else if (--refcount == 0) {
        atomic_store_explicit(&initialized, 0, memory_order_release);
    }
    pthread_mutex_unlock(&init_lock);
    return rc;
}

/* The strings of the real library, for the codes that can plausibly come up. */
const char *nvmlErrorString(nvmlReturn_t result) {
    count_call(FN_ERROR_STRING);
    if (has_fault(FAULT_NULL_ERROR_STRING)) return NULL;
    switch (result) {
    case 0: return "Success";
    case 1: return "Uninitialized";
    case 2: return "Invalid Argument";
    case 3: return "Not Supported";
    case 4: return "Insufficient Permissions";
    case 5: return "Already Initialized";
    case 6: return "Not Found";
    case 7: return "Insufficient Size";
    case 8: return "Insufficient External Power";
    case 9: return "Driver Not Loaded";
    case 10: return "Timeout";
    case 12: return "NVML Shared Library Not Found";
    case 13: return "Function Not Found";
    case 15: return "GPU is lost";
    case 999: return "Unknown Error";
    }
    return "Unknown Error";
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *deviceCount) {
    count_call(FN_GET_COUNT);
    if (!is_initialized()) return NVML_ERROR_UNINITIALIZED;
    if (!deviceCount) return NVML_ERROR_INVALID_ARGUMENT;
    *deviceCount = cfg.n_gpus;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    count_call(FN_GET_HANDLE);
    if (!is_initialized()) return NVML_ERROR_UNINITIALIZED;
    if (!device || index >= cfg.n_gpus) return NVML_ERROR_INVALID_ARGUMENT;
    if (gpu_lost()) return NVML_ERROR_GPU_IS_LOST;
    *device = &gpus[index];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    count_call(FN_GET_NAME);
    nvmlReturn_t rc = check_device(device);
    if (rc != NVML_SUCCESS) return rc;
    if (!name) return NVML_ERROR_INVALID_ARGUMENT;
    if (has_fault(FAULT_UNTERMINATED_NAME)) {
        memset(name, 'X', length);
        return NVML_SUCCESS;
    }
    char buf[NVML_DEVICE_NAME_BUFFER_SIZE];
    int n = snprintf(buf, sizeof buf, "Fake GPU %u", device->index);
    if (n < 0 || (unsigned int)n >= length) return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(name, buf, (size_t)n + 1);
    return NVML_SUCCESS;
}

#ifndef FAKE_NVML_OMIT_SAMPLES
/* The last sample of GPU `gpu` stamped at or before rel_us (-1 if none). The jitter moves a
 * stamp by less than half a period, so the grid's answer is off by one at most. */
static long long sample_at_or_before(unsigned int gpu, long long rel_us) {
    long long k = floor_div(rel_us, cfg.sample_us);
    while (sample_stamp_us(gpu, k + 1) <= rel_us) k++;
    while (k >= 0 && sample_stamp_us(gpu, k) > rel_us) k--;
    return k;
}

/* The driver's power sample buffer: sample k is at origin + k * sample period (moved by the
 * sensor's jitter, if any), the newest is the last one not in the future and the oldest kept
 * is FAKE_SAMPLE_DEPTH - 1 before it. */
nvmlReturn_t nvmlDeviceGetSamples(nvmlDevice_t device, int type, unsigned long long lastSeenTimeStamp,
                                  nvmlValueType_t *sampleValType, unsigned int *sampleCount,
                                  nvmlSample_t *samples) {
    count_call(FN_GET_SAMPLES);
    nvmlReturn_t rc = check_device(device);
    if (rc != NVML_SUCCESS) return rc;
    if (type != NVML_TOTAL_POWER_SAMPLES) return NVML_ERROR_NOT_SUPPORTED; /* only power is faked */
    if (!sampleValType || !sampleCount) return NVML_ERROR_INVALID_ARGUMENT;
    *sampleValType = has_fault(FAULT_BAD_VALUE_TYPE) ? (nvmlValueType_t)FAKE_BAD_VALUE_TYPE
                                                     : NVML_VALUE_TYPE_UNSIGNED_INT;
    if (!samples) { /* a size query: how many the buffer can hold */
        *sampleCount = FAKE_SAMPLE_DEPTH;
        return NVML_SUCCESS;
    }
    long long rel = now_rel_us();
    if (rel < 0) return NVML_ERROR_NOT_FOUND; /* the clock was set back past the origin */
    unsigned int gpu = device->index;
    long long newest = sample_at_or_before(gpu, rel);
    long long first = newest - (FAKE_SAMPLE_DEPTH - 1);
    if (first < 0) first = 0;
    if (lastSeenTimeStamp >= (unsigned long long)origin_us) {
        long long after = sample_at_or_before(
            gpu, (long long)(lastSeenTimeStamp - (unsigned long long)origin_us)) + 1;
        if (after > first) first = after;
    }
    if (first > newest) return NVML_ERROR_NOT_FOUND;
    unsigned long long n = (unsigned long long)(newest - first + 1);
    if (n > *sampleCount) {
        *sampleCount = (unsigned int)n; /* what would have been needed */
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    for (unsigned long long i = 0; i < n; i++) {
        long long t = sample_stamp_us(gpu, first + (long long)i);
        samples[i].timeStamp = (unsigned long long)(origin_us + t);
        samples[i].sampleValue.ullVal = 0; /* clear the union's upper bytes */
        samples[i].sampleValue.uiVal = to_mw(reported_power_w(gpu, t));
    }
    *sampleCount = (unsigned int)n + (has_fault(FAULT_OVERSIZED_SAMPLES) ? FAKE_OVERSIZE : 0);
    return NVML_SUCCESS;
}
#endif

nvmlReturn_t nvmlDeviceGetFieldValues(nvmlDevice_t device, int valuesCount, nvmlFieldValue_t *values) {
    count_call(FN_GET_FIELD_VALUES);
    nvmlReturn_t rc = check_device(device);
    if (rc != NVML_SUCCESS) return rc;
    if (valuesCount < 0 || (valuesCount > 0 && !values)) return NVML_ERROR_INVALID_ARGUMENT;
    long long rel = now_rel_us();
    for (int i = 0; i < valuesCount; i++) {
        nvmlFieldValue_t *f = &values[i];
        f->timestamp = origin_us + rel;
        f->latencyUsec = 0;
        f->value.ullVal = 0;
        if (f->fieldId == NVML_FI_DEV_POWER_INSTANT) {
            f->valueType = has_fault(FAULT_BAD_VALUE_TYPE) ? (nvmlValueType_t)FAKE_BAD_VALUE_TYPE
                                                           : NVML_VALUE_TYPE_UNSIGNED_INT;
            f->value.uiVal = to_mw(reported_power_w(device->index, rel));
            f->nvmlReturn = NVML_SUCCESS;
        } else {
            f->nvmlReturn = NVML_ERROR_NOT_SUPPORTED; /* per field, as NVML reports it */
        }
    }
    return NVML_SUCCESS;
}

#ifndef FAKE_NVML_OMIT_ENERGY
/* mJ since "driver load": the exact integral since the origin plus a fixed offset, truncated
 * to whole mJ as the real counter is. */
nvmlReturn_t nvmlDeviceGetTotalEnergyConsumption(nvmlDevice_t device, unsigned long long *energy) {
    count_call(FN_GET_ENERGY);
    nvmlReturn_t rc = check_device(device);
    if (rc != NVML_SUCCESS) return rc;
    if (!energy) return NVML_ERROR_INVALID_ARGUMENT;
    double mj = gpu_energy_j(device->index, (double)now_rel_us() / 1e6) * 1000.0;
    *energy = FAKE_ENERGY_OFFSET_MJ + (unsigned long long)(mj > 0.0 ? mj : 0.0);
    return NVML_SUCCESS;
}
#endif

nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *utilization) {
    count_call(FN_GET_UTILIZATION);
    nvmlReturn_t rc = check_device(device);
    if (rc != NVML_SUCCESS) return rc;
    if (!utilization) return NVML_ERROR_INVALID_ARGUMENT;
    utilization->gpu = cfg.util_gpu;
    utilization->memory = cfg.util_mem;
    return NVML_SUCCESS;
}

/* 80 GiB cards with (10 + i) GiB in use, so that GPUs can be told apart. */
nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory) {
    count_call(FN_GET_MEMORY);
    nvmlReturn_t rc = check_device(device);
    if (rc != NVML_SUCCESS) return rc;
    if (!memory) return NVML_ERROR_INVALID_ARGUMENT;
    memory->total = 80 * GIB;
    memory->used = (10ULL + device->index) * GIB;
    memory->free = memory->total - memory->used;
    return NVML_SUCCESS;
}

/* The real one averages over about a second on Ampere and newer; the fake gives the true
 * power at now (whatever FAKE_NVML_SENSOR says), which makes its readings easy to check. */
nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned int *power) {
    count_call(FN_GET_POWER);
    nvmlReturn_t rc = check_device(device);
    if (rc != NVML_SUCCESS) return rc;
    if (!power) return NVML_ERROR_INVALID_ARGUMENT;
    *power = to_mw(gpu_power_w(device->index, now_rel_us()));
    return NVML_SUCCESS;
}

/* ---- per-process queries and GPM ---- */

nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device, unsigned int *infoCount,
                                                     nvmlProcessInfo_v3_t *infos) {
    count_call(FN_GET_PROCESSES);
    nvmlReturn_t rc = check_device(device);
    if (rc != NVML_SUCCESS) return rc;
    if (!infoCount) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned int room = *infoCount;
    *infoCount = cfg.n_processes;
    if (room < cfg.n_processes || (cfg.n_processes && !infos)) return NVML_ERROR_INSUFFICIENT_SIZE;
    for (unsigned int i = 0; i < cfg.n_processes; i++) {
        memset(&infos[i], 0, sizeof infos[i]);
        infos[i].pid = cfg.processes[i].pid;
        infos[i].usedGpuMemory = cfg.processes[i].mem_bytes;
    }
    return NVML_SUCCESS;
}

/* One sample per process, stamped now; NOT_FOUND when none is newer than lastSeenTimeStamp. */
nvmlReturn_t nvmlDeviceGetProcessUtilization(nvmlDevice_t device, nvmlProcessUtilizationSample_t *utilization,
                                             unsigned int *processSamplesCount,
                                             unsigned long long lastSeenTimeStamp) {
    count_call(FN_GET_PROCESS_UTIL);
    nvmlReturn_t rc = check_device(device);
    if (rc != NVML_SUCCESS) return rc;
    if (!processSamplesCount) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned long long now_us = (unsigned long long)(clock_ns(CLOCK_REALTIME) / 1000);
    if (cfg.n_processes == 0 || now_us <= lastSeenTimeStamp) return NVML_ERROR_NOT_FOUND;
    unsigned int room = *processSamplesCount;
    *processSamplesCount = cfg.n_processes;
    if (!utilization || room < cfg.n_processes) return NVML_ERROR_INSUFFICIENT_SIZE;
    for (unsigned int i = 0; i < cfg.n_processes; i++) {
        memset(&utilization[i], 0, sizeof utilization[i]);
        utilization[i].pid = cfg.processes[i].pid;
        utilization[i].timeStamp = now_us;
        utilization[i].smUtil = cfg.processes[i].sm_pct;
    }
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlGpmQueryDeviceSupport(nvmlDevice_t device, nvmlGpmSupport_t *support) {
    count_call(FN_GPM_SUPPORT);
    nvmlReturn_t rc = check_device(device);
    if (rc != NVML_SUCCESS) return rc;
    if (!support || support->version != NVML_GPM_SUPPORT_VERSION) return NVML_ERROR_INVALID_ARGUMENT;
    support->isSupportedDevice = (unsigned int)cfg.gpm_on;
    return NVML_SUCCESS;
}

/* A GPM sample buffer: which GPU it was taken on and when (µs since the origin); -1: not taken. */
struct nvmlGpmSample_st {
    int gpu;
    long long t_us;
};

nvmlReturn_t nvmlGpmSampleAlloc(nvmlGpmSample_t *sample) {
    count_call(FN_GPM_ALLOC);
    if (!is_initialized()) return NVML_ERROR_UNINITIALIZED;
    if (!sample) return NVML_ERROR_INVALID_ARGUMENT;
    *sample = calloc(1, sizeof **sample);
    if (!*sample) return NVML_ERROR_UNKNOWN;
    (*sample)->gpu = -1;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlGpmSampleFree(nvmlGpmSample_t sample) {
    count_call(FN_GPM_FREE);
    if (!sample) return NVML_ERROR_INVALID_ARGUMENT;
    free(sample);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlGpmSampleGet(nvmlDevice_t device, nvmlGpmSample_t sample) {
    count_call(FN_GPM_GET);
    nvmlReturn_t rc = check_device(device);
    if (rc != NVML_SUCCESS) return rc;
    if (!sample) return NVML_ERROR_INVALID_ARGUMENT;
    if (!cfg.gpm_on) return NVML_ERROR_NOT_SUPPORTED;
    sample->gpu = (int)device->index;
    sample->t_us = now_rel_us();
    return NVML_SUCCESS;
}

/* The metric ids the fake knows, in the order of cfg.gpm. */
static const unsigned int fake_gpm_ids[4] = {2, 3, 5, 10};

nvmlReturn_t nvmlGpmMetricsGet(nvmlGpmMetricsGet_t *m) {
    count_call(FN_GPM_METRICS);
    if (!is_initialized()) return NVML_ERROR_UNINITIALIZED;
    if (!m || m->version != NVML_GPM_METRICS_GET_VERSION || !m->sample1 || !m->sample2 ||
        m->numMetrics > AIPM_GPM_METRICS_CAPACITY)
        return NVML_ERROR_INVALID_ARGUMENT;
    /* like the driver: two samples of one GPU, the second taken later */
    if (m->sample1->gpu < 0 || m->sample1->gpu != m->sample2->gpu || m->sample2->t_us <= m->sample1->t_us)
        return NVML_ERROR_INVALID_ARGUMENT;
    for (unsigned int i = 0; i < m->numMetrics; i++) {
        m->metrics[i].nvmlReturn = NVML_ERROR_NOT_SUPPORTED;
        m->metrics[i].value = 0.0;
        for (int k = 0; k < 4; k++) {
            if (m->metrics[i].metricId == fake_gpm_ids[k]) {
                m->metrics[i].nvmlReturn = NVML_SUCCESS;
                m->metrics[i].value = cfg.gpm[k];
            }
        }
    }
    return NVML_SUCCESS;
}

/* ---- test helpers ---- */

/* Joules GPU `gpu` has drawn from the origin to t (CLOCK_REALTIME seconds), without the
 * counter's offset; energy over [t0, t1] is the difference of two calls. NAN before the first
 * nvmlInit. Valid after nvmlShutdown too, until the next first init moves the origin. */
double fake_nvml_energy_j(unsigned int gpu, double t_realtime_s) {
    if (!atomic_load_explicit(&have_origin, memory_order_acquire)) return NAN;
    return gpu_energy_j(gpu, t_realtime_s - (double)origin_us / 1e6);
}

/* The same from an integer time, ns since the epoch. A double holds an epoch time only to
 * about 0.24 µs, which at a few hundred W is tens of µJ; this one is exact to the ns. */
double fake_nvml_energy_ns_j(unsigned int gpu, long long t_realtime_ns) {
    if (!atomic_load_explicit(&have_origin, memory_order_acquire)) return NAN;
    return gpu_energy_j(gpu, (double)(t_realtime_ns - origin_us * 1000) / 1e9);
}

/* t (CLOCK_REALTIME seconds) in µs after the origin, to the nearest µs, so that a sample's
 * timeStamp / 1e6 lands on its own stamp. */
static long long rel_us_of(double t_realtime_s) {
    double rel_us = (t_realtime_s - (double)origin_us / 1e6) * 1e6;
    return rel_us >= 0 ? (long long)(rel_us + 0.5) : -(long long)(0.5 - rel_us);
}

/* The true power of GPU `gpu` at t (CLOCK_REALTIME seconds), in W. NAN before the first init. */
double fake_nvml_power_w(unsigned int gpu, double t_realtime_s) {
    if (!atomic_load_explicit(&have_origin, memory_order_acquire)) return NAN;
    return gpu_power_w(gpu, rel_us_of(t_realtime_s));
}

/* What a sample of GPU `gpu` stamped t (CLOCK_REALTIME seconds), or field 186 read at t,
 * reports, in W (before the rounding to mW): the true power through FAKE_NVML_SENSOR's
 * response, or the true power itself without one. NAN before the first init. */
double fake_nvml_sensed_w(unsigned int gpu, double t_realtime_s) {
    if (!atomic_load_explicit(&have_origin, memory_order_acquire)) return NAN;
    return reported_power_w(gpu, rel_us_of(t_realtime_s));
}

/* ---- test helpers on a clock the test controls: µs after the origin, any time ---- */

static int have_config(void) { return atomic_load_explicit(&have_origin, memory_order_acquire); }

/* The true power of GPU `gpu` at rel_us, in W. NAN before the first init. */
double fake_nvml_true_w(unsigned int gpu, long long rel_us) {
    if (!have_config()) return NAN;
    return gpu_power_w(gpu, rel_us);
}

/* What a sample of GPU `gpu` stamped rel_us (or field 186 read then) reports, in W, before the
 * rounding to mW. NAN before the first init. */
double fake_nvml_sensed_at_w(unsigned int gpu, long long rel_us) {
    if (!have_config()) return NAN;
    return reported_power_w(gpu, rel_us);
}

/* The stamp of GPU `gpu`'s driver sample k, µs after the origin, with the sensor's jitter.
 * LLONG_MIN before the first init or for k < 0 (the driver has no sample before the origin). */
long long fake_nvml_sample_stamp_us(unsigned int gpu, long long k) {
    if (!have_config() || k < 0) return LLONG_MIN;
    return sample_stamp_us(gpu, k);
}

/* The value GPU `gpu`'s driver sample k holds, in W: what nvmlDeviceGetSamples gives (whole
 * mW) / 1000. NAN before the first init or for k < 0. */
double fake_nvml_sample_w(unsigned int gpu, long long k) {
    if (!have_config() || k < 0) return NAN;
    return to_mw(reported_power_w(gpu, sample_stamp_us(gpu, k))) / 1000.0;
}

/* The true energy of GPU `gpu` over [from_us, to_us] (µs after the origin), in J: exact, in
 * closed form, negative if to_us < from_us. NAN before the first init. */
double fake_nvml_energy_between_j(unsigned int gpu, long long from_us, long long to_us) {
    if (!have_config()) return NAN;
    return gpu_energy_between_j(gpu, (double)from_us / 1e6, (double)to_us / 1e6);
}

/* The origin in µs since the epoch; 0 before the first nvmlInit. */
unsigned long long fake_nvml_origin_us(void) {
    if (!atomic_load_explicit(&have_origin, memory_order_acquire)) return 0;
    return (unsigned long long)origin_us;
}

/* How many times the NVML function `fn` was called since load (or fake_nvml_reset_calls).
 * An unknown name gives ULONG_MAX, so that a misspelt name cannot pass an "== 0" check. */
unsigned long fake_nvml_calls(const char *fn) {
    if (!fn) return ULONG_MAX;
    for (int i = 0; i < FN_COUNT; i++)
        if (strcmp(fn, fn_names[i]) == 0) return atomic_load(&fn_calls[i]);
    return ULONG_MAX;
}

void fake_nvml_reset_calls(void) {
    for (int i = 0; i < FN_COUNT; i++) atomic_store(&fn_calls[i], 0);
}
