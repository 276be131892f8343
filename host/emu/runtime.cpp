// The CUDA runtime subset the project uses, emulated on the CPU with the real declarations of
// cuda_runtime_api.h (so call sites compile exactly as against libcudart).
//   * Device memory is host memory (256-byte aligned malloc blocks, so AddressSanitizer checks kernel
//     accesses); every cudaMemcpy kind is a memcpy.
//   * Streams execute synchronously, in call order: an "async" copy or a launch has finished when the
//     call returns, so stream and event synchronisation have nothing to wait for. Events record the host
//     clock, so cudaEventElapsedTime measures the emulated (CPU) time between two records.
//   * One device, described by cudaGetDeviceProperties as an sm_90-like GPU.
#include <omp.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <unordered_map>

#include "host/emu/cuda_emu.h"
#include "host/emu/internal.h"

struct CUstream_st {};

struct CUevent_st {
  bool recorded = false;
  bool timing = true;
  cudaStream_t captured_in = nullptr;  // last recorded into this capturing stream (then it marks a graph position)
  std::chrono::steady_clock::time_point time;
};

namespace l2v::emu {
namespace {

thread_local cudaError_t t_last_error = cudaSuccess;

// Live allocations, streams and events, to reject foreign or stale handles as the runtime does.
std::mutex g_mutex;
std::unordered_map<void*, size_t> g_allocations;
size_t g_allocated_bytes = 0;
size_t g_peak_allocated_bytes = 0;
std::set<cudaStream_t> g_streams;
std::set<cudaEvent_t> g_events;
std::map<const void*, size_t> g_dynamic_shared;  // cudaFuncAttributeMaxDynamicSharedMemorySize
std::map<const char*, size_t> g_pinned;          // cudaMallocHost: start -> bytes
std::atomic<uint64_t> g_host_waits{0};

// Whether [p, p + count) lies in one cudaMallocHost allocation.
bool is_pinned(const void* p, size_t count) {
  const char* c = static_cast<const char*>(p);
  std::lock_guard<std::mutex> lock(g_mutex);
  auto it = g_pinned.upper_bound(c);
  if (it == g_pinned.begin()) return false;
  --it;
  return c + count <= it->first + it->second;
}

cudaError_t host_wait(cudaError_t result) {
  if (result == cudaSuccess) ++g_host_waits;
  return result;
}

size_t total_memory() {
  return static_cast<size_t>(sysconf(_SC_PHYS_PAGES)) * static_cast<size_t>(sysconf(_SC_PAGESIZE));
}

bool event_is_valid(cudaEvent_t e) {
  std::lock_guard<std::mutex> lock(g_mutex);
  return g_events.count(e) != 0;
}

}  // namespace

size_t device_bytes() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return g_allocated_bytes;
}

size_t peak_device_bytes() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return g_peak_allocated_bytes;
}

void reset_peak_device_bytes() {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_peak_allocated_bytes = g_allocated_bytes;
}

uint64_t host_waits() { return g_host_waits.load(); }

cudaError_t record_error(cudaError_t err) {
  if (err != cudaSuccess) t_last_error = err;
  return err;
}

bool stream_is_valid(cudaStream_t stream) {
  if (stream == nullptr) return true;
  std::lock_guard<std::mutex> lock(g_mutex);
  return g_streams.count(stream) != 0;
}

bool dynamic_shared_attribute(const void* kernel, size_t* bytes) {
  std::lock_guard<std::mutex> lock(g_mutex);
  auto it = g_dynamic_shared.find(kernel);
  if (it == g_dynamic_shared.end()) return false;
  *bytes = it->second;
  return true;
}

}  // namespace l2v::emu

using l2v::emu::record_error;

cudaError_t cudaGetLastError() {
  const cudaError_t err = l2v::emu::t_last_error;
  l2v::emu::t_last_error = cudaSuccess;
  return err;
}

cudaError_t cudaPeekAtLastError() { return l2v::emu::t_last_error; }

