// Work captured on a stream and launched as CUDA graphs (Backend::run_as_graph, model/backend.h). A
// capture is global-mode stream capture, so anything in the work that would wait for the device or
// allocate fails there and abandons it (the CPU emulator enforces the same rules, host/emu/graph.cpp).
// Executable graphs are kept per slot — at most kExecsPerSlot, the most recently used last — and a new
// capture updates the one with its node count in place (cudaGraphExecUpdate: new kernel arguments, grid
// sizes, copy pointers; it applies to later launches only, so a launch still running is not disturbed),
// or is instantiated when none has it or the update is refused. Works in every build of cuda/launch.h
// (nvcc, the emulator, plain g++ host code).
#pragma once

#include <exception>
#include <functional>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/launch.h"
#include "model/backend.h"

namespace l2v::cuda {

class GraphRunner {
 public:
  static constexpr size_t kExecsPerSlot = 4;

  explicit GraphRunner(cudaStream_t stream) : stream_(stream) {}
  ~GraphRunner() {
    for (auto& slot : slots_)
      for (const Exec& e : slot.second) cudaGraphExecDestroy(e.exec);
  }
  GraphRunner(const GraphRunner&) = delete;
  GraphRunner& operator=(const GraphRunner&) = delete;

  bool capturing() const { return capturing_; }
  // Inside a capture: abandon it once the work returns (for what cannot throw, e.g. a release).
  void abandon(const std::string& why) {
    if (broke_.empty()) broke_ = why;
  }
  const GraphStats& stats() const { return stats_; }

  // Backend::run_as_graph's contract.
  bool run(int slot, const std::function<void()>& work) {
    if (capturing_) throw std::logic_error("run_as_graph: a capture is already under way");
    CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeGlobal));
    capturing_ = true;
    broke_.clear();
    try {
      work();
    } catch (const std::exception& e) {
      abandon(e.what());
    }
    capturing_ = false;
    cudaGraph_t graph = nullptr;
    const cudaError_t end = cudaStreamEndCapture(stream_, &graph);
    cudaGetLastError();  // the capture's failures are not the next launch's
    if (broke_.empty() && end != cudaSuccess)
      broke_ = std::string("cudaStreamEndCapture: ") + cudaGetErrorName(end) + " (" + cudaGetErrorString(end) + ")";
    if (!broke_.empty()) {
      if (graph != nullptr) cudaGraphDestroy(graph);
      ++stats_.broken;
      stats_.last_break = broke_;
      return false;
    }
    try {
      launch(slot, graph);
    } catch (...) {
      cudaGraphDestroy(graph);
      throw;
    }
    cudaGraphDestroy(graph);
    return true;
  }

 private:
  struct Exec {
    cudaGraphExec_t exec;
    size_t nodes;
  };

  void launch(int slot, cudaGraph_t graph) {
    size_t nodes = 0;
    CUDA_CHECK(cudaGraphGetNodes(graph, nullptr, &nodes));
    std::vector<Exec>& execs = slots_[slot];
    cudaGraphExec_t exec = nullptr;
    for (size_t i = 0; i < execs.size(); ++i) {
      if (execs[i].nodes != nodes) continue;
      const Exec e = execs[i];
      execs.erase(execs.begin() + (long)i);
      cudaGraphExecUpdateResultInfo info;
      if (cudaGraphExecUpdate(e.exec, graph, &info) == cudaSuccess) {
        exec = e.exec;
        ++stats_.updates;
        execs.push_back(e);  // the most recently used last
      } else {
        cudaGetLastError();
        cudaGraphExecDestroy(e.exec);  // freed once a launch still running has finished
      }
      break;
    }
    if (exec == nullptr) {
      CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
      ++stats_.instantiations;
      if (execs.size() == kExecsPerSlot) {
        cudaGraphExecDestroy(execs.front().exec);
        execs.erase(execs.begin());
      }
      execs.push_back({exec, nodes});
    }
    CUDA_CHECK(cudaGraphLaunch(exec, stream_));
    ++stats_.launches;
  }

  cudaStream_t stream_;
  bool capturing_ = false;
  std::string broke_;
  std::map<int, std::vector<Exec>> slots_;
  GraphStats stats_;
};

}  // namespace l2v::cuda
