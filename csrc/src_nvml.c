/* src_nvml.c: NVIDIA GPUs through NVML, loaded at run time.
 *
 * No CUDA toolkit or NVML header is needed to build: the few types and functions used are
 * declared here as the NVML API documents them. Every function is looked up with dlsym, and
 * one that is missing disables only the channels that need it.
 *
 * Nothing a library returns is trusted further than its type: a count is clamped to the
 * buffer it describes, a string may be NULL or unterminated, a value type may be unknown. A
 * driver bug then costs a reading (counted as an error), never a read out of bounds. */
#include <dlfcn.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#include "nvml_types.h"

typedef void *nvmlDevice_t;

#define NVML_SUCCESS 0
#define NVML_ERROR_NOT_FOUND 6
#define NVML_ERROR_UNKNOWN 999
#define NVML_TOTAL_POWER_SAMPLES 0
#define NVML_FI_DEV_POWER_INSTANT 186
#define NVML_SAMPLE_CAPACITY 512
#define NVML_MAX_GPUS 64

struct nvml_lib {
    void *handle;
    unsigned int count;
    nvmlDevice_t devices[NVML_MAX_GPUS];
    nvmlReturn_t (*init)(void);
    nvmlReturn_t (*shutdown)(void);
    const char *(*error_string)(nvmlReturn_t);
    nvmlReturn_t (*get_count)(unsigned int *);
    nvmlReturn_t (*get_handle)(unsigned int, nvmlDevice_t *);
    nvmlReturn_t (*get_name)(nvmlDevice_t, char *, unsigned int);
    nvmlReturn_t (*get_samples)(nvmlDevice_t, int, unsigned long long, nvmlValueType_t *,
                                unsigned int *, nvmlSample_t *);
    nvmlReturn_t (*get_field_values)(nvmlDevice_t, int, nvmlFieldValue_t *);
    nvmlReturn_t (*get_energy)(nvmlDevice_t, unsigned long long *);
    nvmlReturn_t (*get_utilization)(nvmlDevice_t, nvmlUtilization_t *);
    nvmlReturn_t (*get_memory)(nvmlDevice_t, nvmlMemory_t *);
    nvmlReturn_t (*get_power)(nvmlDevice_t, unsigned int *);
    nvmlSample_t samples[NVML_SAMPLE_CAPACITY]; /* scratch for the sampler thread only */
};

#define NVML_UNKNOWN_ERROR_TEXT "unknown NVML error"

/* NVML's text for a code; a placeholder when the library has no nvmlErrorString or its
 * nvmlErrorString returns NULL. */
static const char *error_text(const struct nvml_lib *n, nvmlReturn_t rc) {
    const char *text = n && n->error_string ? n->error_string(rc) : NULL;
    return text ? text : NVML_UNKNOWN_ERROR_TEXT;
}

static void *sym(void *h, const char *a, const char *b) {
    void *p = dlsym(h, a);
    if (!p && b) p = dlsym(h, b);
    return p;
}