const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidDeviceFunction: return "cudaErrorInvalidDeviceFunction";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorIllegalState: return "cudaErrorIllegalState";
    case cudaErrorStreamCaptureUnsupported: return "cudaErrorStreamCaptureUnsupported";
    case cudaErrorStreamCaptureInvalidated: return "cudaErrorStreamCaptureInvalidated";
    case cudaErrorStreamCaptureImplicit: return "cudaErrorStreamCaptureImplicit";
    case cudaErrorStreamCaptureWrongThread: return "cudaErrorStreamCaptureWrongThread";
    case cudaErrorGraphExecUpdateFailure: return "cudaErrorGraphExecUpdateFailure";
    default: return "cudaErrorUnknown";
  }
}

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidDeviceFunction: return "invalid device function";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorNotReady: return "device not ready";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    case cudaErrorIllegalState: return "the resource is not in a valid state for this operation";
    case cudaErrorStreamCaptureUnsupported: return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated: return "operation failed due to a previous error during capture";
    case cudaErrorStreamCaptureImplicit: return "operation would make the legacy stream depend on a capturing blocking stream";
    case cudaErrorStreamCaptureWrongThread: return "attempt to terminate a thread-local capture sequence from another thread";
    case cudaErrorGraphExecUpdateFailure: return "the graph update was not performed because it included changes which violated constraints specific to instantiated graph update";
    default: return "unrecognized error code";
  }
}

// ---- Device.
cudaError_t cudaGetDeviceCount(int* count) {
  if (count == nullptr) return record_error(cudaErrorInvalidValue);
  *count = 1;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : record_error(cudaErrorInvalidDevice); }

cudaError_t cudaGetDevice(int* device) {
  if (device == nullptr) return record_error(cudaErrorInvalidValue);
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize() {
  if (l2v::emu::unsafe_during_capture() != cudaSuccess) return cudaErrorStreamCaptureUnsupported;
  return l2v::emu::host_wait(cudaSuccess);
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (prop == nullptr) return record_error(cudaErrorInvalidValue);
  if (device != 0) return record_error(cudaErrorInvalidDevice);
  std::memset(prop, 0, sizeof(*prop));
  std::strncpy(prop->name, "llm2vec.cu emulator", sizeof(prop->name) - 1);
  prop->totalGlobalMem = l2v::emu::total_memory();
  prop->sharedMemPerBlock = l2v::emu::kSharedPerBlock;
  prop->sharedMemPerBlockOptin = l2v::emu::kSharedPerBlockOptin;
  prop->sharedMemPerMultiprocessor = 228 * 1024;
  prop->reservedSharedMemPerBlock = 1024;
  prop->regsPerBlock = 65536;
  prop->regsPerMultiprocessor = 65536;
  prop->warpSize = warpSize;
  prop->memPitch = 2147483647;
  prop->maxThreadsPerBlock = l2v::emu::kMaxThreadsPerBlock;
  for (int d = 0; d < 3; ++d) {
    prop->maxThreadsDim[d] = l2v::emu::kMaxBlockDim[d];
    prop->maxGridSize[d] = static_cast<int>(l2v::emu::kMaxGridDim[d]);
  }
  prop->totalConstMem = 64 * 1024;
  prop->major = 9;
  prop->minor = 0;
  prop->textureAlignment = 512;
  prop->texturePitchAlignment = 32;
  // The OS threads that run blocks play the role of multiprocessors.
  prop->multiProcessorCount = omp_get_max_threads();
  prop->maxThreadsPerMultiProcessor = 2048;
  prop->maxBlocksPerMultiProcessor = 32;
  prop->l2CacheSize = 50 * 1024 * 1024;
  prop->memoryBusWidth = 5120;
  prop->concurrentKernels = 1;
  prop->unifiedAddressing = 1;
  prop->canMapHostMemory = 1;
  prop->globalL1CacheSupported = 1;
  prop->localL1CacheSupported = 1;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (value == nullptr) return record_error(cudaErrorInvalidValue);
  if (device != 0) return record_error(cudaErrorInvalidDevice);
  cudaDeviceProp p;
  cudaGetDeviceProperties(&p, 0);
  switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: *value = p.maxThreadsPerBlock; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = static_cast<int>(p.sharedMemPerBlock); break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = static_cast<int>(p.sharedMemPerBlockOptin); break;
    case cudaDevAttrWarpSize: *value = p.warpSize; break;
    case cudaDevAttrMultiProcessorCount: *value = p.multiProcessorCount; break;
    case cudaDevAttrComputeCapabilityMajor: *value = p.major; break;
    case cudaDevAttrComputeCapabilityMinor: *value = p.minor; break;
    default: return record_error(cudaErrorInvalidValue);
  }
  return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  if (func == nullptr) return record_error(cudaErrorInvalidDeviceFunction);
  switch (attr) {
    case cudaFuncAttributeMaxDynamicSharedMemorySize: {
      if (value < 0 || static_cast<size_t>(value) > l2v::emu::kSharedPerBlockOptin) {
        return record_error(cudaErrorInvalidValue);
      }
      std::lock_guard<std::mutex> lock(l2v::emu::g_mutex);
      l2v::emu::g_dynamic_shared[func] = static_cast<size_t>(value);
      return cudaSuccess;
    }
    case cudaFuncAttributePreferredSharedMemoryCarveout:  // a performance hint: nothing to emulate
      return value >= -1 && value <= 100 ? cudaSuccess : record_error(cudaErrorInvalidValue);
    default: return record_error(cudaErrorInvalidValue);
  }
}

