/* nvml_types.h: the few NVML types aipm-fast uses, declared as NVML's API documents them, so
 * that neither a CUDA toolkit nor NVML's header is needed to build. The device handle type is
 * left to the includer (the sampler keeps it opaque; the test fake points it at its own GPUs).
 * Shared with tests/fakes/fake_nvml.c, so the fake and the reader cannot disagree on a layout. */
#ifndef AIPM_NVML_TYPES_H
#define AIPM_NVML_TYPES_H

typedef int nvmlReturn_t;
typedef union {
    double dVal;
    unsigned int uiVal;
    unsigned long ulVal;
    unsigned long long ullVal;
    signed long long sllVal;
    int siVal;
} nvmlValue_t;
typedef enum {
    NVML_VALUE_TYPE_DOUBLE = 0,
    NVML_VALUE_TYPE_UNSIGNED_INT = 1,
    NVML_VALUE_TYPE_UNSIGNED_LONG = 2,
    NVML_VALUE_TYPE_UNSIGNED_LONG_LONG = 3,
    NVML_VALUE_TYPE_SIGNED_LONG_LONG = 4,
    NVML_VALUE_TYPE_SIGNED_INT = 5
} nvmlValueType_t;
typedef struct {
    unsigned long long timeStamp; /* µs since the epoch */
    nvmlValue_t sampleValue;
} nvmlSample_t;
typedef struct {
    unsigned int fieldId;
    unsigned int scopeId;
    long long timestamp;
    long long latencyUsec;
    nvmlValueType_t valueType;
    nvmlReturn_t nvmlReturn;
    nvmlValue_t value;
} nvmlFieldValue_t;
typedef struct {
    unsigned int gpu;
    unsigned int memory;
} nvmlUtilization_t;
typedef struct {
    unsigned long long total;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_t;

#endif
