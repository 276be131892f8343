# The CUDA-on-CPU emulator (host/emu/) and the test binaries that run kernels on it. Included by the
# main Makefile after its own variables and rules (it uses CXX, CXXFLAGS, BUILD, GTEST, LDLIBS, DEPS_OK).
#
#   build/emu/libl2v_emu.a     the emulator (CUDA runtime + cuBLAS subset, scheduler, fibers) and the
#                              CUDA backend (cuda/*.cu) compiled for it
#   build/test/<t>             a test of EMU_TESTS, compiled with EMU_CXXFLAGS and linked with the emulator
#   build/asan/<t>             the same under AddressSanitizer (its own objects under build/asan/)
#
# Kernel tests are the files test/test_cuda_*.cpp: each is built for the emulator and as an ASan twin. Objects of emulated builds live under build/emu/ and build/asan/ (never mixed with the
# normal library's), since the same source means different things with and without L2V_EMULATE.

CUDA_HOME      ?= /usr/local/cuda
EMU_SRCS       := $(wildcard host/emu/*.cpp)
# -isystem: the CUDA headers are not ours to keep -Werror clean.
EMU_CXXFLAGS   := $(CXXFLAGS) -isystem $(CUDA_HOME)/include -DL2V_EMULATE
EMU_ASAN_FLAGS := -fsanitize=address -fno-omit-frame-pointer
EMU_LIB        := $(BUILD)/emu/libl2v_emu.a
EMU_ASAN_LIB   := $(BUILD)/asan/libl2v_emu.a
# Every kernel test (test/test_cuda_*.cpp) runs on the emulator, and again under ASan.
EMU_KERNEL_TESTS := $(patsubst test/%.cpp,%,$(wildcard test/test_cuda_*.cpp))
EMU_TESTS      := test_emulator test_emulator_ptx $(EMU_KERNEL_TESTS)
EMU_ASAN_TESTS := test_emulator test_emulator_ptx $(EMU_KERNEL_TESTS)
EMU_TEST_BINS  := $(EMU_TESTS:%=$(BUILD)/test/%) $(EMU_ASAN_TESTS:%=$(BUILD)/asan/%)

$(BUILD)/emu/%.o: %.cpp | $(DEPS_OK)
	@mkdir -p $(@D)
	$(CXX) $(EMU_CXXFLAGS) -c $< -o $@

$(BUILD)/asan/%.o: %.cpp | $(DEPS_OK)
	@mkdir -p $(@D)
	$(CXX) $(EMU_CXXFLAGS) $(EMU_ASAN_FLAGS) -c $< -o $@

# The CUDA sources (the backend and the kernels it includes) compile as C++ for the emulator.
EMU_CUDA_SRCS  := $(wildcard cuda/*.cu)

$(BUILD)/emu/cuda/%.o: cuda/%.cu | $(DEPS_OK)
	@mkdir -p $(@D)
	$(CXX) $(EMU_CXXFLAGS) -x c++ -c $< -o $@

$(BUILD)/asan/cuda/%.o: cuda/%.cu | $(DEPS_OK)
	@mkdir -p $(@D)
	$(CXX) $(EMU_CXXFLAGS) $(EMU_ASAN_FLAGS) -x c++ -c $< -o $@

$(EMU_LIB): $(EMU_SRCS:%.cpp=$(BUILD)/emu/%.o) $(EMU_CUDA_SRCS:%.cu=$(BUILD)/emu/%.o)
	@mkdir -p $(@D)
	rm -f $@ && ar rcs $@ $^

$(EMU_ASAN_LIB): $(EMU_SRCS:%.cpp=$(BUILD)/asan/%.o) $(EMU_CUDA_SRCS:%.cu=$(BUILD)/asan/%.o)
	@mkdir -p $(@D)
	rm -f $@ && ar rcs $@ $^

# These explicit rules take precedence over the Makefile's generic $(BUILD)/test/% rule. The normal
# library comes along for the fp32 CPU reference (host/cpu_ops.h) that kernel tests compare against.
$(EMU_TESTS:%=$(BUILD)/test/%): $(BUILD)/test/%: $(BUILD)/emu/test/%.o $(EMU_LIB) $(BUILD)/lib/libl2v.a
	$(CXX) $(EMU_CXXFLAGS) $^ -o $@ $(GTEST) $(LDLIBS)

$(EMU_ASAN_TESTS:%=$(BUILD)/asan/%): $(BUILD)/asan/%: $(BUILD)/asan/test/%.o $(EMU_ASAN_LIB) $(BUILD)/lib/libl2v.a
	$(CXX) $(EMU_CXXFLAGS) $(EMU_ASAN_FLAGS) $^ -o $@ $(GTEST) $(LDLIBS)

# The binary with the CUDA backend on the emulator (and NCCL over MPI, host/emu/nccl.cpp): what the
# data-parallel tests run under mpirun to execute the NCCL code path (test/test_data_parallel.cpp).
EMU_BIN := $(BUILD)/emu/llm2vec_cuda

$(BUILD)/emu/train/main.o: train/main.cpp | $(DEPS_OK)
	@mkdir -p $(@D)
	$(CXX) $(EMU_CXXFLAGS) -DL2V_WITH_CUDA -c $< -o $@

$(EMU_BIN): $(BUILD)/emu/train/main.o $(EMU_LIB) $(BUILD)/lib/libl2v.a
	$(CXX) $(EMU_CXXFLAGS) $^ -o $@ $(LDLIBS)

all: $(EMU_TEST_BINS) $(EMU_BIN)
test: $(EMU_TEST_BINS) $(EMU_BIN)
TEST_BINS := $(filter-out $(EMU_TEST_BINS),$(TEST_BINS)) $(EMU_TEST_BINS)
