# libFuzzer targets for every parser a user can feed (fuzz/README.md), built by clang with ASan and
# UBSan into build/fuzz/, apart from the g++ build:
#   make fuzz FUZZ_SECONDS=N   each target N seconds (FUZZ_JOBS at a time), failing on any finding
#   make fuzz-smoke            the short CI pass: every target 10 s
#   make fuzz-build            the targets only
FUZZ_CXX      ?= clang++
FUZZ_SECONDS  ?= 60
FUZZ_JOBS     ?= $(shell nproc)
FUZZ_SAN      := -fsanitize=address,undefined -fno-sanitize-recover=undefined
# The library is compiled without OpenMP (its pragmas, and the constants only they use, are ignored).
FUZZ_CXXFLAGS := -std=c++17 -O1 -g -I. -MMD -MP -Wall -Wextra -Werror -Wno-unknown-pragmas -Wno-unused-const-variable \
                 $(FUZZ_SAN) -fsanitize=fuzzer-no-link
FUZZ_LIB_SRCS := model/safetensors.cpp model/config.cpp model/llama2c.cpp model/gguf_checkpoint.cpp train/train_config.cpp \
                 model/model.cpp model/pooling.cpp host/cpu_ops.cpp host/dropout_bits.cpp \
                 $(addprefix data/,batches.cpp file_io.cpp hf_tokenizer.cpp hf_bpe.cpp hf_pipeline.cpp hf_regex.cpp \
                   unicode.cpp tokenizer.cpp llama2c_tokenizer.cpp shard.cpp shard_manifest.cpp \
                   text_sources.cpp sts.cpp npy.cpp gguf.cpp gguf_tokenizer.cpp) \
                 fuzz/fuzz_common.cpp
FUZZ_TARGETS  := $(filter-out fuzz_common,$(basename $(notdir $(wildcard fuzz/fuzz_*.cpp))))
FUZZ_BINS     := $(addprefix $(BUILD)/fuzz/,$(FUZZ_TARGETS))

.PHONY: fuzz fuzz-smoke fuzz-build
fuzz-build: $(FUZZ_BINS)

$(BUILD)/fuzz/obj/%.o: %.cpp | $(DEPS_OK)
	@mkdir -p $(@D)
	$(FUZZ_CXX) $(FUZZ_CXXFLAGS) -c $< -o $@

$(BUILD)/fuzz/libl2v_fuzz.a: $(patsubst %.cpp,$(BUILD)/fuzz/obj/%.o,$(FUZZ_LIB_SRCS))
	rm -f $@ && ar rcs $@ $^

$(FUZZ_BINS): $(BUILD)/fuzz/%: $(BUILD)/fuzz/obj/fuzz/%.o $(BUILD)/fuzz/libl2v_fuzz.a
	$(FUZZ_CXX) $(FUZZ_SAN) -fsanitize=fuzzer $^ -o $@ -lpcre2-8 -lutf8proc -lopenblas

fuzz: $(FUZZ_BINS)
	@bash fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_JOBS) $(FUZZ_TARGETS)

fuzz-smoke: $(FUZZ_BINS)
	@bash fuzz/run.sh 10 $(FUZZ_JOBS) $(FUZZ_TARGETS)
