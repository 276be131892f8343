# The CUDA build, whenever nvcc is present (CUDA_HOME, default /usr/local/cuda): the kernels and the CUDA
# backend compiled for sm_80 and sm_90 with warnings as errors (plus compute_90 PTX in the binary, which
# the driver of a newer GPU compiles at load time), the llm2vec_cuda binary (the same main.cpp with the
# CUDA backend linked in), and a per-kernel resource report from ptxas with estimated occupancy
# (build/cuda/resource_report.txt, scripts/cuda_resource_report.sh; the build fails if a hot kernel
# spills); `make bench` adds the GPU benchmarks, `make gpu-tests` the CUDA tests built for a real GPU.
# Included by the main Makefile after host/emu/emu.mk (it uses EMU_CXXFLAGS). Nothing here runs a
# kernel: the emulated build (host/emu/emu.mk) does that, scripts/gpu_check.sh on a GPU.

NVCC := $(wildcard $(CUDA_HOME)/bin/nvcc)
ifneq ($(NVCC),)

CUDA_ARCHS     := -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
                  -gencode arch=compute_90,code=compute_90
NVCCFLAGS      := -std=c++17 -O3 -I. $(CUDA_ARCHS) -Werror all-warnings -Xcompiler -Wall,-Wextra,-Werror \
                  -Xptxas -v -MMD -MP
