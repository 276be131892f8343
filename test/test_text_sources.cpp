// Readers of raw prepare inputs: WikiText article splitting (checked against the published article
// counts of WikiText-2), line layouts, supervised JSONL with bad lines reported by line number, UTF-8
// validation.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <unistd.h>

#include "data/text_sources.h"
#include "data/unicode.h"

namespace l2v {
namespace {

std::string temp_file(const std::string& name, const std::string& content) {
  std::string path =
      (std::filesystem::temp_directory_path() / ("l2v_text_" + std::to_string(getpid()) + "_" + name)).string();
  std::ofstream(path, std::ios::binary) << content;
  return path;
}

std::string wikitext(const std::string& name) {
  for (std::string dir : {"assets/wikitext-2/", "../shared/data/wikitext-2/"})
    if (std::ifstream(dir + name)) return dir + name;
  return "assets/wikitext-2/" + name;
}

template <typename Reader, typename Record>
std::vector<Record> read_all(Reader& r, size_t batch, std::vector<BadLine>& bad) {
  std::vector<Record> all, part;
  while (r.next_batch(part, batch, bad)) all.insert(all.end(), part.begin(), part.end());
  return all;
}

TEST(TextSources, WikiTextArticlesMatchThePublishedCounts) {
  // WikiText-2 (Merity et al. 2016): 60 articles in the validation and 60 in the test split.
  for (const char* split : {"wiki.valid.raw", "wiki.test.raw"}) {
    TextReader r(wikitext(split), TextLayout::kWikiText);
    std::vector<BadLine> bad;
    auto docs = read_all<TextReader, TextRecord>(r, 7, bad);
    EXPECT_EQ(60u, docs.size()) << split;
    EXPECT_TRUE(bad.empty());
    for (const TextRecord& d : docs) {
      ASSERT_EQ(0u, d.text.rfind("= ", 0)) << "article must start at its title: " << d.text.substr(0, 40);
    }
    EXPECT_EQ(2u, docs[0].line);  // the file starts with a blank line
  }
}

TEST(TextSources, WikiTextSplitsOnTopLevelHeadingsOnly) {
  // Line 8 is shaped like a heading but continues a paragraph (no blank line before it).
  std::string path = temp_file(
      "wt.raw", " \n = A = \n \n text a1 \n \n = = Sub = = \n text a2 \n = x = \n \n = B = \n b1 \n");
  TextReader r(path, TextLayout::kWikiText);
  std::vector<BadLine> bad;
  auto docs = read_all<TextReader, TextRecord>(r, 1, bad);
  ASSERT_EQ(2u, docs.size());
  EXPECT_EQ("= A =\ntext a1\n= = Sub = =\ntext a2\n= x =", docs[0].text);
  EXPECT_EQ(2u, docs[0].line);
  EXPECT_EQ("= B =\nb1", docs[1].text);
  EXPECT_EQ(10u, docs[1].line);
  std::remove(path.c_str());
}

TEST(TextSources, LinesLayoutSkipsBlankLinesAndReportsBadUtf8) {
  std::string path = temp_file("lines.txt", "one\n\n  two  \n\xff\xfe bad\nthree");
  TextReader r(path, TextLayout::kLines);
  std::vector<BadLine> bad;
  auto docs = read_all<TextReader, TextRecord>(r, 2, bad);
  ASSERT_EQ(3u, docs.size());
  EXPECT_EQ("one", docs[0].text);
  EXPECT_EQ("two", docs[1].text);
  EXPECT_EQ(3u, docs[1].line);
  EXPECT_EQ("three", docs[2].text);
  ASSERT_EQ(1u, bad.size());
  EXPECT_EQ(4u, bad[0].line);
  std::remove(path.c_str());
}

TEST(TextSources, SupervisedJsonlReportsEveryBadLine) {
  std::string path = temp_file("sup.jsonl",
                               R"({"query": "q1", "positive": "p1", "negative": "n1", "instruction": "Find", "dataset": "nli"})"
                               "\n"
                               "not json\n"
                               R"({"query": "q3", "positive": "p3"})"
                               "\n"
                               R"({"query": 5, "positive": "p4", "negative": "n4"})"
                               "\n"
                               R"({"query": "  ", "positive": "p5", "negative": "n5"})"
                               "\n\n"
                               R"({"query": "q7", "positive": "p7", "negative": "n7"})"
                               "\n");
  SupervisedReader r(path);
  std::vector<BadLine> bad;
  auto recs = read_all<SupervisedReader, SupervisedRecord>(r, 1, bad);
  ASSERT_EQ(2u, recs.size());
  EXPECT_EQ("Find", recs[0].instruction);
  EXPECT_EQ("nli", recs[0].dataset);
  EXPECT_EQ(7u, recs[1].line);
  EXPECT_EQ("", recs[1].instruction);
  ASSERT_EQ(4u, bad.size());
  EXPECT_EQ(2u, bad[0].line);
  EXPECT_EQ(3u, bad[1].line);
  EXPECT_NE(std::string::npos, bad[1].reason.find("negative"));
  EXPECT_EQ(4u, bad[2].line);
  EXPECT_NE(std::string::npos, bad[2].reason.find("query"));
  EXPECT_EQ(5u, bad[3].line);
  std::remove(path.c_str());
}

TEST(TextSources, Utf8Validation) {
  EXPECT_TRUE(is_valid_utf8("plain ascii"));
  EXPECT_TRUE(is_valid_utf8("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"));  // é € 😀
  EXPECT_FALSE(is_valid_utf8("\xc0\xaf"));                                   // overlong '/'
  EXPECT_FALSE(is_valid_utf8("\xed\xa0\x80"));                               // surrogate U+D800
  EXPECT_FALSE(is_valid_utf8("\xf4\x90\x80\x80"));                           // above U+10FFFF
  EXPECT_FALSE(is_valid_utf8("\xe2\x82"));                                   // truncated
  EXPECT_FALSE(is_valid_utf8("\x80"));                                       // stray continuation
}

TEST(TextSources, MissingFileIsAClearError) {
  try {
    TextReader r("/nonexistent/file.txt", TextLayout::kLines);
    FAIL() << "no error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string::npos, std::string(e.what()).find("/nonexistent/file.txt"));
  }
}

// A directory given as the input opens as an empty stream: it must not read as "no records".
TEST(TextSources, ADirectoryIsRefusedAsAnInput) {
  const std::string dir = ::testing::TempDir();
  for (int reader = 0; reader < 2; ++reader) {
    try {
      if (reader == 0) TextReader r(dir, TextLayout::kLines);
      else SupervisedReader r(dir);
      FAIL() << "no error for reader " << reader;
    } catch (const std::runtime_error& e) {
      EXPECT_NE(std::string::npos, std::string(e.what()).find("is a directory")) << e.what();
      EXPECT_NE(std::string::npos, std::string(e.what()).find(dir)) << e.what();
    }
  }
}

}  // namespace
}  // namespace l2v
