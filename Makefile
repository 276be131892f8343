# llm2vec.cu build. `make` builds the binary and the tests, `make test` runs every test,
# `make run` runs the main job on the bundled stories260K model. Missing Debian packages are
# installed by scripts/install_deps.sh the first time (and whenever that script changes).

# Build in parallel on every core unless the caller chose -j.
ifeq ($(filter -j%,$(MAKEFLAGS)),)
MAKEFLAGS += -j$(shell nproc)
endif

CXX      ?= g++
BUILD    := build
# Open MPI (train/comm_mpi.cpp): its headers as system headers, its library under every program.
MPI_INC  := /usr/lib/x86_64-linux-gnu/openmpi/include
CXXFLAGS := -std=c++17 -O2 -g -fopenmp -Wall -Wextra -Werror -I. -isystem $(MPI_INC) -MMD -MP
LDLIBS   := -lopenblas -lpcre2-8 -lutf8proc -lpthread -L/usr/lib/x86_64-linux-gnu/openmpi/lib -lmpi
GTEST    := -lgtest_main -lgtest

LIB_SRCS  := $(filter-out train/main.cpp,$(wildcard host/*.cpp model/*.cpp data/*.cpp train/*.cpp))
LIB_OBJS  := $(patsubst %.cpp,$(BUILD)/%.o,$(LIB_SRCS))
TEST_SRCS := $(wildcard test/test_*.cpp)
TEST_BINS := $(patsubst test/%.cpp,$(BUILD)/test/%,$(TEST_SRCS))
BENCH_SRCS := $(wildcard bench/*.cpp)
BENCH_BINS := $(patsubst bench/%.cpp,$(BUILD)/bench/%,$(BENCH_SRCS))
MAIN_BIN  := $(BUILD)/llm2vec
DEPS_OK   := $(BUILD)/.deps-ok

.PHONY: all test run deps clean bench
# Keep the test objects make would otherwise delete as intermediates (and rebuild every time).
.SECONDARY:
all: $(MAIN_BIN) $(TEST_BINS)

deps: $(DEPS_OK)
$(DEPS_OK): scripts/install_deps.sh
	@bash scripts/install_deps.sh
	@mkdir -p $(@D) && touch $@

$(BUILD)/%.o: %.cpp | $(DEPS_OK)
	@mkdir -p $(@D)
	$(CXX) $(CXXFLAGS) -c $< -o $@

$(BUILD)/lib/libl2v.a: $(LIB_OBJS)
	@mkdir -p $(@D)
	rm -f $@ && ar rcs $@ $^

$(MAIN_BIN): $(BUILD)/train/main.o $(BUILD)/lib/libl2v.a
	$(CXX) $(CXXFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/test/%: $(BUILD)/test/%.o $(BUILD)/lib/libl2v.a
	$(CXX) $(CXXFLAGS) $^ -o $@ $(GTEST) $(LDLIBS)

# Google Benchmark programs, built by `make bench` only; run them from the repository root.
bench: $(BENCH_BINS)

$(BUILD)/bench/%: $(BUILD)/bench/%.o $(BUILD)/lib/libl2v.a
	$(CXX) $(CXXFLAGS) $^ -o $@ -lbenchmark $(LDLIBS)

# oneDNN, optional (Debian libdnnl-dev): where installed, bench_cpu_gemm times its bf16 matmul beside ours.
ifneq ($(wildcard /usr/include/oneapi/dnnl/dnnl.hpp),)
$(BUILD)/bench/bench_cpu_gemm.o: CXXFLAGS += -DL2V_HAVE_ONEDNN
$(BUILD)/bench/bench_cpu_gemm: LDLIBS += -ldnnl
endif

# test/test_fault_injection.cpp and test/test_cli.cpp run the binary.
test: $(MAIN_BIN) $(TEST_BINS)
	@bash scripts/run_tests.sh $(TEST_BINS)

# The CPU test suite (every test but the emulator's, whose kernel tests have ASan twins in emu.mk, the
# nvcc binary's, and test_data_parallel's, whose mpirun runs the normal build: Open MPI's own allocations
# would swamp LeakSanitizer) and the binary test_fault_injection runs, under AddressSanitizer and
# UndefinedBehaviorSanitizer, apart from the normal build (build/san/): any report fails the run.
SAN_FLAGS := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
# -O1 (ASan's advice: fast to build, stacks still readable); g++ 12's flow analysis, confused by the
# instrumentation, reports libstdc++'s <regex> as maybe-uninitialized: that warning is off here only.
SAN_CXXFLAGS := $(CXXFLAGS) -O1 $(SAN_FLAGS) -Wno-maybe-uninitialized
SAN_TESTS := $(filter-out test_cuda_% test_emulator% test_gpu_binary test_data_parallel,$(patsubst test/%.cpp,%,$(TEST_SRCS)))
SAN_BINS  := $(SAN_TESTS:%=$(BUILD)/san/test/%)
.PHONY: test-sanitize

$(BUILD)/san/%.o: %.cpp | $(DEPS_OK)
	@mkdir -p $(@D)
	$(CXX) $(SAN_CXXFLAGS) -c $< -o $@

$(BUILD)/san/libl2v.a: $(patsubst %.cpp,$(BUILD)/san/%.o,$(LIB_SRCS))
	rm -f $@ && ar rcs $@ $^

$(BUILD)/san/llm2vec: $(BUILD)/san/train/main.o $(BUILD)/san/libl2v.a
	$(CXX) $(SAN_CXXFLAGS) $^ -o $@ $(LDLIBS)

$(SAN_BINS): $(BUILD)/san/test/%: $(BUILD)/san/test/%.o $(BUILD)/san/libl2v.a
	$(CXX) $(SAN_CXXFLAGS) $^ -o $@ $(GTEST) $(LDLIBS)

test-sanitize: $(SAN_BINS) $(BUILD)/san/llm2vec
	@L2V_BIN=$(BUILD)/san/llm2vec ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 bash scripts/run_tests.sh $(SAN_BINS)

# The recipe end to end on the bundled model and the micro-scale ablation table (a few minutes, CPU).
run: $(MAIN_BIN)
	bash scripts/micro_ablation.sh

clean:
	rm -rf $(BUILD)

# The CUDA-on-CPU emulator and its tests (adds them to all, test and TEST_BINS).
include host/emu/emu.mk
# The nvcc build of the kernels and the llm2vec_cuda binary, whenever nvcc is present.
include cuda/cuda.mk
# libFuzzer targets of the parsers, built by clang: make fuzz / fuzz-smoke (fuzz/README.md).
include fuzz/fuzz.mk

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
