# The CUDA build, whenever nvcc is present (CUDA_HOME, default /usr/local/cuda): the kernels and the CUDA
# backend compiled for sm_80 and sm_90 with warnings as errors, the llm2vec_cuda binary (the same
# main.cpp with the CUDA backend linked in), and a per-kernel resource report from ptxas
# (build/cuda/resource_report.txt; the build fails if a hot kernel spills on sm_90). Included by the
# main Makefile. Nothing here runs a kernel: the emulated build (host/emu/emu.mk) does that.

NVCC := $(wildcard $(CUDA_HOME)/bin/nvcc)
ifneq ($(NVCC),)

CUDA_ARCHS     := -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90
NVCCFLAGS      := -std=c++17 -O3 -I. $(CUDA_ARCHS) -Werror all-warnings -Xcompiler -Wall,-Wextra,-Werror \
                  -Xptxas -v -MMD -MP
# cuda/ptx_check.cu only proves that the inline PTX of cuda/ptx.cuh assembles: built, linked into nothing.
CUDA_SRCS      := $(filter-out cuda/ptx_check.cu,$(wildcard cuda/*.cu))
PTX_CHECK_OBJ  := $(BUILD)/nvcc/cuda/ptx_check.o
CUDA_OBJS      := $(CUDA_SRCS:%.cu=$(BUILD)/nvcc/%.o)
CUDA_BIN       := $(BUILD)/llm2vec_cuda
CUDA_REPORT    := $(BUILD)/cuda/resource_report.txt
CUDA_LDLIBS    := -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcudart -lcublas

# ptxas -v writes the resource usage of every kernel to stderr: keep it beside the object.
$(BUILD)/nvcc/%.o: %.cu | $(DEPS_OK)
	@mkdir -p $(@D)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@ 2> $@.ptxas.log || { cat $@.ptxas.log; exit 1; }

$(BUILD)/nvcc/train/main.o: train/main.cpp | $(DEPS_OK)
	@mkdir -p $(@D)
	$(CXX) $(CXXFLAGS) -isystem $(CUDA_HOME)/include -DL2V_WITH_CUDA -c $< -o $@

$(CUDA_BIN): $(BUILD)/nvcc/train/main.o $(CUDA_OBJS) $(BUILD)/lib/libl2v.a
	$(CXX) $(CXXFLAGS) $^ -o $@ $(LDLIBS) $(CUDA_LDLIBS)

$(CUDA_REPORT): $(CUDA_OBJS) scripts/cuda_resource_report.sh
	@mkdir -p $(@D)
	bash scripts/cuda_resource_report.sh $@ $(CUDA_OBJS:%=%.ptxas.log)

.PHONY: cuda
cuda: $(CUDA_BIN) $(CUDA_REPORT) $(PTX_CHECK_OBJ)
all: cuda
# test/test_gpu_binary.cpp runs the binary.
test: cuda

endif
