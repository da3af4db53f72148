// The calibration file (docs/calibration-format.md): round trip with identical bytes,
// determinism, resume (a checkpoint after k layers extended to the full file gives the
// bytes of an uninterrupted run), and the refusals: tensors of incomplete layers, missing
// tensors, inconsistent headers, wrong format, newer major, corrupted digest, truncation.
#include <cstring>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "formats/calibration.h"
#include "formats/error.h"
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

std::string write_tmp(const Calibration& c, const std::string& name = "c.kvqc") {
  const fs::path path = kvq_test::scratch_dir("calib") / name;
  write_calibration(path.string(), c);
  return path.string();
}

std::string write_unchecked(const Calibration& c, const std::string& name) {
  const fs::path path = kvq_test::scratch_dir("calib-bad") / name;
  write_kvq_container(path.string(), kCalibrationFormat, calibration_document(c), c.tensors);
  return path.string();
}

FormatError refused(const std::string& path, const std::string& problem) {
  return kvq_test::expect_file_error<FormatError>(path, problem, [&] { read_calibration(path); });
}

}  // namespace

TEST_CASE("calibration: write -> read -> write gives identical bytes", "[calibration]") {
  const uint64_t seed = kvq_test::test_seed(11);
  for (bool wkv : {true, false}) {
    const Calibration c = kvq_test::synthetic_calibration(kvq_test::tiny_fingerprint(), seed, 3, wkv);
    const std::string a = write_tmp(c, "a.kvqc");
    const Calibration r = read_calibration(a);
    CHECK(r.fingerprint == c.fingerprint);
    CHECK(r.provenance == c.provenance);
    CHECK(r.sink_tokens == c.sink_tokens);
    CHECK(r.outlier_fraction == c.outlier_fraction);
    CHECK(r.outlier_fractions == c.outlier_fractions);
    CHECK(r.nuq_bits == c.nuq_bits);
    CHECK(r.wkvquant == c.wkvquant);
    CHECK(r.complete_layers == 3);
    CHECK(r.tensors == c.tensors);
    CHECK(r.file_sha256.size() == 64);
    CHECK(kvq_test::read_bytes(write_tmp(r, "b.kvqc")) == kvq_test::read_bytes(a));
    CHECK(kvq_test::read_bytes(write_tmp(c, "c.kvqc")) == kvq_test::read_bytes(a));
  }
}

TEST_CASE("calibration: a resumed checkpoint gives the bytes of an uninterrupted run", "[calibration]") {
  const kvq::ModelFingerprint fp = kvq_test::tiny_fingerprint();
  const Calibration full = kvq_test::synthetic_calibration(fp, 3, 3);
  for (int done = 0; done < 3; ++done) {
    INFO("checkpoint after " << done << " layers");
    const Calibration part = kvq_test::synthetic_calibration(fp, 3, done);
    Calibration resumed = read_calibration(write_tmp(part, "part.kvqc"));
    CHECK(resumed.complete_layers == done);
    for (int i = done; i < 3; ++i) {
      for (const auto& [name, t] : full.tensors) {
        if (name.rfind("layers." + std::to_string(i) + ".", 0) == 0) resumed.tensors[name] = t;
      }
      resumed.complete_layers = i + 1;
      write_tmp(resumed, "step.kvqc");  // every intermediate checkpoint is valid
    }
    CHECK(kvq_test::read_bytes(write_tmp(resumed, "resumed.kvqc")) ==
          kvq_test::read_bytes(write_tmp(full, "full.kvqc")));
  }
}

