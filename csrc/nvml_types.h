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

/* On-demand queries (not sampler channels): per-process memory and utilisation, and GPM. */
typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory; /* bytes; NVML_VALUE_NOT_AVAILABLE where unknown */
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
    unsigned long long usedGpuCcProtectedMemory;
} nvmlProcessInfo_v3_t; /* nvmlDeviceGetComputeRunningProcesses_v3; _v2's is its first 24 bytes */
typedef struct {
    unsigned int pid;
    unsigned long long timeStamp; /* µs since the epoch */
    unsigned int smUtil;          /* % of the sample period a kernel of this process ran */
    unsigned int memUtil;
    unsigned int encUtil;
    unsigned int decUtil;
} nvmlProcessUtilizationSample_t;
typedef struct nvmlGpmSample_st *nvmlGpmSample_t;
typedef struct {
    unsigned int metricId;
    nvmlReturn_t nvmlReturn;
    double value;
    struct {
        char *shortName;
        char *longName;
        char *unit;
    } metricInfo;
} nvmlGpmMetric_t;
#define NVML_GPM_METRICS_GET_VERSION 1
#define NVML_GPM_SUPPORT_VERSION 1
#define AIPM_GPM_METRICS_CAPACITY 16 /* metrics asked in one call; NVML reads numMetrics of them */
typedef struct {
    unsigned int version;
    unsigned int numMetrics;
    nvmlGpmSample_t sample1;
    nvmlGpmSample_t sample2;
    nvmlGpmMetric_t metrics[AIPM_GPM_METRICS_CAPACITY];
} nvmlGpmMetricsGet_t;
typedef struct {
    unsigned int version;
    unsigned int isSupportedDevice;
} nvmlGpmSupport_t;

#endif
