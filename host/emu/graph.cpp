// Stream capture and graphs for the CPU emulator (see host/emu/cuda_emu.h): what is queued on a capturing
// stream is recorded as a chain of nodes (streams are serial here, so one capture is one chain) and
// replayed, in capture order, by cudaGraphLaunch. Captures follow cudaStreamCaptureModeGlobal (the
// strictest mode, whatever mode is asked for): a potentially unsafe call invalidates every active capture
// (unsafe_during_capture), and operations on an invalidated capturing stream fail until it ends.
#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "host/emu/cuda_emu.h"
#include "host/emu/internal.h"

struct CUgraph_st {
  std::vector<l2v::emu::GraphNode> nodes;
};

struct CUgraphExec_st {
  std::vector<l2v::emu::GraphNode> nodes;
};

namespace l2v::emu {
namespace {

struct Capture {
  cudaGraph_t graph = nullptr;
  bool invalidated = false;
  std::thread::id thread;
};

std::mutex g_mutex;
std::map<cudaStream_t, Capture> g_captures;  // the streams capturing now
std::atomic<uint64_t> g_graph_launches{0}, g_graph_nodes_run{0};

bool any_active_capture() {  // g_mutex held
  return std::any_of(g_captures.begin(), g_captures.end(), [](const auto& c) { return !c.second.invalidated; });
}

}  // namespace

uint64_t graph_launches() { return g_graph_launches.load(); }
uint64_t graph_nodes_run() { return g_graph_nodes_run.load(); }

StreamMode stream_mode(cudaStream_t stream, cudaError_t* err) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (stream == nullptr) {
    if (!any_active_capture()) return StreamMode::kRun;
    for (auto& c : g_captures) c.second.invalidated = true;
    *err = cudaErrorStreamCaptureImplicit;
    return StreamMode::kError;
  }
  auto it = g_captures.find(stream);
  if (it == g_captures.end()) return StreamMode::kRun;
  if (it->second.invalidated) {
    *err = cudaErrorStreamCaptureInvalidated;
    return StreamMode::kError;
  }
  return StreamMode::kCapture;
}

void capture_node(cudaStream_t stream, GraphNode node) {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_captures.at(stream).graph->nodes.push_back(std::move(node));
}

cudaError_t unsafe_during_capture() {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (!any_active_capture()) return cudaSuccess;
  for (auto& c : g_captures) c.second.invalidated = true;
  return record_error(cudaErrorStreamCaptureUnsupported);
}

void drop_capture(cudaStream_t stream) {
  std::lock_guard<std::mutex> lock(g_mutex);
  auto it = g_captures.find(stream);
  if (it == g_captures.end()) return;
  delete it->second.graph;
  g_captures.erase(it);
}

}  // namespace l2v::emu

using l2v::emu::record_error;

cudaError_t cudaStreamBeginCapture(cudaStream_t stream, cudaStreamCaptureMode mode) {
  if (stream == nullptr) return record_error(cudaErrorStreamCaptureUnsupported);  // the legacy stream
  if (!l2v::emu::stream_is_valid(stream)) return record_error(cudaErrorInvalidResourceHandle);
  if (mode != cudaStreamCaptureModeGlobal && mode != cudaStreamCaptureModeThreadLocal &&
      mode != cudaStreamCaptureModeRelaxed)
    return record_error(cudaErrorInvalidValue);
  std::lock_guard<std::mutex> lock(l2v::emu::g_mutex);
  if (l2v::emu::g_captures.count(stream)) return record_error(cudaErrorIllegalState);
  l2v::emu::g_captures[stream] = {new CUgraph_st, false, std::this_thread::get_id()};
  return cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t* graph) {
  if (graph == nullptr) return record_error(cudaErrorInvalidValue);
  *graph = nullptr;
  std::lock_guard<std::mutex> lock(l2v::emu::g_mutex);
  auto it = l2v::emu::g_captures.find(stream);
  if (it == l2v::emu::g_captures.end()) return record_error(cudaErrorIllegalState);
  if (it->second.thread != std::this_thread::get_id()) return record_error(cudaErrorStreamCaptureWrongThread);
  const l2v::emu::Capture c = it->second;
  l2v::emu::g_captures.erase(it);
  if (c.invalidated) {
    delete c.graph;
    return record_error(cudaErrorStreamCaptureInvalidated);
  }
  *graph = c.graph;
  return cudaSuccess;
}

