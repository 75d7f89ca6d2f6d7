/* fake_nvml.c: a stand-in for libnvidia-ml.so.1, so that the NVML code paths can be tested on
 * machines without a GPU.
 *
 * It exports the NVML functions that csrc/src_nvml.c looks up, with the real signatures and
 * return codes, and answers from a scripted power trace instead of hardware. Everything is
 * computed from the clock on demand (there is no background thread): a call at time t sees
 * exactly what a driver that had been sampling since nvmlInit would hold at t. That keeps the
 * fake stateless between calls, hence safe to call from the sampler thread and from the test
 * thread at once, and makes the truth available in closed form (fake_nvml_energy_j).
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
 *                   GPU i draws the trace plus i*10 W.
 *   FAKE_NVML_SAMPLE_MS=ms           driver sampling period (default 20)
 *   FAKE_NVML_UTIL=G[,M]             utilisation rates in % (default 50,20)
 *   FAKE_NVML_LOSE_GPU_AFTER_S=s     device functions fail with GPU_IS_LOST s seconds after the
 *                                    init that put the settings in force
 *   FAKE_NVML_INIT_FAIL=1            nvmlInit_v2 fails with NVML_ERROR_UNKNOWN
 *   FAKE_NVML_CALL_US=fn:us[,fn:us]  the named NVML functions take that long a call (a sleep),
 *                                    e.g. nvmlDeviceGetTotalEnergyConsumption:4000 as on an H200
 *   FAKE_NVML_SENSOR=key=v[,key=v]   the power sensor's response (default: none, the samples hold
 *                                    the trace at their stamps); see "Sensor response" below
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
 * sample k is taken at origin + k * FAKE_NVML_SAMPLE_MS and holds the trace at that instant
 * (unless FAKE_NVML_SENSOR says otherwise).
 *
 * Sensor response (FAKE_NVML_SENSOR). A real H200's 50 Hz samples are not the power at their
 * stamps: they lag, smooth, overshoot on a rise, and their stamps are irregular. With this set,
 * a sample stamped t (and field 186 read at t) reports what a sensor with this response would
 * show at t; the energy counter, nvmlDeviceGetPowerUsage and the truth helpers keep the trace
 * itself. Keys, each optional (0 or absent: that part of the response is off), in any order:
 *   lag_ms=D        pure delay: the sensor sees the trace D ms late
 *   tau_ms=T        first-order low-pass with time constant T ms: after a step, the reading is
 *                   1 - e^(-x/T) of the way there x ms after the delay, halfway at D + T ln 2
 *                   (without overshoot, which brings that earlier)
 *   overshoot=F     each rise of the trace (a step or a ramp) adds F times its size, decaying
 *   overshoot_ms=O  with time constant O ms, to what the sensor sees, hence low-passed by T
 *                   too; falls get none. F without O fails the init
 *   jitter_ms=J     sample k >= 1 is stamped k * FAKE_NVML_SAMPLE_MS + j_k, j_k a hash of k
 *                   and the GPU index, uniform in [-J, J] (whole µs); J must be below half
 *                   the sample period, so stamps stay strictly increasing; sample 0 stays at
 *                   the origin
 * e.g. FAKE_NVML_SENSOR=lag_ms=5,tau_ms=10,jitter_ms=4,overshoot=0.3,overshoot_ms=30. Unknown or
 * repeated keys and values outside 0..1e6 fail the init too. The response is a step response
 * g(age): the value reported at t is the delayed trace 10 longest time constants before t,
 * plus every increment of it since, each weighted by g at its age; the sum runs in steps of
 * the shortest time constant / 32 (at most 4096 steps), so an edge's age is exact to half a
 * step. It is deterministic and a pure function of the clock, about 1-3 µs a sample at
 * T = 10 ms. A later part of the response (distinct rise and fall constants, a power limit
 * with capping noise, an overshoot that the counter sees as well) is one more row in
 * sensor_keys[] and one more term in step_response() or sensed_power_w(), not a second fake.
 *
 * Test helpers (not NVML): fake_nvml_energy_j, fake_nvml_energy_ns_j, fake_nvml_power_w,
 * fake_nvml_sensed_w, fake_nvml_origin_us, fake_nvml_calls, fake_nvml_reset_calls. A test
 * that loads this library with ctypes from the same path as the code under test shares its
 * state (the dynamic loader maps a file once), so it sees the same origin and the same call
 * counts.
 *
 * Plain C11 with libc only: no libm call is made (NAN is a compile-time constant), so the
 * library builds with nothing but `gcc -shared -fPIC`. */