// ---- Memory.
cudaError_t cudaMalloc(void** ptr, size_t size) {
  if (ptr == nullptr) return record_error(cudaErrorInvalidValue);
  *ptr = nullptr;
  if (l2v::emu::unsafe_during_capture() != cudaSuccess) return cudaErrorStreamCaptureUnsupported;
  if (size == 0) return cudaSuccess;
  void* p = nullptr;
  if (posix_memalign(&p, 256, size) != 0) return record_error(cudaErrorMemoryAllocation);
  std::lock_guard<std::mutex> lock(l2v::emu::g_mutex);
  l2v::emu::g_allocations[p] = size;
  l2v::emu::g_allocated_bytes += size;
  l2v::emu::g_peak_allocated_bytes = std::max(l2v::emu::g_peak_allocated_bytes, l2v::emu::g_allocated_bytes);
  *ptr = p;
  return cudaSuccess;
}

cudaError_t cudaFree(void* ptr) {
  if (ptr == nullptr) return cudaSuccess;
  if (l2v::emu::unsafe_during_capture() != cudaSuccess) return cudaErrorStreamCaptureUnsupported;
  std::lock_guard<std::mutex> lock(l2v::emu::g_mutex);
  auto it = l2v::emu::g_allocations.find(ptr);
  if (it == l2v::emu::g_allocations.end()) return record_error(cudaErrorInvalidValue);
  l2v::emu::g_allocated_bytes -= it->second;
  l2v::emu::g_allocations.erase(it);
  std::free(ptr);
  ++l2v::emu::g_host_waits;  // cudaFree waits for the device
  return cudaSuccess;
}

cudaError_t cudaMallocHost(void** ptr, size_t size) {
  if (ptr == nullptr) return record_error(cudaErrorInvalidValue);
  if (l2v::emu::unsafe_during_capture() != cudaSuccess) return cudaErrorStreamCaptureUnsupported;
  *ptr = size == 0 ? nullptr : std::malloc(size);
  if (size != 0 && *ptr == nullptr) return record_error(cudaErrorMemoryAllocation);
  if (*ptr != nullptr) {
    std::lock_guard<std::mutex> lock(l2v::emu::g_mutex);
    l2v::emu::g_pinned[static_cast<const char*>(*ptr)] = size;
  }
  return cudaSuccess;
}

cudaError_t cudaFreeHost(void* ptr) {
  if (l2v::emu::unsafe_during_capture() != cudaSuccess) return cudaErrorStreamCaptureUnsupported;
  {
    std::lock_guard<std::mutex> lock(l2v::emu::g_mutex);
    l2v::emu::g_pinned.erase(static_cast<const char*>(ptr));
  }
  std::free(ptr);
  return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t* free, size_t* total) {
  if (free == nullptr || total == nullptr) return record_error(cudaErrorInvalidValue);
  std::lock_guard<std::mutex> lock(l2v::emu::g_mutex);
  *total = l2v::emu::total_memory();
  *free = *total > l2v::emu::g_allocated_bytes ? *total - l2v::emu::g_allocated_bytes : 0;
  return cudaSuccess;
}

namespace {

cudaError_t copy_now(void* dst, const void* src, size_t count, cudaMemcpyKind kind) {
  if (kind < cudaMemcpyHostToHost || kind > cudaMemcpyDefault) return record_error(cudaErrorInvalidValue);
  if (count == 0) return cudaSuccess;
  if (dst == nullptr || src == nullptr) return record_error(cudaErrorInvalidValue);
  std::memmove(dst, src, count);
  return cudaSuccess;
}

}  // namespace

cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, cudaMemcpyKind kind) {
  if (l2v::emu::unsafe_during_capture() != cudaSuccess) return cudaErrorStreamCaptureUnsupported;
  return l2v::emu::host_wait(copy_now(dst, src, count, kind));
}

// Waits when the copy goes to or comes from host memory that is not pinned. (The emulator cannot tell
// host from device pointers under cudaMemcpyDefault; it counts those as waits too.)
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, cudaMemcpyKind kind, cudaStream_t stream) {
  if (!l2v::emu::stream_is_valid(stream)) return record_error(cudaErrorInvalidResourceHandle);
  const bool waits = (kind == cudaMemcpyDeviceToHost && !l2v::emu::is_pinned(dst, count)) ||
                     kind == cudaMemcpyHostToHost || kind == cudaMemcpyDefault ||
                     (kind == cudaMemcpyHostToDevice && !l2v::emu::is_pinned(src, count));
  cudaError_t err = cudaSuccess;
  switch (l2v::emu::stream_mode(stream, &err)) {
    case l2v::emu::StreamMode::kError: return record_error(err);
    case l2v::emu::StreamMode::kRun: break;
    case l2v::emu::StreamMode::kCapture: {
      // A memcpy node reads its source when the graph runs: pageable memory (which the driver stages
      // after waiting) and the copies the emulator cannot classify are refused.
      if (waits) {
        l2v::emu::unsafe_during_capture();
        return record_error(cudaErrorStreamCaptureUnsupported);
      }
      if (kind < cudaMemcpyHostToHost || kind > cudaMemcpyDefault || (count != 0 && (dst == nullptr || src == nullptr)))
        return record_error(cudaErrorInvalidValue);
      l2v::emu::capture_node(stream, {l2v::emu::GraphNode::Kind::kMemcpy, nullptr,
                                      [dst, src, count] { std::memmove(dst, src, count); }});
      return cudaSuccess;
    }
  }
  // A copy to pinned memory still completes before the call returns (streams are synchronous), but the
  // runtime does not make the host wait for it: the caller must synchronise before reading.
  const cudaError_t result = copy_now(dst, src, count, kind);
  return waits ? l2v::emu::host_wait(result) : result;
}

cudaError_t cudaMemset(void* ptr, int value, size_t count) {
  if (l2v::emu::unsafe_during_capture() != cudaSuccess) return cudaErrorStreamCaptureUnsupported;
  if (count == 0) return cudaSuccess;
  if (ptr == nullptr) return record_error(cudaErrorInvalidValue);
  std::memset(ptr, value, count);
  return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* ptr, int value, size_t count, cudaStream_t stream) {
  if (!l2v::emu::stream_is_valid(stream)) return record_error(cudaErrorInvalidResourceHandle);
  if (count == 0) return cudaSuccess;
  if (ptr == nullptr) return record_error(cudaErrorInvalidValue);
  cudaError_t err = cudaSuccess;
  switch (l2v::emu::stream_mode(stream, &err)) {
    case l2v::emu::StreamMode::kError: return record_error(err);
    case l2v::emu::StreamMode::kCapture:
      l2v::emu::capture_node(stream, {l2v::emu::GraphNode::Kind::kMemset, nullptr,
                                      [ptr, value, count] { std::memset(ptr, value, count); }});
      return cudaSuccess;
    case l2v::emu::StreamMode::kRun: break;
  }
  std::memset(ptr, value, count);
  return cudaSuccess;
}

// ---- Streams (synchronous: everything issued to one has finished when the call returns).
cudaError_t cudaStreamCreate(cudaStream_t* stream) {
  if (stream == nullptr) return record_error(cudaErrorInvalidValue);
  *stream = new CUstream_st;
  std::lock_guard<std::mutex> lock(l2v::emu::g_mutex);
  l2v::emu::g_streams.insert(*stream);
  return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int) { return cudaStreamCreate(stream); }

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  l2v::emu::drop_capture(stream);
  std::lock_guard<std::mutex> lock(l2v::emu::g_mutex);
  if (stream == nullptr || l2v::emu::g_streams.erase(stream) == 0) {
    return record_error(cudaErrorInvalidResourceHandle);
  }
  delete stream;
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  if (l2v::emu::unsafe_during_capture() != cudaSuccess) return cudaErrorStreamCaptureUnsupported;
  return l2v::emu::stream_is_valid(stream) ? l2v::emu::host_wait(cudaSuccess)
                                           : record_error(cudaErrorInvalidResourceHandle);
}

