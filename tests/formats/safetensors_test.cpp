// safetensors: writer/reader round trip and byte determinism, every malformed-input case
// the reader must reject (each from a file crafted here, checking the exception type, the
// file name, the problem and the offset), sharded checkpoints, and the real fp16 testbed
// model (56 tensors in 3 shards) copied to one file by our writer.
#include <algorithm>
#include <cstring>
#include <filesystem>
#include <random>

#include "formats/error.h"
#include "formats/hf_config.h"
#include "formats/safetensors.h"
#include "tests/catch.h"
#include "tests/formats/expect_error.h"
#include "tests/support/test_support.h"

using namespace kvq;
using kvq_test::expect_error;
using kvq_test::HasSubstr;
namespace fs = std::filesystem;

namespace {

// u64 header length + header text + data, as a file at `path`.
std::string craft(const fs::path& path, const std::string& header,
                  const std::vector<uint8_t>& data) {
  std::vector<uint8_t> bytes(8);
  const uint64_t n = header.size();
  std::memcpy(bytes.data(), &n, 8);
  bytes.insert(bytes.end(), header.begin(), header.end());
  bytes.insert(bytes.end(), data.begin(), data.end());
  kvq_test::write_bytes(path, bytes.data(), bytes.size());
  return path.string();
}

std::string craft(const std::string& name, const std::string& header, size_t data_bytes) {
  return craft(kvq_test::scratch_dir("st-bad") / name, header, std::vector<uint8_t>(data_bytes, 7));
}

// Opening `path` must throw FormatError whose message names the file and contains
// `problem`; returns the error for further checks.
FormatError bad_file(const std::string& path, const std::string& problem) {
  return kvq_test::expect_file_error<FormatError>(path, problem, [&] { SafetensorsReader r(path); });
}

struct Owned {
  std::vector<uint8_t> bytes;
  TensorView view;
};

Owned random_tensor(std::mt19937_64& rng, const std::string& name, DType dt,
                    std::vector<int64_t> shape) {
  Owned o;
  o.view.name = name;
  o.view.dtype = dt;
  o.view.shape = std::move(shape);
  o.view.nbytes = static_cast<size_t>(o.view.numel()) * dtype_size(dt);
  o.bytes.resize(o.view.nbytes);
  for (auto& b : o.bytes) b = static_cast<uint8_t>(rng());
  o.view.data = o.bytes.data();
  return o;
}

std::vector<Owned> random_set(uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<Owned> v;
  // Awkward sizes, every element size, an empty tensor and a scalar.
  v.push_back(random_tensor(rng, "b.f16", DType::kF16, {127}));
  v.push_back(random_tensor(rng, "a.f32", DType::kF32, {3, 7}));
  v.push_back(random_tensor(rng, "c.bf16", DType::kBF16, {1, 1, 129}));
  v.push_back(random_tensor(rng, "d.i8", DType::kI8, {4097}));
  v.push_back(random_tensor(rng, "e.f64", DType::kF64, {3}));
  v.push_back(random_tensor(rng, "f.u8.empty", DType::kU8, {0, 5}));
  v.push_back(random_tensor(rng, "g.i64.scalar", DType::kI64, {}));
  v.push_back(random_tensor(rng, "h.bool", DType::kBool, {7}));
  v.push_back(random_tensor(rng, "i.e4m3", DType::kF8E4M3, {1}));
  v.push_back(random_tensor(rng, "Z.upper.i32", DType::kI32, {2, 3}));
  return v;
}

std::vector<TensorView> views(const std::vector<Owned>& owned) {
  std::vector<TensorView> out;
  for (const auto& o : owned) out.push_back(o.view);
  return out;
}

}  // namespace

