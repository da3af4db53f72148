// The model fingerprint on the two shared models, against digests computed independently
// with Python's hashlib over the documented byte streams (the llama2.c header; config.json;
// k_proj/v_proj weights in layer order, sliced from the files by hand), plus the mismatch
// messages and the JSON form.
#include <filesystem>
#include <fstream>

#include "formats/error.h"
#include "formats/fingerprint.h"
#include "tests/catch.h"
#include "tests/formats/expect_error.h"
#include "tests/support/test_support.h"

using namespace kvq;
using kvq_test::expect_error;
using kvq_test::HasSubstr;
namespace fs = std::filesystem;

namespace {

std::string stories() { return kvq_test::shared_path("models/stories260K/stories260K.bin").string(); }
std::string testbed() { return kvq_test::shared_path("models/kvq-testbed-llama2-23m").string(); }

}  // namespace

TEST_CASE("fingerprint: stories260K (llama2.c)", "[fingerprint]") {
  const ModelFingerprint fp = compute_fingerprint(stories());
  CHECK(fp.architecture == "LlamaForCausalLM");
  CHECK(fp.layers == 5);
  CHECK(fp.heads == 8);
  CHECK(fp.kv_heads == 4);
  CHECK(fp.head_dim == 8);
  CHECK(fp.rope_layout == "interleaved");
  CHECK(fp.rope_theta == 10000.0);
  CHECK(fp.config_source == "llama2c-header");
  // hashlib.sha256(open(path,'rb').read()[:28])
  CHECK(fp.config_sha256 == "4bff6beb93f3dc1ff779f3f9fe79a201c5f08ecc9fedd17411b764b3cb9d8f32");
  // wk[i] then wv[i] for i in 0..4, sliced at 28 + 4*(vocab*dim + L*dim + L*dim*dim).
  CHECK(fp.kv_weights_sha256 == "0de7ee4670c9cb2bbd823c0e58a8e4c1fa61464789bb7f331d6ca0ffdae8da48");
}

TEST_CASE("fingerprint: the testbed model (HF, 3 shards)", "[fingerprint]") {
  const ModelFingerprint fp = compute_fingerprint(testbed());
  CHECK(fp.layers == 6);
  CHECK(fp.heads == 6);
  CHECK(fp.kv_heads == 6);
  CHECK(fp.head_dim == 64);
  CHECK(fp.rope_layout == "rotate_half");
  CHECK(fp.config_source == "config.json");
  CHECK(fp.config_sha256 == "fd6cc91b60bd6fbfab94d34eabc216bf9dc2f8309023fe3fd841b8d213fe6c26");
  CHECK(fp.kv_weights_sha256 == "fb5067fae9c45cc56d033af3050ab22d3b1fe513ec1686743adea15090b8e644");
  // The config.json path names the same model.
  CHECK(compute_fingerprint(testbed() + "/config.json") == fp);
  // stories260K's profile on the testbed: the first differing field is the layer count.
  CHECK(*fingerprint_mismatch(compute_fingerprint(stories()), fp) == "layers: profile has 5, model has 6");
}

TEST_CASE("fingerprint: a re-saved config changes only config_sha256", "[fingerprint]") {
  // Same weights (symlinked shards), config.json with one extra trailing newline.
  const fs::path dir = kvq_test::scratch_dir("fp-copy");
  for (const auto& e : fs::directory_iterator(testbed())) {
    if (e.path().filename() == "config.json") continue;
    fs::create_symlink(e.path(), dir / e.path().filename());
  }
  std::ifstream in(fs::path(testbed()) / "config.json", std::ios::binary);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  text += "\n";
  std::ofstream(dir / "config.json", std::ios::binary) << text;
  const ModelFingerprint a = compute_fingerprint(testbed()), b = compute_fingerprint(dir.string());
  CHECK(a.kv_weights_sha256 == b.kv_weights_sha256);
  const auto d = fingerprint_mismatch(a, b);
  REQUIRE(d.has_value());
  CHECK_THAT(*d, HasSubstr("config_sha256: profile has fd6cc91b"));
}

TEST_CASE("fingerprint: JSON round trip and field errors", "[fingerprint]") {
  const ModelFingerprint fp = compute_fingerprint(stories());
  CHECK(fingerprint_from_json(fingerprint_to_json(fp), "x") == fp);
  std::string j = fingerprint_to_json(fp);
  j.replace(j.find("\"interleaved\""), 13, "\"sideways\"");
  CHECK_THAT(std::string(expect_error<FormatError>([&] { fingerprint_from_json(j, "f.kvqp"); }).what()),
             HasSubstr("f.kvqp: fingerprint.rope_layout must be one of \"rotate_half\", \"interleaved\", found \"sideways\""));
  CHECK_THAT(std::string(expect_error<FormatError>([&] { fingerprint_from_json("{\"layers\": 5}", "f"); }).what()),
             HasSubstr("fingerprint.architecture is missing"));
  CHECK_THAT(std::string(expect_error<FormatError>([&] { fingerprint_from_json("[1,", "f"); }).what()),
             HasSubstr("not valid JSON"));
}

TEST_CASE("fingerprint: paths that are not models", "[fingerprint]") {
  const fs::path dir = kvq_test::scratch_dir("fp-bad");
  CHECK_THAT(std::string(expect_error<InvalidArgument>([&] { compute_fingerprint(dir.string()); }).what()),
             HasSubstr("folder has no config.json"));
  expect_error<IoError>([&] { compute_fingerprint((dir / "nope.bin").string()); });
  std::ofstream(dir / "weights.txt") << "hello";
  CHECK_THAT(std::string(expect_error<InvalidArgument>([&] { compute_fingerprint((dir / "weights.txt").string()); }).what()),
             HasSubstr("not a model"));
  std::ofstream(dir / "short.bin") << "abc";
  expect_error<FormatError>([&] { compute_fingerprint((dir / "short.bin").string()); });
}