#define _POSIX_C_SOURCE 200809L
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
    FN_COUNT
};
static const char *const fn_names[FN_COUNT] = {
    "nvmlInit_v2", "nvmlShutdown", "nvmlErrorString", "nvmlDeviceGetCount_v2",
    "nvmlDeviceGetHandleByIndex_v2", "nvmlDeviceGetName", "nvmlDeviceGetSamples",
    "nvmlDeviceGetFieldValues", "nvmlDeviceGetTotalEnergyConsumption",
    "nvmlDeviceGetUtilizationRates", "nvmlDeviceGetMemoryInfo", "nvmlDeviceGetPowerUsage",
};
static atomic_ulong fn_calls[FN_COUNT];

typedef enum { TRACE_CONST, TRACE_TRIANGLE, TRACE_SQUARE } trace_kind;

/* FAKE_NVML_SENSOR's keys, as given (ms, or a fraction); all 0 when a key is absent. */
struct sensor_params {
    double lag_ms, tau_ms, overshoot, overshoot_ms, jitter_ms;
};
static const struct sensor_key {
    const char *name;
    size_t offset;
} sensor_keys[] = {
    {"lag_ms", offsetof(struct sensor_params, lag_ms)},
    {"tau_ms", offsetof(struct sensor_params, tau_ms)},
    {"overshoot", offsetof(struct sensor_params, overshoot)},
    {"overshoot_ms", offsetof(struct sensor_params, overshoot_ms)},
    {"jitter_ms", offsetof(struct sensor_params, jitter_ms)},
};
#define N_SENSOR_KEYS (sizeof sensor_keys / sizeof sensor_keys[0])
#define FAKE_SENSOR_WINDOW 10        /* the response is summed over 10 time constants */
#define FAKE_SENSOR_STEPS_PER_TAU 32 /* in steps of the shorter constant / 32 */
#define FAKE_SENSOR_MAX_STEPS 4096

static double *sensor_param(struct sensor_params *p, size_t key) {
    return (double *)((char *)p + sensor_keys[key].offset);
}

/* The response in the units it is computed in, derived once from the params at init. */
struct sensor {
    int on;                    /* FAKE_NVML_SENSOR was set */
    struct sensor_params p;
    long long lag_us, jitter_us;
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
    long long sample_us;
    unsigned int util_gpu, util_mem;
    double lose_after_s;    /* < 0: never */
    long long call_us[FN_COUNT]; /* how long each function takes */
    struct sensor sensor;
    unsigned int faults;    /* FAKE_NVML_FAULT: bit i set for fault_names[i] */
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
    if (us > 0) {
        struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
        nanosleep(&ts, NULL);
    }
}

/* ---- the trace ---- */

/* floor division and modulo that also behave for times before the origin */
static long long floor_div(long long a, long long b) { return a / b - ((a % b != 0) && ((a < 0) != (b < 0))); }
static long long floor_mod(long long a, long long b) { return a - floor_div(a, b) * b; }

/* Power of GPU 0 at rel_us µs after the origin, in W. Times are integers so that the phase of
 * a grid instant is exact: a triangle corner that falls on a sample is sampled at its corner. */
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
    }
    return 0.0;
}

/* Exact integral of the GPU 0 trace from the origin to rel_s seconds after it, in J.
 * Whole periods contribute their mean; the last, partial period is integrated piecewise. */
