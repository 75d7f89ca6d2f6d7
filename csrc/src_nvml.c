/* src_nvml.c: NVIDIA GPUs through NVML, loaded at run time.
 *
 * No CUDA toolkit or NVML header is needed to build: the few types and functions used are
 * declared here as the NVML API documents them. Every function is looked up with dlsym, and
 * one that is missing disables only the channels that need it. */
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#include "nvml_types.h"

typedef void *nvmlDevice_t;

#define NVML_SUCCESS 0
#define NVML_ERROR_NOT_FOUND 6
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

static void *sym(void *h, const char *a, const char *b) {
    void *p = dlsym(h, a);
    if (!p && b) p = dlsym(h, b);
    return p;
}

int aipm_nvml_open(aipm_engine *e, const char *library_path) {
    if (e->nvml) return (int)e->nvml->count;
    void *h = dlopen(library_path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        engine_set_error(e, "dlopen(%s): %s", library_path, dlerror());
        return AIPM_EOPEN;
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
        engine_set_error(e, "%s lacks nvmlInit/nvmlDeviceGetCount/nvmlDeviceGetHandleByIndex",
                         library_path);
        dlclose(h);
        free(n);
        return AIPM_ESYMBOL;
    }
    nvmlReturn_t rc = n->init();
    if (rc == NVML_SUCCESS) rc = n->get_count(&n->count);
    if (rc != NVML_SUCCESS) {
        engine_set_error(e, "nvmlInit/nvmlDeviceGetCount: %s (NVML error %d)",
                         n->error_string ? n->error_string(rc) : "unknown", rc);
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
    if (!e->nvml || !e->nvml->error_string) return "unknown NVML error";
    return e->nvml->error_string(code);
}

int aipm_nvml_device_name(aipm_engine *e, uint32_t gpu, char *buf, uint32_t len) {
    if (!e->nvml || gpu >= e->nvml->count || !e->nvml->devices[gpu]) return AIPM_EARG;
    if (!e->nvml->get_name) return AIPM_ESYMBOL;
    return e->nvml->get_name(e->nvml->devices[gpu], buf, len) == NVML_SUCCESS ? AIPM_OK : AIPM_ENVML;
}

static double sample_value(nvmlValueType_t type, nvmlValue_t v) {
    switch (type) {
    case NVML_VALUE_TYPE_DOUBLE: return v.dVal;
    case NVML_VALUE_TYPE_UNSIGNED_INT: return (double)v.uiVal;
    case NVML_VALUE_TYPE_UNSIGNED_LONG: return (double)v.ulVal;
    case NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: return (double)v.ullVal;
    case NVML_VALUE_TYPE_SIGNED_LONG_LONG: return (double)v.sllVal;
    case NVML_VALUE_TYPE_SIGNED_INT: return (double)v.siVal;
    }
    return 0.0;
}

/* The driver's sample buffer: fetch only samples newer than the last one seen, map their
 * epoch-µs timestamps onto CLOCK_MONOTONIC and push each as its own record. */
static int read_power_samples(aipm_engine *e, aipm_channel *c, uint32_t id, int32_t *err) {
    struct nvml_lib *n = e->nvml;
    nvmlValueType_t type = NVML_VALUE_TYPE_UNSIGNED_INT;
    unsigned int count = NVML_SAMPLE_CAPACITY;
    nvmlReturn_t rc = n->get_samples(n->devices[c->gpu], NVML_TOTAL_POWER_SAMPLES,
                                     c->nvml_last_seen_us, &type, &count, n->samples);
    if (rc == NVML_ERROR_NOT_FOUND) return 0; /* no sample newer than the last one */
    if (rc != NVML_SUCCESS) {
        *err = rc;
        return AIPM_ENVML;
    }
    int64_t offset = realtime_to_monotonic_offset_ns();
    int pushed = 0;
    for (unsigned int i = 0; i < count; i++) {
        unsigned long long ts = n->samples[i].timeStamp;
        if (ts <= c->nvml_last_seen_us) continue; /* the driver may repeat the boundary sample */
        double watts = sample_value(type, n->samples[i].sampleValue) / 1000.0; /* mW */
        engine_emit(e, id, (int64_t)ts * 1000 - offset, watts, 0);
        c->nvml_last_seen_us = ts;
        c->value = watts;
        pushed++;
    }
    return pushed;
}

int nvml_read(aipm_engine *e, aipm_channel *c, double *value, int32_t *err) {
    struct nvml_lib *n = e->nvml;
    nvmlDevice_t dev = n->devices[c->gpu];
    nvmlReturn_t rc;
    switch (c->nvml_kind) {
    case AIPM_NVML_POWER_INSTANT: {
        nvmlFieldValue_t f;
        memset(&f, 0, sizeof f);
        f.fieldId = NVML_FI_DEV_POWER_INSTANT;
        rc = n->get_field_values(dev, 1, &f);
        if (rc == NVML_SUCCESS) rc = f.nvmlReturn;
        if (rc == NVML_SUCCESS) *value = sample_value(f.valueType, f.value) / 1000.0;
        break;
    }
    case AIPM_NVML_ENERGY: {
        unsigned long long mj = 0;
        rc = n->get_energy(dev, &mj);
        if (rc == NVML_SUCCESS) *value = (double)mj / 1000.0;
        break;
    }
    case AIPM_NVML_UTILIZATION: {
        nvmlUtilization_t u;
        rc = n->get_utilization(dev, &u);
        if (rc == NVML_SUCCESS) *value = (double)u.gpu;
        break;
    }
    case AIPM_NVML_MEMORY_USED: {
        nvmlMemory_t m;
        rc = n->get_memory(dev, &m);
        if (rc == NVML_SUCCESS) *value = (double)m.used;
        break;
    }
    case AIPM_NVML_POWER_AVERAGE: {
        unsigned int mw = 0;
        rc = n->get_power(dev, &mw);
        if (rc == NVML_SUCCESS) *value = (double)mw / 1000.0;
        break;
    }
    default:
        return AIPM_EARG;
    }
    if (rc != NVML_SUCCESS) {
        *err = rc;
        return AIPM_ENVML;
    }
    return AIPM_OK;
}

int nvml_read_buffered(aipm_engine *e, aipm_channel *c, uint32_t id, int32_t *err) {
    return read_power_samples(e, c, id, err);
}

/* Which function each kind needs, so that a missing one is named. */
static int nvml_has(struct nvml_lib *n, int kind, const char **missing) {
    switch (kind) {
    case AIPM_NVML_POWER_SAMPLES: *missing = "nvmlDeviceGetSamples"; return n->get_samples != NULL;
    case AIPM_NVML_POWER_INSTANT: *missing = "nvmlDeviceGetFieldValues"; return n->get_field_values != NULL;
    case AIPM_NVML_ENERGY: *missing = "nvmlDeviceGetTotalEnergyConsumption"; return n->get_energy != NULL;
    case AIPM_NVML_UTILIZATION: *missing = "nvmlDeviceGetUtilizationRates"; return n->get_utilization != NULL;
    case AIPM_NVML_MEMORY_USED: *missing = "nvmlDeviceGetMemoryInfo"; return n->get_memory != NULL;
    case AIPM_NVML_POWER_AVERAGE: *missing = "nvmlDeviceGetPowerUsage"; return n->get_power != NULL;
    }
    *missing = "an unknown channel kind";
    return 0;
}

int nvml_check_channel(aipm_engine *e, aipm_channel *c) {
    struct nvml_lib *n = e->nvml;
    if (!n) {
        engine_set_error(e, "NVML is not open");
        return AIPM_ESTATE;
    }
    if (c->gpu >= n->count || !n->devices[c->gpu]) {
        engine_set_error(e, "GPU %u: no such device (NVML sees %u)", c->gpu, n->count);
        return AIPM_EARG;
    }
    const char *missing = NULL;
    if (!nvml_has(n, c->nvml_kind, &missing)) {
        engine_set_error(e, "%s not found in the NVML library", missing);
        return AIPM_ESYMBOL;
    }
    /* One trial read, so that an unsupported quantity is reported at setup. */
    int32_t err = 0;
    int rc;
    if (c->nvml_kind == AIPM_NVML_POWER_SAMPLES) {
        nvmlValueType_t type;
        unsigned int count = NVML_SAMPLE_CAPACITY;
        err = n->get_samples(n->devices[c->gpu], NVML_TOTAL_POWER_SAMPLES, 0, &type, &count,
                             n->samples);
        rc = (err == NVML_SUCCESS || err == NVML_ERROR_NOT_FOUND) ? AIPM_OK : AIPM_ENVML;
        /* start 200 ms back: older samples belong to no recording, but one just before the
         * start lets the first edge be interpolated rather than extrapolated */
        c->nvml_last_seen_us = (unsigned long long)(clock_ns(CLOCK_REALTIME) / 1000) - 200000ULL;
    } else {
        double v;
        rc = nvml_read(e, c, &v, &err);
    }
    if (rc != AIPM_OK) {
        engine_set_error(e, "GPU %u: %s (NVML error %d)", c->gpu, aipm_nvml_error_string(e, err), err);
        return rc;
    }
    return AIPM_OK;
}