TEST_CASE("safetensors round trip keeps dtype, shape, bytes and metadata", "[safetensors]") {
  const uint64_t seed = kvq_test::test_seed(20240601);
  const auto owned = random_set(seed);
  const fs::path dir = kvq_test::scratch_dir("st-roundtrip");
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"kvq", "test \"q\""}};
  const std::string path = (dir / "t.safetensors").string();
  write_safetensors(path, views(owned), meta);

  SafetensorsReader r(path);
  REQUIRE(r.size() == owned.size());
  CHECK(r.metadata() == meta);
  CHECK(r.index_path().empty());
  REQUIRE(r.files().size() == 1);
  for (const auto& o : owned) {
    const TensorView& t = r.get(o.view.name);
    CHECK(t.dtype == o.view.dtype);
    CHECK(t.shape == o.view.shape);
    REQUIRE(t.nbytes == o.bytes.size());
    CHECK(std::memcmp(t.data, o.bytes.data(), t.nbytes) == 0);
    CHECK(t.file == path);
    // Our writer orders by element size so that every tensor is aligned to it.
    CHECK(reinterpret_cast<uintptr_t>(t.data) % dtype_size(t.dtype) == 0);
  }
  auto names = r.names();
  CHECK(std::is_sorted(names.begin(), names.end()));
  CHECK(r.find("missing") == nullptr);
  const FormatError e = expect_error<FormatError>([&] { (void)r.get("missing"); });
  CHECK_THAT(std::string(e.what()), HasSubstr("missing"));
}

TEST_CASE("safetensors writer is deterministic and pads the header to 8 bytes", "[safetensors]") {
  const uint64_t seed = kvq_test::test_seed(77);
  auto owned = random_set(seed);
  const fs::path dir = kvq_test::scratch_dir("st-determinism");
  write_safetensors((dir / "a.safetensors").string(), views(owned), {{"k", "v"}});
  write_safetensors((dir / "b.safetensors").string(), views(owned), {{"k", "v"}});
  // The input order must not matter either.
  std::vector<TensorView> reversed = views(owned);
  std::reverse(reversed.begin(), reversed.end());
  write_safetensors((dir / "c.safetensors").string(), reversed, {{"k", "v"}});

  const auto a = kvq_test::read_bytes(dir / "a.safetensors");
  const auto b = kvq_test::read_bytes(dir / "b.safetensors");
  const auto c = kvq_test::read_bytes(dir / "c.safetensors");
  CHECK(a == b);
  CHECK(a == c);
  uint64_t n = 0;
  std::memcpy(&n, a.data(), 8);
  CHECK(n % 8 == 0);
  const std::string header(reinterpret_cast<const char*>(a.data()) + 8, n);
  CHECK(header.front() == '{');
  // Sorted keys: "Z..." < "__metadata__" < "a..." in byte order.
  const size_t z = header.find("\"Z.upper.i32\""), m = header.find("\"__metadata__\"");
  const size_t first = header.find("\"a.f32\""), last = header.find("\"i.e4m3\"");
  CHECK(z < m);
  CHECK(m < first);
  CHECK(first < last);
  // No gaps: the file ends where the last tensor does.
  uint64_t total = 0;
  for (const auto& o : owned) total += o.bytes.size();
  CHECK(a.size() == 8 + n + total);
  // No temporary left behind.
  int files = 0;
  for (const auto& entry : fs::directory_iterator(dir)) files += entry.is_regular_file();
  CHECK(files == 3);
}

TEST_CASE("safetensors writer rejects inconsistent tensors", "[safetensors]") {
  const fs::path dir = kvq_test::scratch_dir("st-writer-bad");
  const std::string path = (dir / "w.safetensors").string();
  std::vector<float> buf(6, 1.0f);
  TensorView t{"x", DType::kF32, {2, 3}, buf.data(), 24, ""};
  SECTION("nbytes does not match") {
    t.nbytes = 20;
    auto e = expect_error<InvalidArgument>([&] { write_safetensors(path, {t}); });
    CHECK_THAT(std::string(e.what()), HasSubstr("needs 24"));
  }
  SECTION("duplicate name") {
    auto e = expect_error<InvalidArgument>([&] { write_safetensors(path, {t, t}); });
    CHECK_THAT(std::string(e.what()), HasSubstr("twice"));
  }
  SECTION("negative dimension") {
    t.shape = {-2, -3};
    expect_error<InvalidArgument>([&] { write_safetensors(path, {t}); });
  }
  SECTION("reserved name") {
    t.name = "__metadata__";
    expect_error<InvalidArgument>([&] { write_safetensors(path, {t}); });
  }
  CHECK_FALSE(fs::exists(path));
}

TEST_CASE("safetensors: file shorter than 8 bytes", "[safetensors][bad]") {
  const fs::path p = kvq_test::scratch_dir("st-bad") / "short.safetensors";
  kvq_test::write_bytes(p, "abcde", 5);
  const auto e = bad_file(p.string(), "5 bytes, too short");
  CHECK(e.offset() == 0);
  const fs::path empty = kvq_test::scratch_dir("st-bad") / "empty.safetensors";
  kvq_test::write_bytes(empty, "", 0);
  bad_file(empty.string(), "0 bytes");
}

