// The Encoder (`llm2vec embed` and every `eval`) on the CUDA backend, kernels executed by the CPU
// emulator: each batch's forward and pooling launched as one CUDA graph (Encoder's cuda_graphs) gives
// the embeddings of direct launches to the bit, on the real stories260K model, for mean and EOS pooling,
// causal and bidirectional, over batches of several lengths (llm2vec's longest-first order).
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "cuda/cuda_backend.h"
#include "model/encoder.h"
#if defined(L2V_EMULATE)
#include "host/emu/cuda_emu.h"
#endif

namespace l2v {
namespace {

const char* kSentences[] = {
    "The cat sat on the mat.",
    "Lily went to the park with her mom and they saw a big red ball near the pond.",
    "The dog ran after the ball.",
    "Tom had a red toy car.",
    "The sun was hot and bright, so the children played in the shade of an old tree.",
    "A little bird sang a song.",
    "She liked to play in the rain.",
    "The boy ate a big apple.",
    "Once upon a time there was a girl who loved to dance.",
    "He smiled.",
};

TEST(CudaEncoder, EmbeddingsAsCudaGraphsEqualDirectLaunches) {
  std::vector<EncoderInput> inputs;
  for (const char* s : kSentences) inputs.push_back({"", s});
  const int kBatch = 3;  // 4 batches of decreasing length
  for (PoolingMode pooling : {PoolingMode::kMean, PoolingMode::kEosToken}) {
    for (bool bidirectional : {true, false}) {
      EncoderSpec spec;
      spec.model_name_or_path = "assets/stories260K/stories260K.bin";
      spec.tokenizer = "assets/stories260K/tok512.bin";
      spec.pooling = pooling;
      spec.bidirectional = bidirectional;
      std::vector<float> out[2];
      for (int graphs = 0; graphs < 2; ++graphs) {
        std::unique_ptr<Backend> gpu = make_cuda_backend(CudaPrecision::kBf16);
        Encoder enc(spec, *gpu, graphs == 1);
#if defined(L2V_EMULATE)  // the emulator counts the graph launches it ran (the nvcc build of this test: none)
        const uint64_t before = emu::graph_launches();
#endif
        out[graphs] = enc.embed(inputs, kBatch, false);
        const GraphStats st = gpu->graph_stats();
#if defined(L2V_EMULATE)
        EXPECT_EQ((long)(emu::graph_launches() - before), st.launches);
#endif
        if (graphs) {
          // The first (longest) batch sizes the activations, which abandons its capture; the others are
          // one graph launch each.
          EXPECT_EQ(st.broken, 1);
          EXPECT_EQ(st.launches, 3);
        } else {
          EXPECT_EQ(st.launches + st.broken, 0);
        }
      }
      ASSERT_EQ(out[0].size(), inputs.size() * 64u);
      EXPECT_EQ(std::memcmp(out[1].data(), out[0].data(), out[0].size() * sizeof(float)), 0)
          << "pooling " << (int)pooling << (bidirectional ? ", bidirectional" : ", causal");
    }
  }
}

}  // namespace
}  // namespace l2v
