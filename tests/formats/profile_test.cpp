// The profile format (docs/profile-format.md): round trips with identical bytes for every
// method, determinism, per-layer overrides, and every refusal the reader owes its users,
// each from a file crafted here: another model's fingerprint, a newer (and older) major
// version, a corrupted digest, truncation at every interesting length, wrong shapes,
// wrong dtypes, missing / unused / out-of-range tensors, non-finite and disordered
// values, wrong format name and byte order. Newer minor versions with unknown keys and
// tensors must load.
#include <cstring>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "formats/error.h"
#include "formats/profile.h"
#include "formats/profile_convert.h"
#include "formats/safetensors.h"
#include "tests/catch.h"
#include "tests/formats/expect_error.h"
#include "tests/formats/profile_fixtures.h"
#include "tests/support/test_support.h"

using namespace kvq;
using kvq_test::expect_error;
using kvq_test::HasSubstr;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

std::string write_tmp(const Profile& p, const std::string& name = "p.kvqp") {
  const fs::path path = kvq_test::scratch_dir("profile") / name;
  write_profile(path.string(), p);
  return path.string();
}

// Rewrites a file with its metadata edited by `edit` (tensors unchanged).
void edit_metadata(const std::string& path,
                   const std::function<void(std::map<std::string, std::string>&)>& edit) {
  const std::vector<uint8_t> bytes = kvq_test::read_bytes(path);
  SafetensorsFile f = parse_safetensors(path, bytes.data(), bytes.size());
  edit(f.metadata);
  write_safetensors(path, f.tensors, f.metadata);
}

// Rewrites the profile document with `edit` applied (tensors unchanged).
void edit_document(const std::string& path, const std::function<void(json&)>& edit) {
  edit_metadata(path, [&](std::map<std::string, std::string>& m) {
    json doc = json::parse(m.at("profile"));
    edit(doc);
    m["profile"] = doc.dump();
  });
}

// Writes `p` bypassing the writer's checks (for files the reader must refuse), with a
// correct digest so that the check under test is the one that fires.
std::string write_unchecked(const Profile& p, const std::string& name) {
  const fs::path path = kvq_test::scratch_dir("profile-bad") / name;
  write_kvq_container(path.string(), kProfileFormat, profile_document(p), p.tensors);
  return path.string();
}

FormatError refused(const std::string& path, const std::string& problem) {
  return kvq_test::expect_file_error<FormatError>(path, problem, [&] { read_profile(path); });
}

const char* kAllSpecs[] = {
    "int:bits=4",           "int:bits=2,axis=channel,group=32,symmetric=1",
    "kivi:bits=2",          "kvquant:bits=3",
    "kvquant:bits=2,outliers=0,qnorm=1", "kvquant:key-bits=4,value-bits=2,outliers=5%",
    "kvquant:bits=6,nuq=0", "wkvquant:bits=4",
    "wkvquant:key-bits=3,value-bits=4,poq=0", "mikv:bits=2",
    "mikv:bits=3,balancer=0,high=int8", "q8_0",
    "q4_0:sink=4",          "fp8",
    "fp8:fp8-format=e5m2,scale=dynamic", "hadamard:bits=3,seed=123456789",
};

}  // namespace

TEST_CASE("profile: write -> read -> write gives identical bytes for every method", "[profile]") {
  for (const char* spec : kAllSpecs) {
    INFO("spec " << spec);
    const Profile p = kvq_test::synthetic_profile(spec);
    const std::string a = write_tmp(p, "a.kvqp");
    const Profile r = read_profile(a);
    CHECK(r.method == p.method);
    CHECK(r.keys == p.keys);
    CHECK(r.values == p.values);
    CHECK(r.options == p.options);
    CHECK(r.layers == p.layers);
    CHECK(r.fingerprint == p.fingerprint);
    CHECK(r.calibration == p.calibration);
    CHECK(r.writer == p.writer);
    CHECK(r.tensors == p.tensors);
    CHECK(r.version.major == 1);
    CHECK(r.version.minor == 0);
    CHECK(r.tensors_sha256 == tensors_sha256(p.tensors));
    const std::string b = write_tmp(r, "b.kvqp");
    CHECK(kvq_test::read_bytes(a) == kvq_test::read_bytes(b));
  }
}