TEST_CASE("safetensors: header length past end of file", "[safetensors][bad]") {
  const fs::path p = kvq_test::scratch_dir("st-bad") / "hdr.safetensors";
  std::vector<uint8_t> bytes(8 + 10, ' ');
  const uint64_t n = 4096;
  std::memcpy(bytes.data(), &n, 8);
  kvq_test::write_bytes(p, bytes.data(), bytes.size());
  const auto e = bad_file(p.string(), "header length 4096 runs past the end of the file (18 bytes");
  CHECK(e.offset() == 0);
}

TEST_CASE("safetensors: absurdly large header length", "[safetensors][bad]") {
  const fs::path p = kvq_test::scratch_dir("st-bad") / "huge.safetensors";
  std::vector<uint8_t> bytes(64, ' ');
  const uint64_t n = uint64_t{1} << 40;
  std::memcpy(bytes.data(), &n, 8);
  kvq_test::write_bytes(p, bytes.data(), bytes.size());
  bad_file(p.string(), "exceeds the 100000000-byte limit");
}

TEST_CASE("safetensors: truncated file", "[safetensors][bad]") {
  // A valid file written by us, cut in the middle of the data section.
  std::mt19937_64 rng(kvq_test::test_seed(5));
  auto owned = random_set(rng());
  const fs::path dir = kvq_test::scratch_dir("st-trunc");
  const fs::path full = dir / "full.safetensors";
  write_safetensors(full.string(), views(owned));
  auto bytes = kvq_test::read_bytes(full);
  const fs::path cut = dir / "cut.safetensors";
  kvq_test::write_bytes(cut, bytes.data(), bytes.size() - 100);
  const auto e = bad_file(cut.string(), "runs past the end of the data section");
  CHECK(e.offset() > 8);
  CHECK(e.hint().find("truncated") != std::string::npos);
  // Cut inside the header: the header length itself runs past the end.
  const fs::path cut2 = dir / "cut2.safetensors";
  kvq_test::write_bytes(cut2, bytes.data(), 40);
  bad_file(cut2.string(), "runs past the end of the file");
}

TEST_CASE("safetensors: header is not valid JSON", "[safetensors][bad]") {
  const std::string p = craft("json.safetensors", R"({"a": {"dtype": "F32",, }})", 0);
  const auto e = bad_file(p, "not valid JSON");
  // The second comma is byte 22 of the header, i.e. byte 30 of the file.
  CHECK(e.offset() == 8 + 22);
}

TEST_CASE("safetensors: header is not an object", "[safetensors][bad]") {
  bad_file(craft("array.safetensors", "[1, 2, 3]", 0), "expected an object");
}

TEST_CASE("safetensors: wrong field types", "[safetensors][bad]") {
  SECTION("tensor entry not an object") {
    bad_file(craft("t1.safetensors", R"({"w": 3})", 0), "tensor 'w': entry is a number");
  }
  SECTION("dtype not a string") {
    bad_file(craft("t2.safetensors", R"({"w": {"dtype": 4, "shape": [1], "data_offsets": [0, 4]}})", 4),
             "\"dtype\" missing or not a string");
  }
  SECTION("shape not an array") {
    bad_file(craft("t3.safetensors", R"({"w": {"dtype": "F32", "shape": "1", "data_offsets": [0, 4]}})", 4),
             "\"shape\" missing or not an array");
  }
  SECTION("shape entry a float") {
    bad_file(craft("t4.safetensors", R"({"w": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}})", 4),
             "is not an integer");
  }
  SECTION("data_offsets with three entries") {
    bad_file(craft("t5.safetensors", R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}})", 8),
             "\"data_offsets\" must be [begin, end]");
  }
  SECTION("data_offsets missing") {
    bad_file(craft("t6.safetensors", R"({"w": {"dtype": "F32", "shape": [1]}})", 4),
             "\"data_offsets\" must be [begin, end]");
  }
  SECTION("negative offset") {
    bad_file(craft("t7.safetensors", R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}})", 4),
             "non-negative integers");
  }
  SECTION("__metadata__ with a non-string value") {
    bad_file(craft("t8.safetensors", R"({"__metadata__": {"step": 3}})", 0),
             "\"__metadata__\" value for 'step' is a number");
  }
  SECTION("__metadata__ not an object") {
    bad_file(craft("t9.safetensors", R"({"__metadata__": "pt"})", 0), "\"__metadata__\" is a string");
  }
}

