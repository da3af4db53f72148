// Golden files of the profile and calibration formats (tests/data/profiles/): today's
// writer must produce them byte for byte from the same synthetic inputs, and today's
// reader must read them back to those inputs. A change that alters the bytes is a format
// change: bump the version per docs/profile-format.md, then regenerate with
//   tests/data/profiles/regenerate.sh [BUILD_DIR]
// which runs this test with KVQ_REGENERATE_GOLDEN=1 (it then writes instead of comparing).
// The same files seed the fuzz corpus (fuzz/) and feed the kvq-convert CLI tests.
#include <cstdlib>
#include <filesystem>

#include "formats/calibration.h"
#include "formats/fingerprint.h"
#include "formats/profile.h"
#include "formats/profile_convert.h"
#include "tests/catch.h"
#include "tests/formats/profile_fixtures.h"
#include "tests/support/test_support.h"

using namespace kvq;
namespace fs = std::filesystem;

namespace {

bool regenerate() {
  const char* v = std::getenv("KVQ_REGENERATE_GOLDEN");
  return v != nullptr && std::string(v) == "1";
}

fs::path golden_dir() { return kvq_test::source_dir() / "tests" / "data" / "profiles"; }

// Compares the bytes `write` produces with the golden file `name` (or writes it).
template <class Write>
void check_golden(const std::string& name, Write&& write) {
  INFO("golden file " << name);
  if (regenerate()) {
    write((golden_dir() / name).string());
    SUCCEED("regenerated");
    return;
  }
  const fs::path fresh = kvq_test::scratch_dir("golden") / name;
  write(fresh.string());
  REQUIRE(fs::exists(golden_dir() / name));
  CHECK(kvq_test::read_bytes(fresh) == kvq_test::read_bytes(golden_dir() / name));
}

const Calibration& tiny_calibration() {
  static const Calibration c = [] {
    Calibration x = kvq_test::synthetic_calibration(kvq_test::tiny_fingerprint(), 2024, 3);
    x.file_sha256 = std::string(64, 'd');
    return x;
  }();
  return c;
}

struct GoldenProfile {
  const char* file;
  const char* spec;
  bool calibrated;
};
const GoldenProfile kGoldenProfiles[] = {
    {"kvquant-3bit.kvqp", "kvquant:bits=3", true},
    {"kvquant-k4v2-qnorm.kvqp", "kvquant:key-bits=4,value-bits=2,qnorm=1,outliers=5%", true},
    {"wkvquant-4bit.kvqp", "wkvquant:bits=4", true},
    {"mikv-2bit.kvqp", "mikv:bits=2", true},
    {"fp8-e4m3.kvqp", "fp8", true},
    {"kivi-2bit.kvqp", "kivi:bits=2", false},
};

Profile golden_profile(const GoldenProfile& g) {
  const ModelFingerprint fp = kvq_test::tiny_fingerprint();
  return make_profile(parse_profile_spec(g.spec), g.calibrated ? &tiny_calibration() : nullptr, &fp,
                      kvq_test::golden_writer(), nullptr);
}

}  // namespace

TEST_CASE("golden: profiles are written byte for byte and read back", "[golden][profile]") {
  for (const GoldenProfile& g : kGoldenProfiles) {
    const Profile p = golden_profile(g);
    check_golden(g.file, [&](const std::string& path) { write_profile(path, p); });
    if (regenerate()) continue;
    const Profile r = read_profile((golden_dir() / g.file).string());
    CHECK(r.method == p.method);
    CHECK(r.keys == p.keys);
    CHECK(r.values == p.values);
    CHECK(r.options == p.options);
    CHECK(r.fingerprint == p.fingerprint);
    CHECK(r.calibration == p.calibration);
    CHECK(r.tensors == p.tensors);
  }
}

TEST_CASE("golden: a mixed-precision profile (per-layer overrides)", "[golden][profile]") {
  Profile p = golden_profile(kGoldenProfiles[0]);
  p.layers.assign(static_cast<size_t>(p.fingerprint.layers), LayerSchemes{p.keys, p.values});
  p.layers[2].keys.bits = 4;
  p.layers[2].values.bits = 2;
  p.tensors["layers.2.k.signposts"] = tiny_calibration().tensor("layers.2.k.b4.signposts");
  p.tensors["layers.2.v.signposts"] = tiny_calibration().tensor("layers.2.v.b2.signposts");
  check_golden("kvquant-mixed.kvqp", [&](const std::string& path) { write_profile(path, p); });
  if (!regenerate()) CHECK(read_profile((golden_dir() / "kvquant-mixed.kvqp").string()).layers == p.layers);
}

TEST_CASE("golden: calibration files", "[golden][calibration]") {
  const Calibration& c = tiny_calibration();
  check_golden("tiny.kvqc", [&](const std::string& path) { write_calibration(path, c); });
  // A checkpoint of an interrupted run: one layer of three complete.
  const Calibration part = kvq_test::synthetic_calibration(kvq_test::tiny_fingerprint(), 2024, 1);
  check_golden("tiny-partial.kvqc", [&](const std::string& path) { write_calibration(path, part); });
  if (!regenerate()) {
    const Calibration r = read_calibration((golden_dir() / "tiny.kvqc").string());
    CHECK(r.tensors == c.tensors);
    CHECK(r.wkvquant == c.wkvquant);
    CHECK(r.provenance == c.provenance);
    CHECK(read_calibration((golden_dir() / "tiny-partial.kvqc").string()).complete_layers == 1);
  }
}

TEST_CASE("golden: a synthetic calibration for stories260K (input of the CLI tests)", "[golden][calibration]") {
  // The fingerprint is the real model's, so kvq-convert --model and validate accept it;
  // the statistics are synthetic (kvq-calibrate writes real ones).
  const ModelFingerprint fp =
      compute_fingerprint(kvq_test::shared_path("models/stories260K/stories260K.bin").string());
  Calibration c = kvq_test::synthetic_calibration(fp, 260, fp.layers);
  c.provenance.dataset = "synthetic (tests/formats/profile_fixtures.h)";
  check_golden("stories260K-synthetic.kvqc", [&](const std::string& path) { write_calibration(path, c); });
}