TEST_CASE("profile: writing is deterministic and the file is plain safetensors", "[profile]") {
  const Profile p = kvq_test::synthetic_profile("kvquant:bits=3");
  const std::string a = write_tmp(p, "a.kvqp"), b = write_tmp(p, "b.kvqp");
  CHECK(kvq_test::read_bytes(a) == kvq_test::read_bytes(b));
  // A generic safetensors reader sees the metadata and F32 tensors.
  SafetensorsReader st(a);
  CHECK(st.metadata().at("format") == "kvq-profile");
  CHECK(st.metadata().at("format_version") == "1.0");
  CHECK(st.metadata().at("byte_order") == "little");
  const json doc = json::parse(st.metadata().at("profile"));
  CHECK(doc.at("method") == "kvquant");
  CHECK(doc.at("keys").at("bits") == 3);
  CHECK(doc.at("layers").size() == 3);
  CHECK(st.get("layers.2.k.signposts").shape == std::vector<int64_t>{8});
  CHECK(st.get("layers.0.k.channel_range").dtype == DType::kF32);
  // kvquant at 3 bits with 1% outliers: k/v signposts, key range and thresholds per layer.
  CHECK(st.size() == 3 * 4);
}

TEST_CASE("profile: the digest follows the documented byte stream", "[profile]") {
  // Recompute the stream by hand for one tiny tensor set and compare with a known SHA-256
  // of the same bytes built independently (sha256 of the empty stream for no tensors).
  CHECK(tensors_sha256(FloatTensors{}) ==
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  // One tensor "a", F32, shape [1], value 1.0f: bytes 'a' 0 'F' '3' '2' 0, rank 1, dim 1,
  // nbytes 4, data 00 00 80 3f. Its SHA-256 was computed with Python's hashlib.
  FloatTensors one;
  one["a"] = FloatTensor{{1}, {1.0f}};
  CHECK(tensors_sha256(one) == "4988a3fc46942dd322cde2231b3c1eb6dedb339cdc6ed4d475674e3b014a25cb");
}

TEST_CASE("profile: per-layer overrides round trip and set tensor shapes", "[profile]") {
  Profile p = kvq_test::synthetic_profile("kvquant:bits=3");
  // Mixed precision: layer 1 keys at 4 bits (16 signposts).
  p.layers.assign(3, LayerSchemes{p.keys, p.values});
  p.layers[1].keys.bits = 4;
  kvq_test::SplitMix64 rng{5};
  p.tensors["layers.1.k.signposts"] = kvq_test::random_signposts(rng, 4);
  const std::string path = write_tmp(p);
  const json doc = json::parse(SafetensorsReader(path).metadata().at("profile"));
  CHECK(doc.at("layers")[0].empty());
  CHECK(doc.at("layers")[1] == json::parse(R"({"keys": {"bits": 4}})"));
  const Profile r = read_profile(path);
  CHECK(r.scheme(1, KvKind::kKeys).bits == 4);
  CHECK(r.scheme(0, KvKind::kKeys).bits == 3);
  CHECK(r.scheme(1, KvKind::kValues).bits == 3);
  CHECK(r.layers == p.layers);
  // The shape rule follows the override: 8 signposts at layer 1 are refused.
  p.tensors["layers.1.k.signposts"] = kvq_test::random_signposts(rng, 3);
  const FormatError e = refused(write_unchecked(p, "override.kvqp"), "has shape [8], expected [16]");
  CHECK(e.offset() > 0);
}

TEST_CASE("profile: a profile for another model is refused with one line", "[profile]") {
  const Profile p = kvq_test::synthetic_profile("kivi:bits=2");
  ModelFingerprint other = p.fingerprint;
  CHECK_FALSE(fingerprint_mismatch(p.fingerprint, other).has_value());
  other.kv_heads = 4;
  CHECK(*fingerprint_mismatch(p.fingerprint, other) == "kv_heads: profile has 2, model has 4");
  other = p.fingerprint;
  other.kv_weights_sha256 = std::string(64, 'e');
  const InvalidArgument e = expect_error<InvalidArgument>(
      [&] { check_fingerprint(p.fingerprint, other, "model.kvqp"); });
  const std::string what = e.what();
  CHECK(what == "model.kvqp: profile is for another model: kv_weights_sha256: profile has " +
                    std::string(64, 'b') + ", model has " + std::string(64, 'e'));
  CHECK(what.find('\n') == std::string::npos);
  other = p.fingerprint;
  other.rope_theta = 500000.0;
  CHECK(*fingerprint_mismatch(p.fingerprint, other) == "rope_theta: profile has 10000, model has 500000");
}

TEST_CASE("profile: newer and older major versions are refused naming both versions", "[profile]") {
  const std::string path = write_tmp(kvq_test::synthetic_profile("q8_0"));
  edit_metadata(path, [](auto& m) { m["format_version"] = "2.0"; });
  const UnsupportedError e = expect_error<UnsupportedError>([&] { read_profile(path); });
  CHECK(std::string(e.what()) == path + ": format version 2.0 is newer than this kvq reads (1.x)");
  CHECK_THAT(e.hint(), HasSubstr("upgrade kvq"));
  edit_metadata(path, [](auto& m) { m["format_version"] = "0.9"; });
  CHECK_THAT(std::string(expect_error<UnsupportedError>([&] { read_profile(path); }).what()),
             HasSubstr("format version 0.9 is older than this kvq reads (1.x)"));
  for (const char* bad : {"1", "1.", ".1", "1.0.0", "v1.0", "1.x", " 1.0", "1234567890.0"}) {
    INFO(bad);
    edit_metadata(path, [&](auto& m) { m["format_version"] = bad; });
    refused(path, "is not MAJOR.MINOR");
  }
}

TEST_CASE("profile: a newer minor version with unknown keys and tensors loads", "[profile]") {
  Profile p = kvq_test::synthetic_profile("kvquant:bits=2");
  // Unknown tensors (inside and outside the layers namespace, any dtype) still count in
  // the digest, so a 1.1 writer's digest verifies here.
  std::vector<TensorView> views = tensor_views(p.tensors);
  const uint16_t extra[3] = {1, 2, 3};
  views.push_back(TensorView{"layers.0.k.future_quantity", DType::kF16, {3}, extra, 6, ""});
  views.push_back(TensorView{"future_global", DType::kF16, {3}, extra, 6, ""});
  json doc = json::parse(profile_document(p));
  doc["tensors_sha256"] = tensors_sha256(views);
  doc["future_key"] = {{"x", 1}};
  doc["keys"]["future_field"] = true;
  const fs::path path = kvq_test::scratch_dir("profile") / "minor.kvqp";
  write_safetensors(path.string(), views,
                    {{"format", "kvq-profile"}, {"format_version", "1.7"}, {"byte_order", "little"},
                     {"profile", doc.dump()}, {"future_metadata", "ignored"}});
  const Profile r = read_profile(path.string());
  CHECK(r.version.minor == 7);
  CHECK(r.tensors == p.tensors);  // unknown tensors are not kept
  CHECK(r.keys == p.keys);
}

TEST_CASE("profile: a corrupted tensor byte fails the digest, --no-verify skips it", "[profile]") {
  const Profile p = kvq_test::synthetic_profile("kvquant:bits=3");
  const std::string path = write_tmp(p);
  std::vector<uint8_t> bytes = kvq_test::read_bytes(path);
  const SafetensorsFile st = parse_safetensors(path, bytes.data(), bytes.size());
  const TensorView* sp = nullptr;
  for (const auto& t : st.tensors) {
    if (t.name == "layers.1.v.signposts") sp = &t;
  }
  REQUIRE(sp != nullptr);
  // The lowest mantissa byte of element 2: the value moves by < 1e-6, still ordered.
  const size_t at = static_cast<size_t>(static_cast<const uint8_t*>(sp->data) - bytes.data()) + 8;
  bytes[at] ^= 0x01;
  kvq_test::write_bytes(path, bytes.data(), bytes.size());
  const FormatError e = refused(path, "tensor digest mismatch");
  CHECK_THAT(e.hint(), HasSubstr("--no-verify"));
  const Profile r = read_profile(path, ProfileReadOptions{false});
  CHECK(r.tensors.at("layers.1.v.signposts") != p.tensors.at("layers.1.v.signposts"));
  CHECK(r.tensors.at("layers.0.k.signposts") == p.tensors.at("layers.0.k.signposts"));
}

TEST_CASE("profile: a truncated file is refused at every length, never a crash", "[profile]") {
  const std::string path = write_tmp(kvq_test::synthetic_profile("wkvquant:bits=4"));
  const std::vector<uint8_t> bytes = kvq_test::read_bytes(path);
  uint64_t header = 0;
  std::memcpy(&header, bytes.data(), 8);
  const fs::path cut = kvq_test::scratch_dir("profile-cut") / "cut.kvqp";
  std::vector<size_t> lengths = {0, 1, 7, 8, 9, 8 + header / 2, 8 + header - 1, 8 + header,
                                 8 + header + 1, bytes.size() / 2, bytes.size() - 4, bytes.size() - 1};
  for (size_t n : lengths) {
    INFO("length " << n << " of " << bytes.size());
    kvq_test::write_bytes(cut, bytes.data(), n);
    const FormatError e = expect_error<FormatError>([&] { read_profile(cut.string()); });
    CHECK_THAT(std::string(e.what()), HasSubstr(cut.string()));
  }
}

TEST_CASE("profile: wrong tensor shapes are refused naming tensor, shapes and offset", "[profile]") {
  Profile p = kvq_test::synthetic_profile("kvquant:bits=3");
  p.tensors["layers.2.k.channel_range"] = FloatTensor{{2, 8}, std::vector<float>(16, 0.0f)};
  const FormatError e = refused(write_unchecked(p, "shape.kvqp"),
                                "tensor 'layers.2.k.channel_range' has shape [2, 8], expected [2, 16] "
                                "(keys, layer 2, 3 bits)");
  CHECK(e.offset() >= 8);
  p = kvq_test::synthetic_profile("fp8");
  p.tensors["layers.0.v.fp8_scale"] = FloatTensor{{1, 2}, {1.0f, 1.0f}};
  refused(write_unchecked(p, "shape2.kvqp"), "has shape [1, 2], expected [2]");
}

TEST_CASE("profile: a wrong dtype is refused", "[profile]") {
  Profile p = kvq_test::synthetic_profile("mikv:bits=2");
  std::vector<TensorView> views = tensor_views(p.tensors);
  std::vector<uint16_t> half(16, 0x3c00);
  for (auto& v : views) {
    if (v.name == "layers.1.balancer") {
      v.dtype = DType::kF16;
      v.data = half.data();
      v.nbytes = 32;
    }
  }
  json doc = json::parse(profile_document(p));
  doc["tensors_sha256"] = tensors_sha256(views);
  const fs::path path = kvq_test::scratch_dir("profile-bad") / "dtype.kvqp";
  write_safetensors(path.string(), views,
                    {{"format", "kvq-profile"}, {"format_version", "1.0"}, {"byte_order", "little"},
                     {"profile", doc.dump()}});
  const FormatError e = refused(path.string(), "tensor 'layers.1.balancer' has dtype F16, expected F32");
  CHECK(e.offset() >= 8);
}

TEST_CASE("profile: missing, unused, out-of-range and malformed tensors are refused", "[profile]") {
  Profile p = kvq_test::synthetic_profile("kvquant:bits=3");
  Profile q = p;
  q.tensors.erase("layers.1.v.signposts");
  refused(write_unchecked(q, "missing.kvqp"), "tensor 'layers.1.v.signposts' is missing (needed: values, layer 1, 3 bits)");
  q = p;
  q.tensors["layers.0.balancer"] = FloatTensor{{16}, std::vector<float>(16, 1.0f)};
  refused(write_unchecked(q, "unused.kvqp"), "tensor 'layers.0.balancer' is not used by the scheme");
  q = p;
  q.tensors["layers.3.k.signposts"] = p.tensors.at("layers.0.k.signposts");
  refused(write_unchecked(q, "range.kvqp"), "is for layer 3 but the model has 3 layers");
  q = p;
  q.tensors["layers.01.k.signposts"] = p.tensors.at("layers.0.k.signposts");
  refused(write_unchecked(q, "index.kvqp"), "malformed layer index");
}

TEST_CASE("profile: non-finite and disordered values are refused", "[profile]") {
  const Profile p = kvq_test::synthetic_profile("kvquant:bits=2,qnorm=1");
  struct Case {
    const char* tensor;
    size_t index;
    float value;
    const char* problem;
  };
  const Case cases[] = {
      {"layers.0.k.signposts", 1, std::nanf(""), "element 1 is NaN"},
      {"layers.0.k.signposts", 2, -0.999f, "is not above the previous signpost"},
      {"layers.1.v.signposts", 3, 1.5f, "is outside [-1, 1]"},
      {"layers.2.k.channel_range", 20, -100.0f, "(upper) is below its lower bound"},
      {"layers.0.k.outlier_threshold", 0, INFINITY, "is infinite"},
      {"layers.1.k.qnorm", 0, 0.0f, "(scale) is not > 0"},
  };
  for (const Case& c : cases) {
    INFO(c.tensor << "[" << c.index << "]");
    Profile q = p;
    q.tensors.at(c.tensor).data.at(c.index) = c.value;
    refused(write_unchecked(q, "values.kvqp"), c.problem);
    // The writer refuses the same profile before writing anything.
    const fs::path out = kvq_test::scratch_dir("profile-w") / "never.kvqp";
    expect_error<InvalidArgument>([&] { write_profile(out.string(), q); });
    CHECK_FALSE(fs::exists(out));
  }
  Profile q = kvq_test::synthetic_profile("wkvquant:bits=3");
  q.tensors.at("layers.1.v.smooth_scale").data[4] = -1.0f;
  refused(write_unchecked(q, "scale.kvqp"), "is not > 0");
}

TEST_CASE("profile: header problems are refused with the field named", "[profile]") {
  const std::string path = write_tmp(kvq_test::synthetic_profile("kivi:bits=4"));
  const std::vector<uint8_t> good = kvq_test::read_bytes(path);
  auto reset = [&] { kvq_test::write_bytes(path, good.data(), good.size()); };

  edit_metadata(path, [](auto& m) { m["format"] = "kvq-calibration"; });
  FormatError e = refused(path, "not a kvq profile: metadata format is 'kvq-calibration'");
  CHECK_THAT(e.hint(), HasSubstr("kvq-convert --calib"));
  reset();
  edit_metadata(path, [](auto& m) { m.erase("format"); });
  refused(path, "safetensors metadata has no 'format' entry");
  reset();
  edit_metadata(path, [](auto& m) { m["byte_order"] = "big"; });
  CHECK_THAT(std::string(expect_error<UnsupportedError>([&] { read_profile(path); }).what()),
             HasSubstr("byte order 'big' is not supported"));
  reset();
  edit_metadata(path, [](auto& m) { m["profile"] = "{\"method\": "; });
  refused(path, "metadata 'profile' is not valid JSON");
  reset();
  // Numbers beyond double are nlohmann out_of_range errors, not parse errors: still a
  // FormatError (found by fuzzing), in the document and in the safetensors header.
  edit_metadata(path, [](auto& m) { m["profile"] = "{\"method\": 1e999}"; });
  refused(path, "metadata 'profile' is not valid JSON");
  {
    const std::string header = R"({"__metadata__":{"format":"kvq-profile"},"t":{"dtype":"F32","shape":[1e999],"data_offsets":[0,4]}})";
    std::vector<uint8_t> raw(8);
    const uint64_t n = header.size();
    std::memcpy(raw.data(), &n, 8);
    raw.insert(raw.end(), header.begin(), header.end());
    raw.insert(raw.end(), 4, 0);
    const fs::path big = kvq_test::scratch_dir("profile-bad") / "overflow.kvqp";
    kvq_test::write_bytes(big, raw.data(), raw.size());
    refused(big.string(), "header is not valid JSON");
  }
  reset();
  edit_document(path, [](json& d) { d["method"] = "gptq"; });
  CHECK_THAT(std::string(expect_error<UnsupportedError>([&] { read_profile(path); }).what()),
             HasSubstr("profile method 'gptq' is not one this kvq implements"));
  reset();
  edit_document(path, [](json& d) { d["keys"]["bits"] = 40; });
  refused(path, "profile.keys.bits must be an integer in [1, 16], found 40");
  reset();
  edit_document(path, [](json& d) { d["keys"].erase("axis"); });
  refused(path, "profile.keys.axis is missing");
  reset();
  edit_document(path, [](json& d) { d["fingerprint"]["kv_heads"] = 3; });
  refused(path, "profile.fingerprint.kv_heads (3) must divide heads (4)");
  reset();
  // Below the range as a non-negative literal (nlohmann's unsigned type): once passed the
  // range check and reached heads % kv_heads (found by fuzz/profile).
  edit_document(path, [](json& d) { d["fingerprint"]["kv_heads"] = 0; });
  refused(path, "profile.fingerprint.kv_heads must be an integer in [1, 4], found 0");
  reset();
  edit_document(path, [](json& d) { d["keys"]["bits"] = 0; });
  refused(path, "profile.keys.bits must be an integer in [1, 16], found 0");
  reset();
  edit_document(path, [](json& d) { d["layers"].erase(0); });
  refused(path, "profile.layers has 2 entries but the fingerprint says 3 layers");
  reset();
  edit_document(path, [](json& d) { d["options"]["mikv_high_share"] = 1.5; });
  refused(path, "profile.options.mikv_high_share must be a number in [0.0, 1.0], found 1.5");
  reset();
  edit_document(path, [](json& d) { d["tensors_sha256"] = "xyz"; });
  refused(path, "profile.tensors_sha256 must be 64 lowercase hex digits");
  reset();
  edit_document(path, [](json& d) { d["keys"]["nuq"] = true; d["keys"]["bits"] = 12; });
  refused(path, "NUQ signposts need bits <= 8");
  reset();
  edit_document(path, [](json& d) { d["method"] = "q8_0"; });
  refused(path, "q8_0 is 8-bit, found 4 bits");
}

TEST_CASE("profile: the writer refuses what the reader would", "[profile]") {
  Profile p = kvq_test::synthetic_profile("int:bits=4");
  const fs::path out = kvq_test::scratch_dir("profile-w") / "x.kvqp";
  p.tensors["stray"] = FloatTensor{{1}, {1.0f}};
  CHECK_THAT(std::string(expect_error<InvalidArgument>([&] { write_profile(out.string(), p); }).what()),
             HasSubstr("tensor 'stray' is not part of this profile's scheme"));
  p.tensors.clear();
  p.layers.assign(2, LayerSchemes{p.keys, p.values});
  CHECK_THAT(std::string(expect_error<InvalidArgument>([&] { write_profile(out.string(), p); }).what()),
             HasSubstr("profile has schemes for 2 layers but the model has 3"));
  CHECK_FALSE(fs::exists(out));
}