cudaError_t cudaStreamQuery(cudaStream_t stream) {
  if (l2v::emu::unsafe_during_capture() != cudaSuccess) return cudaErrorStreamCaptureUnsupported;
  return l2v::emu::stream_is_valid(stream) ? cudaSuccess : record_error(cudaErrorInvalidResourceHandle);
}

// ---- Events.
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int flags) {
  if (event == nullptr) return record_error(cudaErrorInvalidValue);
  *event = new CUevent_st;
  (*event)->timing = (flags & cudaEventDisableTiming) == 0;
  std::lock_guard<std::mutex> lock(l2v::emu::g_mutex);
  l2v::emu::g_events.insert(*event);
  return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t* event) { return cudaEventCreateWithFlags(event, cudaEventDefault); }

cudaError_t cudaEventDestroy(cudaEvent_t event) {
  std::lock_guard<std::mutex> lock(l2v::emu::g_mutex);
  if (event == nullptr || l2v::emu::g_events.erase(event) == 0) return record_error(cudaErrorInvalidResourceHandle);
  delete event;
  return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  if (!l2v::emu::event_is_valid(event) || !l2v::emu::stream_is_valid(stream)) {
    return record_error(cudaErrorInvalidResourceHandle);
  }
  cudaError_t err = cudaSuccess;
  switch (l2v::emu::stream_mode(stream, &err)) {
    case l2v::emu::StreamMode::kError: return record_error(err);
    case l2v::emu::StreamMode::kCapture: event->captured_in = stream; return cudaSuccess;  // a position, no node
    case l2v::emu::StreamMode::kRun: break;
  }
  event->captured_in = nullptr;
  event->recorded = true;
  event->time = std::chrono::steady_clock::now();
  return cudaSuccess;
}

// Streams are synchronous here: the event's work is done when it is recorded, so there is nothing to wait for.
// An event recorded inside a capture may only be waited for by the capturing stream itself (another
// stream would join the capture: not emulated).
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int) {
  if (!l2v::emu::event_is_valid(event) || !l2v::emu::stream_is_valid(stream)) {
    return record_error(cudaErrorInvalidResourceHandle);
  }
  if (event->captured_in != nullptr && event->captured_in != stream) {
    l2v::emu::unsafe_during_capture();
    return record_error(cudaErrorStreamCaptureUnsupported);
  }
  cudaError_t err = cudaSuccess;
  if (l2v::emu::stream_mode(stream, &err) == l2v::emu::StreamMode::kError) return record_error(err);
  return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  if (l2v::emu::unsafe_during_capture() != cudaSuccess) return cudaErrorStreamCaptureUnsupported;
  if (l2v::emu::event_is_valid(event) && event->captured_in != nullptr) return record_error(cudaErrorStreamCaptureUnsupported);
  return l2v::emu::event_is_valid(event) ? l2v::emu::host_wait(cudaSuccess)
                                         : record_error(cudaErrorInvalidResourceHandle);
}

cudaError_t cudaEventQuery(cudaEvent_t event) {
  if (l2v::emu::unsafe_during_capture() != cudaSuccess) return cudaErrorStreamCaptureUnsupported;
  if (l2v::emu::event_is_valid(event) && event->captured_in != nullptr) return record_error(cudaErrorStreamCaptureUnsupported);
  return l2v::emu::event_is_valid(event) ? cudaSuccess : record_error(cudaErrorInvalidResourceHandle);
}

cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  if (ms == nullptr) return record_error(cudaErrorInvalidValue);
  if (!l2v::emu::event_is_valid(start) || !l2v::emu::event_is_valid(end) || !start->recorded || !end->recorded ||
      !start->timing || !end->timing) {
    return record_error(cudaErrorInvalidResourceHandle);
  }
  *ms = std::chrono::duration<float, std::milli>(end->time - start->time).count();
  return cudaSuccess;
}
