// libFuzzer target: sentence-pair files (data/sts.h): the input read as SICK (all pairs, then the TEST
// split) and as STS TSV. Each reader is run on its own, so one's refusal does not hide the others.
#include "data/sts.h"
#include "fuzz/fuzz_common.h"

namespace l2v::fuzz {

const char* const kInputName = "pairs.txt";

void fuzz_input(const std::string& path, const uint8_t*, size_t) {
  parse_or_refuse(path, [&] { read_sick(path, "ALL"); });
  parse_or_refuse(path, [&] { read_sick(path, "TEST"); });
  read_sts_tsv(path);
}

}  // namespace l2v::fuzz