int aipm_nvml_open(aipm_engine *e, const char *library_path) {
    if (e->nvml) return (int)e->nvml->count;
    /* RTLD_NODELETE: the library stays mapped after nvml_close, so that a later dlopen of the
     * same file (another engine, a test's own handle on a fake) finds the same instance and
     * its state, and no code of a driver library is unmapped under a thread it started */
    void *h = dlopen(library_path, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
    if (!h) {
        return engine_fail(e, AIPM_EOPEN, 0, "dlopen(%s): %s", library_path, dlerror());
    }
    struct nvml_lib *n = calloc(1, sizeof *n);
    if (!n) {
        dlclose(h);
        return AIPM_ENOMEM;
    }
    n->handle = h;
    n->init = (nvmlReturn_t(*)(void))sym(h, "nvmlInit_v2", "nvmlInit");
    n->shutdown = (nvmlReturn_t(*)(void))sym(h, "nvmlShutdown", NULL);
    n->error_string = (const char *(*)(nvmlReturn_t))sym(h, "nvmlErrorString", NULL);
    n->get_count = (nvmlReturn_t(*)(unsigned int *))sym(h, "nvmlDeviceGetCount_v2", "nvmlDeviceGetCount");
    n->get_handle = (nvmlReturn_t(*)(unsigned int, nvmlDevice_t *))sym(
        h, "nvmlDeviceGetHandleByIndex_v2", "nvmlDeviceGetHandleByIndex");
    *(void **)&n->get_name = sym(h, "nvmlDeviceGetName", NULL);
    *(void **)&n->get_samples = sym(h, "nvmlDeviceGetSamples", NULL);
    *(void **)&n->get_field_values = sym(h, "nvmlDeviceGetFieldValues", NULL);
    *(void **)&n->get_energy = sym(h, "nvmlDeviceGetTotalEnergyConsumption", NULL);
    *(void **)&n->get_utilization = sym(h, "nvmlDeviceGetUtilizationRates", NULL);
    *(void **)&n->get_memory = sym(h, "nvmlDeviceGetMemoryInfo", NULL);
    *(void **)&n->get_power = sym(h, "nvmlDeviceGetPowerUsage", NULL);
    if (!n->init || !n->get_count || !n->get_handle) {
        dlclose(h);
        free(n);
        return engine_fail(e, AIPM_ESYMBOL, 0, "%s lacks nvmlInit/nvmlDeviceGetCount/nvmlDeviceGetHandleByIndex",
                           library_path);
    }
    nvmlReturn_t rc = n->init();
    if (rc == NVML_SUCCESS) rc = n->get_count(&n->count);
    if (rc != NVML_SUCCESS) {
        engine_fail(e, AIPM_ENVML, rc, "nvmlInit/nvmlDeviceGetCount: %s (NVML error %d)",
                    error_text(n, rc), rc);
        dlclose(h);
        free(n);
        return AIPM_ENVML;
    }
    if (n->count > NVML_MAX_GPUS) n->count = NVML_MAX_GPUS;
    for (unsigned int i = 0; i < n->count; i++) {
        rc = n->get_handle(i, &n->devices[i]);
        if (rc != NVML_SUCCESS) n->devices[i] = NULL;
    }
    e->nvml = n;
    return (int)n->count;
}

void nvml_close(aipm_engine *e) {
    if (!e->nvml) return;
    if (e->nvml->shutdown) e->nvml->shutdown();
    dlclose(e->nvml->handle);
    free(e->nvml);
    e->nvml = NULL;
}

const char *aipm_nvml_error_string(aipm_engine *e, int32_t code) {
    return error_text(e->nvml, code);
}

int aipm_nvml_device_name(aipm_engine *e, uint32_t gpu, char *buf, uint32_t len) {
    if (!e->nvml || gpu >= e->nvml->count || !e->nvml->devices[gpu]) return AIPM_EARG;
    if (!e->nvml->get_name) return AIPM_ESYMBOL;
    if (len == 0) return AIPM_EARG;
    nvmlReturn_t rc = e->nvml->get_name(e->nvml->devices[gpu], buf, len);
    buf[len - 1] = '\0'; /* a name that fills the buffer is cut, not left unterminated */
    return rc == NVML_SUCCESS ? AIPM_OK : engine_fail(e, AIPM_ENVML, rc, "nvmlDeviceGetName: NVML error %d", rc);
}

/* A value of a known type, as a double in *out; 0 for a type this code does not know (the
 * reading is then refused rather than taken as 0 W). */
static int sample_value(nvmlValueType_t type, nvmlValue_t v, double *out) {
    switch (type) {
    case NVML_VALUE_TYPE_DOUBLE: *out = v.dVal; return 1;
    case NVML_VALUE_TYPE_UNSIGNED_INT: *out = (double)v.uiVal; return 1;
    case NVML_VALUE_TYPE_UNSIGNED_LONG: *out = (double)v.ulVal; return 1;
    case NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: *out = (double)v.ullVal; return 1;
    case NVML_VALUE_TYPE_SIGNED_LONG_LONG: *out = (double)v.sllVal; return 1;
    case NVML_VALUE_TYPE_SIGNED_INT: *out = (double)v.siVal; return 1;
    }
    return 0;
}

/* ---- one read function per channel kind ---- */

static nvmlDevice_t device_of(aipm_engine *e, aipm_channel *c) { return e->nvml->devices[c->gpu]; }

static int nvml_result(nvmlReturn_t rc, int32_t *err) {
    if (rc == NVML_SUCCESS) return AIPM_OK;
    *err = rc;
    return AIPM_ENVML;
}

/* The driver's sample buffer: fetch only samples newer than the last one seen, map their
 * epoch-µs timestamps onto CLOCK_MONOTONIC and push each as its own record. */
static int read_power_samples(aipm_engine *e, aipm_channel *c, uint32_t id, double *value, int32_t *err) {
    struct nvml_lib *n = e->nvml;
    if (!n->get_samples) return AIPM_ESYMBOL;
    nvmlValueType_t type = NVML_VALUE_TYPE_UNSIGNED_INT;
    unsigned int count = NVML_SAMPLE_CAPACITY;
    nvmlReturn_t rc = n->get_samples(device_of(e, c), NVML_TOTAL_POWER_SAMPLES,
                                     c->nvml_last_seen_us, &type, &count, n->samples);
    if (rc == NVML_ERROR_NOT_FOUND) return 0; /* no sample newer than the last one */
    if (rc != NVML_SUCCESS) return nvml_result(rc, err);
    if (count > NVML_SAMPLE_CAPACITY) count = NVML_SAMPLE_CAPACITY; /* never past the buffer */
    int64_t offset = realtime_to_monotonic_offset_ns();
    int pushed = 0;
    for (unsigned int i = 0; i < count; i++) {
        unsigned long long ts = n->samples[i].timeStamp;
        if (ts <= c->nvml_last_seen_us) continue; /* the driver may repeat the boundary sample */
        double mw = 0.0;
        if (!sample_value(type, n->samples[i].sampleValue, &mw)) return nvml_result(NVML_ERROR_UNKNOWN, err);
        double watts = mw / 1000.0;
        engine_emit(e, id, (int64_t)ts * 1000 - offset, watts, 0);
        c->nvml_last_seen_us = ts;
        c->value = watts;
        pushed++;
    }
    return pushed;
}

static int read_power_instant(aipm_engine *e, aipm_channel *c, uint32_t id, double *value, int32_t *err) {
    if (!e->nvml->get_field_values) return AIPM_ESYMBOL;
    nvmlFieldValue_t f;
    memset(&f, 0, sizeof f);
    f.fieldId = NVML_FI_DEV_POWER_INSTANT;
    nvmlReturn_t rc = e->nvml->get_field_values(device_of(e, c), 1, &f);
    if (rc == NVML_SUCCESS) rc = f.nvmlReturn;
    double mw = 0.0;
    if (rc == NVML_SUCCESS && !sample_value(f.valueType, f.value, &mw)) rc = NVML_ERROR_UNKNOWN;
    if (rc == NVML_SUCCESS) *value = mw / 1000.0;
    return nvml_result(rc, err);
}

/* The kinds that are one NVML call on a device filling one struct or number: the function
 * (a field of nvml_lib), what it fills, and the value in the channel's unit. */
#define NVML_ONE_CALL_READER(name, fn, type, unit_value)                                        \
    static int name(aipm_engine *e, aipm_channel *c, uint32_t id, double *value, int32_t *err) { \
        if (!e->nvml->fn) return AIPM_ESYMBOL;                                                  \
        type v;                                                                                 \
        memset(&v, 0, sizeof v);                                                                \
        nvmlReturn_t rc = e->nvml->fn(device_of(e, c), &v);                                     \
        if (rc == NVML_SUCCESS) *value = (unit_value);                                          \
        return nvml_result(rc, err);                                                            \
    }
NVML_ONE_CALL_READER(read_energy, get_energy, unsigned long long, (double)v / 1000.0)      /* mJ */
NVML_ONE_CALL_READER(read_utilization, get_utilization, nvmlUtilization_t, (double)v.gpu)  /* % */
NVML_ONE_CALL_READER(read_memory_used, get_memory, nvmlMemory_t, (double)v.used)           /* bytes */
NVML_ONE_CALL_READER(read_power_average, get_power, unsigned int, (double)v / 1000.0)      /* mW */

/* The setup of the sample buffer: one trial call, without pushing anything, then start 200 ms
 * back: older samples belong to no recording, but one just before the start lets the first
 * edge be interpolated rather than extrapolated. */
static int setup_power_samples(aipm_engine *e, aipm_channel *c, int32_t *err) {
    struct nvml_lib *n = e->nvml;
    if (!n->get_samples) return AIPM_ESYMBOL;
    nvmlValueType_t type;
    unsigned int count = NVML_SAMPLE_CAPACITY;
    nvmlReturn_t rc = n->get_samples(device_of(e, c), NVML_TOTAL_POWER_SAMPLES, 0, &type, &count, n->samples);
    c->nvml_last_seen_us = (unsigned long long)(clock_ns(CLOCK_REALTIME) / 1000) - 200000ULL;
    return nvml_result(rc == NVML_ERROR_NOT_FOUND ? NVML_SUCCESS : rc, err);
}

/* Indexed by AIPM_NVML_*: the function each kind needs (named when it is missing), its setup
 * (NULL: one trial read, kept as the first value, since the energy counter costs milliseconds
 * a call) and its operations. Every kind is read on the library thread: even a cheap NVML call
 * can wait behind the driver's lock while another one (the energy counter, ~4 ms) holds it. */
static const struct {
    const char *symbol;
    int (*setup)(aipm_engine *e, aipm_channel *c, int32_t *err);
    channel_ops ops;
} nvml_kinds[] = {
    [AIPM_NVML_POWER_SAMPLES] = {"nvmlDeviceGetSamples", setup_power_samples,
                                 {.read = read_power_samples, .buffered = 1, .library = 1}},
    [AIPM_NVML_POWER_INSTANT] = {"nvmlDeviceGetFieldValues", NULL, {.read = read_power_instant, .library = 1}},
    [AIPM_NVML_ENERGY] = {"nvmlDeviceGetTotalEnergyConsumption", NULL, {.read = read_energy, .library = 1}},
    [AIPM_NVML_UTILIZATION] = {"nvmlDeviceGetUtilizationRates", NULL, {.read = read_utilization, .library = 1}},
    [AIPM_NVML_MEMORY_USED] = {"nvmlDeviceGetMemoryInfo", NULL, {.read = read_memory_used, .library = 1}},
    [AIPM_NVML_POWER_AVERAGE] = {"nvmlDeviceGetPowerUsage", NULL, {.read = read_power_average, .library = 1}},
};

int aipm_add_nvml_channel(aipm_engine *e, uint32_t gpu, int kind, int64_t period_ns) {
    struct nvml_lib *n = e->nvml;
    if (!n) return engine_fail(e, AIPM_ESTATE, 0, "NVML is not open");
    if (gpu >= n->count || !n->devices[gpu])
        return engine_fail(e, AIPM_EARG, 0, "GPU %u: no such device (NVML sees %u)", gpu, n->count);
    if (kind < 0 || kind >= (int)(sizeof nvml_kinds / sizeof nvml_kinds[0]))
        return engine_fail(e, AIPM_EARG, 0, "unknown NVML channel kind %d", kind);
    aipm_channel *c = engine_new_channel(e, &nvml_kinds[kind].ops, period_ns);
    if (!c) return AIPM_ESTATE;
    c->gpu = gpu;
    /* one trial read, so that an unsupported quantity is reported at setup */
    int32_t err = 0;
    int rc = nvml_kinds[kind].setup ? nvml_kinds[kind].setup(e, c, &err)
                                    : c->ops->read(e, c, e->n_channels, &c->value, &err);
    if (rc == AIPM_ESYMBOL)
        return engine_fail(e, rc, 0, "%s not found in the NVML library", nvml_kinds[kind].symbol);
    if (rc != AIPM_OK)
        return engine_fail(e, rc, err, "GPU %u: %s (NVML error %d)", gpu, error_text(n, err), err);
    return engine_commit_channel(e);
}

/* ---- on-demand queries ----
 * Made from the caller's thread, never by the sampler: per-process memory and utilisation,
 * and GPM samples, which a benchmark takes at each run's edges. NVML is thread-safe, and these
 * only read the engine's library handle. Their functions are looked up at each call (a few
 * hundred ns, beside calls of tens of µs or more), so that the sampler's table stays as it is. */

#define NVML_ERROR_INSUFFICIENT_SIZE 7
#define NVML_VALUE_NOT_AVAILABLE 0xFFFFFFFFFFFFFFFFULL
#define QUERY_MAX_PROCESSES 256
#define QUERY_MAX_UTIL_SAMPLES 4096

struct aipm_gpm_sample {
    nvmlGpmSample_t handle;
    uint32_t gpu;
    int taken; /* holds a sample of GPU `gpu` */
};

/* The device of a query, or an AIPM_E* code with the reason kept. */
static int query_device(aipm_engine *e, uint32_t gpu, nvmlDevice_t *out) {
    if (!e->nvml) return engine_fail(e, AIPM_ESTATE, 0, "NVML is not open");
    if (gpu >= e->nvml->count || !e->nvml->devices[gpu])
        return engine_fail(e, AIPM_EARG, 0, "GPU %u: no such device (NVML sees %u)", gpu, e->nvml->count);
    *out = e->nvml->devices[gpu];
    return AIPM_OK;
}

static void *query_fn(aipm_engine *e, const char *name) { return e && e->nvml ? dlsym(e->nvml->handle, name) : NULL; }

static int query_failed(aipm_engine *e, const char *call, uint32_t gpu, nvmlReturn_t rc) {
    return engine_fail(e, AIPM_ENVML, rc, "%s on GPU %u: %s (NVML error %d)", call, gpu, error_text(e->nvml, rc), rc);
}

int aipm_nvml_process_memory(aipm_engine *e, uint32_t gpu, aipm_process_memory *out, uint32_t max) {
    nvmlDevice_t d = NULL;
    int rc0 = query_device(e, gpu, &d);
    if (rc0 != AIPM_OK) return rc0;
    /* _v3 and _v2 differ only past the fields read here: the stride tells them apart */
    const char *call = "nvmlDeviceGetComputeRunningProcesses_v3";
    size_t stride = sizeof(nvmlProcessInfo_v3_t);
    void *fn = query_fn(e, call);
    if (!fn) {
        call = "nvmlDeviceGetComputeRunningProcesses_v2";
        stride = offsetof(nvmlProcessInfo_v3_t, usedGpuCcProtectedMemory);
        fn = query_fn(e, call);
    }
    if (!fn) return engine_fail(e, AIPM_ESYMBOL, 0, "nvmlDeviceGetComputeRunningProcesses_v3/_v2 not found");
    nvmlReturn_t (*get)(nvmlDevice_t, unsigned int *, void *) = (nvmlReturn_t(*)(nvmlDevice_t, unsigned int *, void *))fn;
    unsigned char *buf = calloc(QUERY_MAX_PROCESSES, sizeof(nvmlProcessInfo_v3_t));
    if (!buf) return AIPM_ENOMEM;
    unsigned int count = QUERY_MAX_PROCESSES;
    nvmlReturn_t rc = get(d, &count, buf);
    if (rc != NVML_SUCCESS) {
        free(buf);
        return query_failed(e, call, gpu, rc);
    }
    if (count > QUERY_MAX_PROCESSES) count = QUERY_MAX_PROCESSES; /* never past the buffer */
    if (count > max) count = max;
    for (unsigned int i = 0; i < count; i++) {
        nvmlProcessInfo_v3_t p;
        memcpy(&p, buf + i * stride, stride);
        out[i].pid = p.pid;
        out[i].used_bytes = p.usedGpuMemory == NVML_VALUE_NOT_AVAILABLE ? UINT64_MAX : p.usedGpuMemory;
    }
    free(buf);
    return (int)count;
}

int aipm_nvml_process_util(aipm_engine *e, uint32_t gpu, uint64_t since_us, aipm_process_util *out,
                           uint32_t max) {
    nvmlDevice_t d = NULL;
    int rc0 = query_device(e, gpu, &d);
    if (rc0 != AIPM_OK) return rc0;
    const char *call = "nvmlDeviceGetProcessUtilization";
    nvmlReturn_t (*get)(nvmlDevice_t, nvmlProcessUtilizationSample_t *, unsigned int *, unsigned long long);
    *(void **)&get = query_fn(e, call);
    if (!get) return engine_fail(e, AIPM_ESYMBOL, 0, "%s not found in the NVML library", call);
    nvmlProcessUtilizationSample_t *buf = calloc(QUERY_MAX_UTIL_SAMPLES, sizeof *buf);
    if (!buf) return AIPM_ENOMEM;
    unsigned int count = QUERY_MAX_UTIL_SAMPLES;
    nvmlReturn_t rc = get(d, buf, &count, since_us);
    if (rc == NVML_ERROR_NOT_FOUND) { /* no sample since since_us: no process ran a kernel */
        free(buf);
        return 0;
    }
    if (rc != NVML_SUCCESS) {
        free(buf);
        return query_failed(e, call, gpu, rc);
    }
    if (count > QUERY_MAX_UTIL_SAMPLES) count = QUERY_MAX_UTIL_SAMPLES;
    if (count > max) count = max;
    for (unsigned int i = 0; i < count; i++) {
        out[i].pid = buf[i].pid;
        out[i].t_us = buf[i].timeStamp;
        out[i].sm_pct = buf[i].smUtil;
        out[i].mem_pct = buf[i].memUtil;
    }
    free(buf);
    return (int)count;
}

int aipm_gpm_supported(aipm_engine *e, uint32_t gpu) {
    nvmlDevice_t d = NULL;
    int rc0 = query_device(e, gpu, &d);
    if (rc0 != AIPM_OK) return rc0;
    nvmlReturn_t (*query)(nvmlDevice_t, nvmlGpmSupport_t *);
    *(void **)&query = query_fn(e, "nvmlGpmQueryDeviceSupport");
    if (!query) return 0; /* a driver older than GPM */
    nvmlGpmSupport_t support = {.version = NVML_GPM_SUPPORT_VERSION};
    nvmlReturn_t rc = query(d, &support);
    if (rc != NVML_SUCCESS) return query_failed(e, "nvmlGpmQueryDeviceSupport", gpu, rc);
    return support.isSupportedDevice ? 1 : 0;
}

int aipm_gpm_sample_new(aipm_engine *e, aipm_gpm_sample **out) {
    *out = NULL;
    nvmlReturn_t (*alloc)(nvmlGpmSample_t *);
    *(void **)&alloc = query_fn(e, "nvmlGpmSampleAlloc");
    if (!alloc) return engine_fail(e, AIPM_ESYMBOL, 0, "nvmlGpmSampleAlloc not found in the NVML library");
    aipm_gpm_sample *s = calloc(1, sizeof *s);
    if (!s) return engine_fail(e, AIPM_ENOMEM, 0, "no memory for a GPM sample");
    nvmlReturn_t rc = alloc(&s->handle);
    if (rc != NVML_SUCCESS || !s->handle) {
        free(s);
        return engine_fail(e, AIPM_ENVML, rc, "nvmlGpmSampleAlloc: %s (NVML error %d)", error_text(e->nvml, rc), rc);
    }
    *out = s;
    return AIPM_OK;
}

int aipm_gpm_sample_take(aipm_engine *e, uint32_t gpu, aipm_gpm_sample *s) {
    nvmlDevice_t d = NULL;
    int rc0 = query_device(e, gpu, &d);
    if (rc0 != AIPM_OK) return rc0;
    if (!s) return engine_fail(e, AIPM_EARG, 0, "no GPM sample buffer");
    nvmlReturn_t (*take)(nvmlDevice_t, nvmlGpmSample_t);
    *(void **)&take = query_fn(e, "nvmlGpmSampleGet");
    if (!take) return engine_fail(e, AIPM_ESYMBOL, 0, "nvmlGpmSampleGet not found in the NVML library");
    s->taken = 0;
    nvmlReturn_t rc = take(d, s->handle);
    if (rc != NVML_SUCCESS) return query_failed(e, "nvmlGpmSampleGet", gpu, rc);
    s->gpu = gpu;
    s->taken = 1;
    return AIPM_OK;
}

int aipm_gpm_metrics(aipm_engine *e, const aipm_gpm_sample *first, const aipm_gpm_sample *second,
                     const uint32_t *ids, uint32_t n, double *values, int32_t *codes) {
    if (!e->nvml) return engine_fail(e, AIPM_ESTATE, 0, "NVML is not open");
    if (!first || !second || !first->taken || !second->taken)
        return engine_fail(e, AIPM_EARG, 0, "GPM metrics need two samples taken");
    if (first->gpu != second->gpu)
        return engine_fail(e, AIPM_EARG, 0, "GPM samples of GPUs %u and %u", first->gpu, second->gpu);
    if (n > AIPM_GPM_METRICS_CAPACITY)
        return engine_fail(e, AIPM_EARG, 0, "%u GPM metrics asked, at most %d a call", n, AIPM_GPM_METRICS_CAPACITY);
    nvmlReturn_t (*get)(nvmlGpmMetricsGet_t *);
    *(void **)&get = query_fn(e, "nvmlGpmMetricsGet");
    if (!get) return engine_fail(e, AIPM_ESYMBOL, 0, "nvmlGpmMetricsGet not found in the NVML library");
    nvmlGpmMetricsGet_t m;
    memset(&m, 0, sizeof m);
    m.version = NVML_GPM_METRICS_GET_VERSION;
    m.numMetrics = n;
    m.sample1 = first->handle;
    m.sample2 = second->handle;
    for (uint32_t i = 0; i < n; i++) m.metrics[i].metricId = ids[i];
    nvmlReturn_t rc = get(&m);
    if (rc != NVML_SUCCESS) return query_failed(e, "nvmlGpmMetricsGet", first->gpu, rc);
    for (uint32_t i = 0; i < n; i++) {
        codes[i] = m.metrics[i].nvmlReturn;
        values[i] = m.metrics[i].nvmlReturn == NVML_SUCCESS ? m.metrics[i].value : (double)NAN;
    }
    return (int)n;
}

void aipm_gpm_sample_free(aipm_engine *e, aipm_gpm_sample *s) {
    if (!s) return;
    nvmlReturn_t (*release)(nvmlGpmSample_t);
    *(void **)&release = query_fn(e, "nvmlGpmSampleFree");
    if (release && s->handle) release(s->handle);
    free(s);
}