TEST_CASE("safetensors: unknown dtype", "[safetensors][bad]") {
  const std::string header = R"({"__metadata__":{},"w": {"dtype": "F12", "shape": [2], "data_offsets": [0, 4]}})";
  const auto e = bad_file(craft("dtype.safetensors", header, 4), "unknown dtype 'F12'");
  // The offset points at the tensor's key in the header.
  CHECK(e.offset() == 8 + static_cast<int64_t>(header.find("\"w\"")));
}

TEST_CASE("safetensors: data_offsets with begin > end", "[safetensors][bad]") {
  bad_file(craft("order.safetensors", R"({"w": {"dtype": "U8", "shape": [4], "data_offsets": [8, 4]}})", 8),
           "has begin > end");
}

TEST_CASE("safetensors: data_offsets outside the data section", "[safetensors][bad]") {
  const auto e = bad_file(
      craft("outside.safetensors", R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}})", 16),
      "data [8, 24) runs past the end of the data section (16 bytes)");
  CHECK(e.offset() > 8);
}

TEST_CASE("safetensors: overlapping tensors", "[safetensors][bad]") {
  const std::string header =
      R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},)"
      R"( "b": {"dtype": "F32", "shape": [2], "data_offsets": [24, 32]},)"
      R"( "c": {"dtype": "F32", "shape": [4], "data_offsets": [12, 28]}})";
  const std::string p = craft("overlap.safetensors", header, 32);
  const auto e = bad_file(p, "tensor 'c' data [12, 28) overlaps tensor 'a' data [0, 16)");
  CHECK(e.offset() == static_cast<int64_t>(8 + header.size() + 12));
}

TEST_CASE("safetensors: an empty tensor inside another counts as an overlap", "[safetensors][bad]") {
  const std::string header =
      R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},)"
      R"( "e": {"dtype": "F32", "shape": [0], "data_offsets": [8, 8]}})";
  bad_file(craft("overlap-empty.safetensors", header, 16), "tensor 'e' data [8, 8) overlaps tensor 'a'");
}

TEST_CASE("safetensors: byte size differs from dtype x shape", "[safetensors][bad]") {
  const std::string p = craft(
      "size.safetensors", R"({"w": {"dtype": "F16", "shape": [3, 5], "data_offsets": [0, 32]}})", 32);
  bad_file(p, "tensor 'w': 32 bytes of data, but dtype F16 x shape [3,5] needs 30");
}

TEST_CASE("safetensors: shape product overflows", "[safetensors][bad]") {
  const std::string p = craft(
      "overflow.safetensors",
      R"({"w": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 0]}})", 0);
  bad_file(p, "needs more than 2^64");
}

TEST_CASE("safetensors: negative dimension", "[safetensors][bad]") {
  bad_file(craft("neg.safetensors", R"({"w": {"dtype": "F32", "shape": [-1, 4], "data_offsets": [0, 16]}})", 16),
           "negative dimension -1");
}

TEST_CASE("safetensors: duplicate tensor name in one header", "[safetensors][bad]") {
  const std::string header =
      R"({"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},)"
      R"( "w": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}})";
  bad_file(craft("dup.safetensors", header, 2), "tensor 'w' appears twice");
}

TEST_CASE("safetensors: gaps between tensors and trailing bytes are allowed", "[safetensors]") {
  const fs::path p = kvq_test::scratch_dir("st-gap") / "gap.safetensors";
  std::vector<uint8_t> data(40, 0);
  const float a = 1.5f, b = -2.25f;
  std::memcpy(data.data() + 4, &a, 4);
  std::memcpy(data.data() + 20, &b, 4);
  craft(p,
        R"({"b": {"dtype": "F32", "shape": [1], "data_offsets": [20, 24]},)"
        R"( "a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})",
        data);
  SafetensorsReader r(p.string());
  float got = 0;
  std::memcpy(&got, r.get("a").data, 4);
  CHECK(got == a);
  std::memcpy(&got, r.get("b").data, 4);
  CHECK(got == b);
}