static double trace_energy_j(double rel_s) {
    if (rel_s <= 0.0) return 0.0;
    if (cfg.kind == TRACE_CONST) return cfg.lo * rel_s;
    double p = (double)cfg.period_us / 1e6;
    double half = p / 2.0;
    double n = (double)(long long)(rel_s / p);  /* rel_s > 0, so truncation is floor */
    double x = rel_s - n * p;                   /* time into the current period */
    if (x < 0.0) x = 0.0;                       /* guard against rounding */
    double base = cfg.lo, amp = cfg.hi - cfg.lo;
    if (cfg.kind == TRACE_TRIANGLE) {
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
    /* square */
    double whole = half * (cfg.lo + cfg.hi);
    double part = x <= half ? cfg.lo * x : cfg.lo * half + cfg.hi * (x - half);
    return n * whole + part;
}

static double gpu_power_w(unsigned int gpu, long long rel_us) {
    return trace_power_w(rel_us) + FAKE_GPU_STEP_W * gpu;
}

static double gpu_energy_j(unsigned int gpu, double rel_s) {
    if (rel_s <= 0.0) return 0.0;
    return trace_energy_j(rel_s) + FAKE_GPU_STEP_W * gpu * rel_s;
}

/* ---- the sensor's response ---- */

/* e^x for x <= 0, without libm: halve x into [-1/2, 0], sum the series, square back. Used
 * only at init, for the decay factors of the response. */
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

/* What the sensor of GPU `gpu` reports at rel_us: the delayed trace FAKE_SENSOR_WINDOW time
 * constants back, plus each increment of it since, weighted by the step response at its age
 * (the increment over one step is placed at the step's middle). Every call at the same rel_us
 * sums the same terms in the same order, so it gives the same value. */
static double sensed_power_w(unsigned int gpu, long long rel_us) {
    const struct sensor *sn = &cfg.sensor;
    long long t0 = rel_us - sn->lag_us;
    double now = trace_power_w(t0);
    if (sn->step_us == 0) return now + FAKE_GPU_STEP_W * gpu;
    double e_tau = sn->first_tau, e_os = sn->first_os, age_us = (double)sn->step_us / 2.0;
    double prev = now, sum = 0.0;
    for (int i = 1; i <= sn->steps; i++) {
        double earlier = trace_power_w(t0 - (long long)i * sn->step_us);
        if (prev != earlier) sum += step_response(sn, prev - earlier, age_us, e_tau, e_os);
        prev = earlier;
        e_tau *= sn->decay_tau;
        e_os *= sn->decay_os;
        age_us += (double)sn->step_us;
    }
    return prev + sum + FAKE_GPU_STEP_W * gpu;
}

/* What a reading at rel_us reports: the sensor's response if one is set, else the trace. */
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

static int parse_trace(const char *s, struct fake_config *c) {
    double a = 0, b = 0, p = 0;
    char tail;
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

/* "lag_ms=5,tau_ms=10": each key of sensor_keys[] at most once, values in [0, 1e6]. On a bad
 * value returns what is wrong with it. */
static const char *parse_sensor(const char *s, struct sensor_params *p) {
    unsigned int seen = 0;
    memset(p, 0, sizeof *p);
    while (*s) {
        const char *eq = strchr(s, '=');
        if (!eq) return "want KEY=VALUE[,KEY=VALUE...]";
        size_t key = 0;
        while (key < N_SENSOR_KEYS && !(strlen(sensor_keys[key].name) == (size_t)(eq - s) &&
                                        strncmp(sensor_keys[key].name, s, (size_t)(eq - s)) == 0))
            key++;
        if (key == N_SENSOR_KEYS) return "unknown key";
        if (seen & (1u << key)) return "a key given twice";
        seen |= 1u << key;
        char *end = NULL;
        double v = strtod(eq + 1, &end);
        if (end == eq + 1 || (*end != ',' && *end != '\0')) return "not a number";
        if (!(v >= 0.0 && v <= 1e6)) return "values must be in 0..1e6";
        *sensor_param(p, key) = v;
        s = *end == ',' ? end + 1 : end;
    }
    return NULL;
}

/* The response's step, window and decay factors from its params (see sensed_power_w). */
static const char *derive_sensor(struct sensor *sn, long long sample_us) {
    const struct sensor_params *p = &sn->p;
    if (p->overshoot > 0.0 && p->overshoot_ms <= 0.0) return "overshoot needs overshoot_ms";
    sn->lag_us = (long long)(p->lag_ms * 1000.0 + 0.5);
    sn->jitter_us = (long long)(p->jitter_ms * 1000.0 + 0.5);
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
    if (parse_trace(s, c) != 0) {
        fprintf(stderr, "fake_nvml: bad FAKE_NVML_TRACE=%s (want const:W, triangle:BASE,AMP,PERIOD_MS"
                        " or square:LOW,HIGH,PERIOD_MS)\n", s);
        return -1;
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
    s = getenv("FAKE_NVML_SENSOR");
    if (s && *s) {
        c->sensor.on = 1;
        const char *why = parse_sensor(s, &c->sensor.p);
        if (!why) why = derive_sensor(&c->sensor, c->sample_us);
        if (why) {
            fprintf(stderr, "fake_nvml: bad FAKE_NVML_SENSOR=%s (%s; keys:", s, why);
            for (size_t k = 0; k < N_SENSOR_KEYS; k++) fprintf(stderr, " %s", sensor_keys[k].name);
            fprintf(stderr, ")\n");
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
    if (a->on != b->on) return 0;
    struct sensor_params pa = a->p, pb = b->p;
    for (size_t k = 0; k < N_SENSOR_KEYS; k++)
        if (*sensor_param(&pa, k) != *sensor_param(&pb, k)) return 0;
    return 1;
}

static int same_config(const struct fake_config *a, const struct fake_config *b) {
    return a->n_gpus == b->n_gpus && a->kind == b->kind && a->lo == b->lo && a->hi == b->hi &&
           a->period_us == b->period_us && a->sample_us == b->sample_us &&
           a->util_gpu == b->util_gpu && a->util_mem == b->util_mem &&
           a->lose_after_s == b->lose_after_s && memcmp(a->call_us, b->call_us, sizeof a->call_us) == 0 &&
           same_sensor(&a->sensor, &b->sensor) && a->faults == b->faults;
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
    if (read_config(&c) != 0) return NVML_ERROR_UNKNOWN;
    pthread_mutex_lock(&init_lock);
    if (refcount == 0 || !same_config(&c, &cfg)) {
        cfg = c;
        for (unsigned int i = 0; i < FAKE_MAX_GPUS; i++) gpus[i].index = i;
        long long now_us = clock_ns(CLOCK_REALTIME) / 1000;
        origin_us = now_us - now_us % (long long)FAKE_ORIGIN_GRID_US;
        init_monotonic_ns = clock_ns(CLOCK_MONOTONIC);
        atomic_store_explicit(&have_origin, 1, memory_order_release);
        atomic_store_explicit(&initialized, 1, memory_order_release);
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

/* The real one averages over about a second on Ampere and newer; the fake gives the trace
 * at now (whatever FAKE_NVML_SENSOR says), which makes its readings easy to check. */
nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned int *power) {
    count_call(FN_GET_POWER);
    nvmlReturn_t rc = check_device(device);
    if (rc != NVML_SUCCESS) return rc;
    if (!power) return NVML_ERROR_INVALID_ARGUMENT;
    *power = to_mw(gpu_power_w(device->index, now_rel_us()));
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

/* The trace of GPU `gpu` at t (CLOCK_REALTIME seconds), in W. NAN before the first init. */
double fake_nvml_power_w(unsigned int gpu, double t_realtime_s) {
    if (!atomic_load_explicit(&have_origin, memory_order_acquire)) return NAN;
    return gpu_power_w(gpu, rel_us_of(t_realtime_s));
}

/* What a sample of GPU `gpu` stamped t (CLOCK_REALTIME seconds), or field 186 read at t,
 * reports, in W (before the rounding to mW): the trace through FAKE_NVML_SENSOR's response,
 * or the trace itself without one. NAN before the first init. */
double fake_nvml_sensed_w(unsigned int gpu, double t_realtime_s) {
    if (!atomic_load_explicit(&have_origin, memory_order_acquire)) return NAN;
    return reported_power_w(gpu, rel_us_of(t_realtime_s));
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
