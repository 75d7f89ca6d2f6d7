/* cudart.c: CUDA events through the CUDA runtime this process has already loaded (torch's).
 *
 * A mark's boundary is one event record on the current stream; through this file it costs one
 * call from Python (cffi) instead of a ctypes call with its argument conversions. Nothing here
 * loads a library: the runtime must be mapped already (RTLD_NOLOAD), so that the events belong
 * to the same runtime instance as the streams they are recorded on. Events and streams are raw
 * handles (cudaEvent_t, cudaStream_t) passed as uintptr_t; every call returns the runtime's own
 * cudaError_t (0 on success). Which event is recorded when, on which stream, and when elapsed
 * times are read is decided in Python (aipm_fast/timing.py). */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

#include "aipm.h"

typedef int (*event_create_fn)(void **event);
typedef int (*event_fn)(void *event);
typedef int (*event_record_fn)(void *event, void *stream);
typedef int (*event_elapsed_fn)(float *ms, void *start, void *end);

struct aipm_cudart {
    void *handle;
    event_create_fn create;
    event_fn destroy, query, synchronize;
    event_record_fn record;
    event_elapsed_fn elapsed;
};

aipm_cudart *aipm_cudart_open(const char *library_path, char *error, size_t error_len) {
    void *h = dlopen(library_path, RTLD_NOW | RTLD_NOLOAD);
    if (!h) {
        snprintf(error, error_len, "%s is not loaded in this process (%s)", library_path, dlerror());
        return NULL;
    }
    aipm_cudart *rt = calloc(1, sizeof *rt);
    if (!rt) {
        dlclose(h);
        snprintf(error, error_len, "out of memory");
        return NULL;
    }
    rt->handle = h;
    static const char *names[] = {"cudaEventCreate",      "cudaEventDestroy",    "cudaEventQuery",
                                  "cudaEventSynchronize", "cudaEventRecord",     "cudaEventElapsedTime"};
    void *found[6];
    for (int i = 0; i < 6; i++) {
        found[i] = dlsym(h, names[i]);
        if (!found[i]) {
            snprintf(error, error_len, "%s has no %s", library_path, names[i]);
            aipm_cudart_close(rt);
            return NULL;
        }
    }
    rt->create = (event_create_fn)found[0];
    rt->destroy = (event_fn)found[1];
    rt->query = (event_fn)found[2];
    rt->synchronize = (event_fn)found[3];
    rt->record = (event_record_fn)found[4];
    rt->elapsed = (event_elapsed_fn)found[5];
    return rt;
}

void aipm_cudart_close(aipm_cudart *rt) {
    if (!rt) return;
    dlclose(rt->handle); /* only our reference: the runtime stays mapped for whoever loaded it */
    free(rt);
}

int aipm_cudart_event_create(const aipm_cudart *rt, uintptr_t *event) {
    void *e = NULL;
    int rc = rt->create(&e);
    *event = (uintptr_t)e;
    return rc;
}

int aipm_cudart_event_destroy(const aipm_cudart *rt, uintptr_t event) { return rt->destroy((void *)event); }

int aipm_cudart_event_record(const aipm_cudart *rt, uintptr_t event, uintptr_t stream) {
    return rt->record((void *)event, (void *)stream);
}

int aipm_cudart_event_query(const aipm_cudart *rt, uintptr_t event) { return rt->query((void *)event); }

int aipm_cudart_event_synchronize(const aipm_cudart *rt, uintptr_t event) {
    return rt->synchronize((void *)event);
}

int aipm_cudart_event_elapsed_ms(const aipm_cudart *rt, uintptr_t start, uintptr_t end, float *ms) {
    return rt->elapsed(ms, (void *)start, (void *)end);
}

size_t aipm_cudart_resolve(const aipm_cudart *rt, size_t n, const uintptr_t *anchors, const uintptr_t *starts,
                           const uintptr_t *ends, float *since_anchor_ms, float *duration_ms, int *error) {
    /* one call a drain instead of three a mark: the Python side then gives up the GIL once, not
     * once per call, which is what a launch-bound loop on another thread waits for */
    *error = 0;
    for (size_t i = 0; i < n; i++) {
        int rc = rt->query((void *)ends[i]);
        if (rc == 0) rc = rt->elapsed(&since_anchor_ms[i], (void *)anchors[i], (void *)starts[i]);
        /* the duration from its own two events: the anchor can be hours back, where a float of
         * ms since it has a resolution of a quarter of a millisecond */
        if (rc == 0) rc = rt->elapsed(&duration_ms[i], (void *)starts[i], (void *)ends[i]);
        if (rc != 0) {
            if (rc != 600) *error = rc; /* cudaErrorNotReady: not an error, the GPU is behind */
            return i;
        }
    }
    return n;
}