TEST_CASE("safetensors: missing file and folders", "[safetensors]") {
  const fs::path dir = kvq_test::scratch_dir("st-open");
  const auto e = expect_error<IoError>([&] { SafetensorsReader r((dir / "nope.safetensors").string()); });
  CHECK_THAT(std::string(e.what()), HasSubstr("nope.safetensors"));
  const auto e2 = expect_error<IoError>([&] { SafetensorsReader r(dir.string()); });
  CHECK_THAT(std::string(e2.what()), HasSubstr("neither model.safetensors"));

  std::vector<float> x = {1, 2, 3};
  write_safetensors((dir / "model.safetensors").string(), {{"x", DType::kF32, {3}, x.data(), 12, ""}});
  SafetensorsReader r(dir.string());
  CHECK(r.names() == std::vector<std::string>{"x"});
  CHECK(r.path() == dir.string());
}

namespace {

// Two shards written by our writer plus an index, in a fresh folder.
fs::path sharded_fixture(const std::string& name, const std::string& index_json,
                         bool second_has_dup = false) {
  const fs::path dir = kvq_test::scratch_dir(name);
  static const std::vector<float> x = {1, 2, 3, 4}, y = {5, 6}, z = {7};
  write_safetensors((dir / "s1.safetensors").string(),
                    {{"x", DType::kF32, {4}, x.data(), 16, ""}, {"y", DType::kF32, {2}, y.data(), 8, ""}},
                    {{"format", "pt"}, {"shard", "1"}});
  std::vector<TensorView> s2 = {{"z", DType::kF32, {1}, z.data(), 4, ""}};
  if (second_has_dup) s2.push_back({"y", DType::kF32, {2}, y.data(), 8, ""});
  write_safetensors((dir / "s2.safetensors").string(), s2, {{"shard", "2"}});
  const std::string idx = index_json;
  kvq_test::write_bytes(dir / "model.safetensors.index.json", idx.data(), idx.size());
  return dir;
}

const char* kGoodIndex =
    R"({"metadata": {"total_size": 28}, "weight_map": {"x": "s1.safetensors", "y": "s1.safetensors", "z": "s2.safetensors"}})";

}  // namespace

TEST_CASE("safetensors: sharded checkpoint through the index", "[safetensors]") {
  const fs::path dir = sharded_fixture("st-shard", kGoodIndex);
  for (const fs::path& open : {dir, dir / "model.safetensors.index.json"}) {
    SafetensorsReader r(open.string());
    CHECK(r.size() == 3);
    CHECK(r.files().size() == 2);
    CHECK(r.index_path() == (dir / "model.safetensors.index.json").string());
    CHECK(r.get("z").file == (dir / "s2.safetensors").string());
    float v = 0;
    std::memcpy(&v, static_cast<const float*>(r.get("x").data) + 3, 4);
    CHECK(v == 4.0f);
    // Union of the shards' metadata; the first shard wins a shared key.
    CHECK(r.metadata().at("format") == "pt");
    CHECK(r.metadata().at("shard") == "1");
  }
}

TEST_CASE("safetensors: a shard named in the index is missing", "[safetensors][bad]") {
  const fs::path dir = sharded_fixture(
      "st-shard-missing",
      R"({"weight_map": {"x": "s1.safetensors", "z": "s2.safetensors", "q": "s3.safetensors"}})");
  const std::string index = (dir / "model.safetensors.index.json").string();
  const auto e = bad_file(dir.string(), "shard 's3.safetensors' named in the index is missing");
  CHECK_THAT(std::string(e.what()), HasSubstr(index));
}

TEST_CASE("safetensors: tensor listed in the index but absent from its shard", "[safetensors][bad]") {
  SECTION("absent everywhere") {
    const fs::path dir = sharded_fixture(
        "st-shard-absent", R"({"weight_map": {"x": "s1.safetensors", "w": "s2.safetensors"}})");
    bad_file((dir / "model.safetensors.index.json").string(),
             "tensor 'w' is listed for shard 's2.safetensors' but absent from it");
  }
  SECTION("present in another shard") {
    const fs::path dir = sharded_fixture(
        "st-shard-wrong", R"({"weight_map": {"x": "s2.safetensors", "z": "s2.safetensors"}})");
    bad_file(dir.string(), "tensor 'x' is listed for shard 's2.safetensors' but absent from it");
  }
}

TEST_CASE("safetensors: duplicate tensor names across shards", "[safetensors][bad]") {
  const fs::path dir = sharded_fixture("st-shard-dup", kGoodIndex, /*second_has_dup=*/true);
  const std::string s2 = (dir / "s2.safetensors").string();
  FormatError e = expect_error<FormatError>([&] { SafetensorsReader r(dir.string()); });
  CHECK_THAT(std::string(e.what()), HasSubstr(s2));
  CHECK_THAT(std::string(e.what()), HasSubstr("tensor 'y' is also in shard 's1.safetensors'"));
  CHECK(e.offset() > 8);
}