TEST_CASE("calibration: tensors of incomplete layers and missing tensors are refused", "[calibration]") {
  const kvq::ModelFingerprint fp = kvq_test::tiny_fingerprint();
  Calibration part = kvq_test::synthetic_calibration(fp, 5, 1);
  const Calibration full = kvq_test::synthetic_calibration(fp, 5, 3);
  part.tensors["layers.1.k.moments"] = full.tensors.at("layers.1.k.moments");
  refused(write_unchecked(part, "incomplete.kvqc"),
          "tensor 'layers.1.k.moments' is for layer 1 but only 1 layers are complete");
  CHECK_THAT(std::string(expect_error<InvalidArgument>([&] { write_tmp(part); }).what()),
             HasSubstr("is not part of this calibration's layout"));
  Calibration c = full;
  c.tensors.erase("layers.2.v.b3.qnorm");
  refused(write_unchecked(c, "missing.kvqc"), "tensor 'layers.2.v.b3.qnorm' is missing (needed: values, 3 bits, layer 2)");
  c = full;
  c.tensors.at("layers.0.k.outlier_threshold").shape = {2, 3, 16};
  refused(write_unchecked(c, "shape.kvqc"), "has shape [2, 3, 16], expected [3, 2, 16]");
  c = full;
  c.tensors.at("layers.1.q.post_rope_absmax").data[5] = -1.0f;
  refused(write_unchecked(c, "absmax.kvqc"), "is negative");
  c = full;
  c.tensors.at("layers.1.k.moments").data[1] = -0.5f;
  refused(write_unchecked(c, "moments.kvqc"), "(standard deviation) is negative");
}

TEST_CASE("calibration: inconsistent headers are refused", "[calibration]") {
  const Calibration full = kvq_test::synthetic_calibration(kvq_test::tiny_fingerprint(), 9, 3);
  Calibration c = full;
  c.outlier_fraction = 0.02;
  refused(write_unchecked(c, "frac.kvqc"), "outlier_fraction 0.02 is not among outlier_fractions");
  c = full;
  c.outlier_fractions = {0.01, 0.001, 0.05};
  refused(write_unchecked(c, "order.kvqc"), "outlier_fractions must increase");
  c = full;
  c.nuq_bits = {2, 9};
  refused(write_unchecked(c, "bits.kvqc"), "nuq_bits entry 9 not in [1, 8]");
  c = full;
  c.wkvquant->group = 3;
  refused(write_unchecked(c, "group.kvqc"), "wkvquant.group 3 must divide head_dim 8");
  c = full;
  c.complete_layers = 4;
  refused(write_unchecked(c, "layers.kvqc"), "calibration.complete_layers must be an integer in [0, 3], found 4");
}

TEST_CASE("calibration: wrong format, newer major, corrupted digest, truncation", "[calibration]") {
  const Calibration c = kvq_test::synthetic_calibration(kvq_test::tiny_fingerprint(), 13, 3);
  const std::string path = write_tmp(c);
  std::vector<uint8_t> bytes = kvq_test::read_bytes(path);

  // A profile is not a calibration file, and the message says what it is.
  const fs::path prof = kvq_test::scratch_dir("calib") / "p.kvqp";
  write_profile(prof.string(), kvq_test::synthetic_profile("kivi:bits=2"));
  const FormatError e = expect_error<FormatError>([&] { read_calibration(prof.string()); });
  CHECK_THAT(std::string(e.what()), HasSubstr("not a kvq calibration file: metadata format is 'kvq-profile'"));

  SafetensorsFile f = parse_safetensors(path, bytes.data(), bytes.size());
  f.metadata["format_version"] = "3.1";
  const fs::path newer = kvq_test::scratch_dir("calib") / "newer.kvqc";
  write_safetensors(newer.string(), f.tensors, f.metadata);
  CHECK(std::string(expect_error<UnsupportedError>([&] { read_calibration(newer.string()); }).what()) ==
        newer.string() + ": format version 3.1 is newer than this kvq reads (1.x)");

  // Flip the last data byte (the high byte of some tensor's last float: its sign).
  bytes.back() ^= 0x80;
  const fs::path bad = kvq_test::scratch_dir("calib") / "flip.kvqc";
  kvq_test::write_bytes(bad, bytes.data(), bytes.size());
  refused(bad.string(), "tensor digest mismatch");

  bytes.back() ^= 0x80;
  for (size_t n : {size_t{0}, size_t{5}, size_t{8}, bytes.size() / 3, bytes.size() - 1}) {
    INFO("length " << n);
    kvq_test::write_bytes(bad, bytes.data(), n);
    expect_error<FormatError>([&] { read_calibration(bad.string()); });
  }
}