# cuda/ptx_check.cu only proves that the inline PTX of cuda/ptx.cuh assembles: built, linked into nothing.
CUDA_SRCS      := $(filter-out cuda/ptx_check.cu,$(wildcard cuda/*.cu))
PTX_CHECK_OBJ  := $(BUILD)/nvcc/cuda/ptx_check.o
CUDA_OBJS      := $(CUDA_SRCS:%.cu=$(BUILD)/nvcc/%.o)
CUDA_BIN       := $(BUILD)/llm2vec_cuda
CUDA_REPORT    := $(BUILD)/cuda/resource_report.txt
CUDA_LDLIBS    := -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcudart -lcublas -lcublasLt -lnccl
DYNAMIC_SMEM   := $(BUILD)/cuda/dynamic_smem

# ptxas -v writes the resource usage of every kernel to stderr: keep it beside the object, and the
# compute_90 PTX (the kernels' __launch_bounds__, for the occupancy estimate) from nvcc's kept files.
$(BUILD)/nvcc/%.o: %.cu | $(DEPS_OK)
	@mkdir -p $(@D) $@.keep
	$(NVCC) $(NVCCFLAGS) -keep -keep-dir $@.keep -c $< -o $@ 2> $@.ptxas.log || { cat $@.ptxas.log; exit 1; }
	mv $@.keep/$(*F).compute_90.ptx $@.ptx && rm -rf $@.keep

# The dynamic shared memory of each kernel launch, read from the launchers' constants (g++, emulator headers).
$(DYNAMIC_SMEM): cuda/dynamic_smem.cpp | $(DEPS_OK)
	@mkdir -p $(@D)
	$(CXX) $(EMU_CXXFLAGS) $< -o $@

$(BUILD)/nvcc/train/main.o: train/main.cpp | $(DEPS_OK)
	@mkdir -p $(@D)
	$(CXX) $(CXXFLAGS) -isystem $(CUDA_HOME)/include -DL2V_WITH_CUDA -c $< -o $@

$(CUDA_BIN): $(BUILD)/nvcc/train/main.o $(CUDA_OBJS) $(BUILD)/lib/libl2v.a
	$(CXX) $(CXXFLAGS) $^ -o $@ $(LDLIBS) $(CUDA_LDLIBS)

$(CUDA_REPORT): $(CUDA_OBJS) $(DYNAMIC_SMEM) scripts/cuda_resource_report.sh
	@mkdir -p $(@D)
	$(DYNAMIC_SMEM) > $@.dynamic_smem.tsv
	bash scripts/cuda_resource_report.sh $@ $@.dynamic_smem.tsv $(CUDA_OBJS)

# GPU benchmarks (bench/*.cu, plain programs timing with CUDA events; bench/gpu_bench.h), built by
# `make bench` and `make all` beside the CPU ones: build/bench/bench_attention, build/bench/bench_gemm.
CUDA_BENCH_BINS := $(patsubst bench/%.cu,$(BUILD)/bench/%,$(wildcard bench/*.cu))

$(CUDA_BENCH_BINS): $(BUILD)/bench/%: $(BUILD)/nvcc/bench/%.o
	@mkdir -p $(@D)
	$(CXX) $(CXXFLAGS) $^ -o $@ $(CUDA_LDLIBS)

# The CUDA tests against the real CUDA runtime, for a GPU machine (scripts/gpu_check.sh; not part of
# `all`, nothing here runs them): every test/test_cuda_*.cpp compiled by nvcc as CUDA, without
# L2V_EMULATE, linked with the nvcc-built backend. Their emulator-only tests (scheduling orders, the
# ldmatrix bank-conflict counters) are compiled out; everything else runs as under the emulator.
CUDA_GPU_TESTS := $(patsubst test/%.cpp,$(BUILD)/gpu/test/%,$(wildcard test/test_cuda_*.cpp))

$(BUILD)/gpu/test/%.o: test/%.cpp | $(DEPS_OK)
	@mkdir -p $(@D)
	$(NVCC) $(NVCCFLAGS) -x cu -c $< -o $@ 2> $@.ptxas.log || { cat $@.ptxas.log; exit 1; }

$(CUDA_GPU_TESTS): $(BUILD)/gpu/test/%: $(BUILD)/gpu/test/%.o $(CUDA_OBJS) $(BUILD)/lib/libl2v.a
	$(CXX) $(CXXFLAGS) $^ -o $@ $(GTEST) $(LDLIBS) $(CUDA_LDLIBS)

# cuDNN SDPA (--attention_impl cudnn, cuda/attention_cudnn.cpp: host code, compiled by g++) where cuDNN 9
# or newer is installed with the toolkit: the cuDNN frontend's headers come from its PyPI wheel (the
# version pinned in scripts/fetch_cudnn_frontend.sh, fetched once into build/third_party), the CUDA
# objects get L2V_WITH_CUDNN, and everything linking them -lcudnn and -lnvrtc (which the frontend's
# run-time compiled engines call). Without cuDNN the backend refuses --attention_impl cudnn as not built.
CUDNN_MAJOR := $(shell sed -n 's/^\#define CUDNN_MAJOR \([0-9]*\).*/\1/p' $(CUDA_HOME)/include/cudnn_version.h 2>/dev/null)
ifeq ($(shell [ -n "$(CUDNN_MAJOR)" ] && [ "$(CUDNN_MAJOR)" -ge 9 ] && [ -e $(CUDA_HOME)/lib64/libcudnn.so ] && echo yes),yes)
CUDNN_FE_DIR := $(BUILD)/third_party/cudnn_frontend
CUDNN_OBJ    := $(BUILD)/nvcc/cuda/attention_cudnn.o
NVCCFLAGS    += -DL2V_WITH_CUDNN
CUDA_LDLIBS  += -lcudnn -lnvrtc

$(CUDNN_FE_DIR)/include/cudnn_frontend.h: scripts/fetch_cudnn_frontend.sh | $(DEPS_OK)
	bash scripts/fetch_cudnn_frontend.sh $(CUDNN_FE_DIR)

$(CUDNN_OBJ): cuda/attention_cudnn.cpp $(CUDNN_FE_DIR)/include/cudnn_frontend.h | $(DEPS_OK)
	@mkdir -p $(@D)
	$(CXX) $(CXXFLAGS) -isystem $(CUDA_HOME)/include -isystem $(CUDNN_FE_DIR)/include -c $< -o $@

$(CUDA_BIN) $(CUDA_GPU_TESTS): $(CUDNN_OBJ)
endif

.PHONY: cuda gpu-tests
cuda: $(CUDA_BIN) $(CUDA_REPORT) $(PTX_CHECK_OBJ)
gpu-tests: $(CUDA_GPU_TESTS)
bench: $(CUDA_BENCH_BINS)
all: cuda $(CUDA_BENCH_BINS)
# test/test_gpu_binary.cpp runs the binary.
test: cuda

endif