TEST_CASE("safetensors: malformed index", "[safetensors][bad]") {
  SECTION("no weight_map") {
    const fs::path dir = sharded_fixture("st-idx1", R"({"metadata": {}})");
    bad_file(dir.string(), "no \"weight_map\" object");
  }
  SECTION("not JSON") {
    const fs::path dir = sharded_fixture("st-idx2", R"({"weight_map": )");
    bad_file(dir.string(), "not valid JSON");
  }
  SECTION("shard name not a string") {
    const fs::path dir = sharded_fixture("st-idx3", R"({"weight_map": {"x": 1}})");
    bad_file(dir.string(), "weight_map entry for 'x' is a number");
  }
}

TEST_CASE("safetensors: the sharded fp16 testbed checkpoint", "[safetensors][testbed]") {
  const fs::path dir = kvq_test::shared_path("models/kvq-testbed-llama2-23m");
  const ModelConfig c = load_hf_config(dir.string());
  SafetensorsReader r(dir.string());
  // 56, not 57: embedding + final norm + 9 per layer x 6 layers; the classifier is tied,
  // so there is no lm_head.weight (checked against the index's weight_map, 56 entries).
  REQUIRE(r.size() == 56);
  CHECK(r.files().size() == 3);
  CHECK(r.metadata().at("format") == "pt");
  const int64_t h = c.hidden, kv = c.kv_dim(), q = c.q_dim(), ff = c.intermediate;
  uint64_t params = 0;
  for (const std::string& name : r.names()) {
    const TensorView& t = r.get(name);
    CHECK(t.dtype == DType::kF16);
    params += static_cast<uint64_t>(t.numel());
  }
  CHECK(params == 22909824);  // the index's metadata.total_parameters
  CHECK(r.get("model.embed_tokens.weight").shape == std::vector<int64_t>{c.vocab, h});
  CHECK(r.get("model.norm.weight").shape == std::vector<int64_t>{h});
  CHECK(r.find("lm_head.weight") == nullptr);  // tied
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    CHECK(r.get(p + "self_attn.q_proj.weight").shape == std::vector<int64_t>{q, h});
    CHECK(r.get(p + "self_attn.k_proj.weight").shape == std::vector<int64_t>{kv, h});
    CHECK(r.get(p + "self_attn.v_proj.weight").shape == std::vector<int64_t>{kv, h});
    CHECK(r.get(p + "self_attn.o_proj.weight").shape == std::vector<int64_t>{h, q});
    CHECK(r.get(p + "mlp.gate_proj.weight").shape == std::vector<int64_t>{ff, h});
    CHECK(r.get(p + "mlp.up_proj.weight").shape == std::vector<int64_t>{ff, h});
    CHECK(r.get(p + "mlp.down_proj.weight").shape == std::vector<int64_t>{h, ff});
    CHECK(r.get(p + "input_layernorm.weight").shape == std::vector<int64_t>{h});
    CHECK(r.get(p + "post_attention_layernorm.weight").shape == std::vector<int64_t>{h});
  }
  // 1 embedding + 1 norm + 9 per layer.
  CHECK(r.size() == static_cast<size_t>(2 + 9 * c.n_layers));

  // Issue 2, acceptance 3: a single-file copy by our writer holds identical tensors.
  const fs::path copy = kvq_test::scratch_dir("st-testbed") / "model.safetensors";
  std::vector<TensorView> all;
  for (const std::string& name : r.names()) all.push_back(r.get(name));
  write_safetensors(copy.string(), all, r.metadata());
  SafetensorsReader single(copy.string());
  REQUIRE(single.names() == r.names());
  for (const std::string& name : r.names()) {
    const TensorView& a = r.get(name);
    const TensorView& b = single.get(name);
    CHECK(a.dtype == b.dtype);
    CHECK(a.shape == b.shape);
    REQUIRE(a.nbytes == b.nbytes);
    CHECK(std::memcmp(a.data, b.data, a.nbytes) == 0);
  }
  // Header length + header + exactly the index's metadata.total_size of data, no gaps.
  const auto head = kvq_test::read_bytes(copy);
  uint64_t n = 0;
  std::memcpy(&n, head.data(), 8);
  CHECK(head.size() == 8 + n + 45819648);
}