cudaError_t cudaStreamIsCapturing(cudaStream_t stream, cudaStreamCaptureStatus* status) {
  if (status == nullptr) return record_error(cudaErrorInvalidValue);
  if (!l2v::emu::stream_is_valid(stream)) return record_error(cudaErrorInvalidResourceHandle);
  std::lock_guard<std::mutex> lock(l2v::emu::g_mutex);
  auto it = l2v::emu::g_captures.find(stream);
  *status = it == l2v::emu::g_captures.end() ? cudaStreamCaptureStatusNone
            : it->second.invalidated         ? cudaStreamCaptureStatusInvalidated
                                             : cudaStreamCaptureStatusActive;
  return cudaSuccess;
}

// Only the count (nodes == nullptr): the emulator hands out no node handles.
cudaError_t cudaGraphGetNodes(cudaGraph_t graph, cudaGraphNode_t* nodes, size_t* count) {
  if (graph == nullptr || count == nullptr || nodes != nullptr) return record_error(cudaErrorInvalidValue);
  *count = graph->nodes.size();
  return cudaSuccess;
}

cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
  if (graph == nullptr) return record_error(cudaErrorInvalidValue);
  delete graph;
  return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long flags) {
  if (exec == nullptr || graph == nullptr || flags != 0) return record_error(cudaErrorInvalidValue);
  *exec = new CUgraphExec_st{graph->nodes};
  return cudaSuccess;
}

// The topology must be the one the executable graph was made from: as many nodes, each of the same kind
// and (kernels, library calls) the same function; then every node takes the new graph's parameters.
// (A GPU also accepts some function changes; the emulator is stricter.)
cudaError_t cudaGraphExecUpdate(cudaGraphExec_t exec, cudaGraph_t graph, cudaGraphExecUpdateResultInfo* info) {
  if (exec == nullptr || graph == nullptr || info == nullptr) return record_error(cudaErrorInvalidValue);
  info->errorNode = nullptr;
  info->errorFromNode = nullptr;
  info->result = cudaGraphExecUpdateSuccess;
  if (exec->nodes.size() != graph->nodes.size()) {
    info->result = cudaGraphExecUpdateErrorTopologyChanged;
  } else {
    for (size_t i = 0; i < exec->nodes.size() && info->result == cudaGraphExecUpdateSuccess; ++i) {
      if (exec->nodes[i].kind != graph->nodes[i].kind)
        info->result = cudaGraphExecUpdateErrorNodeTypeChanged;
      else if (exec->nodes[i].function != graph->nodes[i].function)
        info->result = cudaGraphExecUpdateErrorFunctionChanged;
    }
  }
  if (info->result != cudaGraphExecUpdateSuccess) return record_error(cudaErrorGraphExecUpdateFailure);
  exec->nodes = graph->nodes;
  return cudaSuccess;
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
  if (exec == nullptr) return record_error(cudaErrorInvalidValue);
  delete exec;
  return cudaSuccess;
}

// Streams are synchronous here: the graph has run when the call returns. Kernel bugs found while it runs
// throw KernelError, as a direct launch does.
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream) {
  if (exec == nullptr) return record_error(cudaErrorInvalidValue);
  if (!l2v::emu::stream_is_valid(stream)) return record_error(cudaErrorInvalidResourceHandle);
  cudaError_t err = cudaSuccess;
  switch (l2v::emu::stream_mode(stream, &err)) {
    case l2v::emu::StreamMode::kError: return record_error(err);
    case l2v::emu::StreamMode::kCapture:  // a child-graph node: not emulated
      l2v::emu::unsafe_during_capture();
      return record_error(cudaErrorStreamCaptureUnsupported);
    case l2v::emu::StreamMode::kRun: break;
  }
  ++l2v::emu::g_graph_launches;
  for (const l2v::emu::GraphNode& node : exec->nodes) {
    node.run();
    ++l2v::emu::g_graph_nodes_run;
  }
  return cudaSuccess;
}
