// Dataset manifests: the shipped ones parse and name the files dataset names resolve to;
// the local WikiText-2 test file matches its pinned size and sha256 (and so does the
// joined text, the test vector of PROVENANCE.md); a changed byte or size is caught; bad
// manifests are FormatErrors naming the manifest.
#include <filesystem>
#include <string>

#include "datasets/manifest.h"
#include "datasets/spec.h"
#include "datasets/wikitext.h"
#include "formats/error.h"
#include "formats/sha256.h"
#include "tests/catch.h"
#include "tests/support/test_support.h"

using namespace kvq;
using namespace kvq::datasets;
using kvq_test::HasSubstr;

namespace {

std::string manifests() { return (kvq_test::source_dir() / "datasets" / "manifests").string(); }

std::string write_text(const std::string& dir, const std::string& name, const std::string& text) {
  const auto p = kvq_test::scratch_dir(dir) / name;
  kvq_test::write_bytes(p, text.data(), text.size());
  return p.string();
}

}  // namespace

TEST_CASE("shipped manifests parse and cover every named dataset that has one", "[manifest]") {
  for (const auto& n : dataset_names()) {
    if (n.manifest == nullptr) continue;
    const Manifest m = load_manifest(manifests() + "/" + n.manifest);
    INFO(n.name);
    REQUIRE(m.find(n.relative_path) != nullptr);
  }
  const Manifest wt = load_manifest(manifests() + "/wikitext-2-raw-v1.json");
  CHECK(wt.name == "wikitext-2-raw-v1");
  CHECK(wt.archive_bytes == 4721645u);
  const auto* test = wt.find("wikitext-2-raw/wiki.test.raw");
  REQUIRE(test != nullptr);
  CHECK(test->bytes == 1290590u);
  const Manifest c4 = load_manifest(manifests() + "/c4-en-validation-00000.json");
  REQUIRE(c4.files.size() == 1);
  CHECK(c4.files[0].bytes == 40471190u);
  CHECK(c4.files[0].url.find("c4-validation.00000-of-00008.json.gz") != std::string::npos);
}

TEST_CASE("the local WikiText-2 test file and its joined text match the pinned digests", "[manifest][wikitext]") {
  const std::string path = kvq_test::shared_path("datasets/wikitext-2-raw/wiki.test.raw").string();
  const Manifest wt = load_manifest(manifests() + "/wikitext-2-raw-v1.json");
  const FileCheck c = check_file(path, *wt.find("wikitext-2-raw/wiki.test.raw"));
  CHECK(c.status == CheckStatus::kOk);
  CHECK(c.sha256 == "173c87a53759e0201f33e0ccf978e510c2042d7f2cb78229d9a50d79b9e7dd08");
  const std::string text = load_wikitext(path);
  CHECK(text.size() == 1296370);
  CHECK(sha256_hex(text) == "696cca6b65a171b0a358a4be6732cdfdf2dd6164a32e20fd70e3c13fc4dfae83");
  // Unpinned entries are reported as such, never as verified.
  const FileCheck u = check_file(path, *wt.find("wikitext-2-raw/wiki.valid.raw"));
  CHECK(u.status == CheckStatus::kUnpinned);
}

TEST_CASE("check_file catches a changed size and a changed byte", "[manifest]") {
  ManifestFile e;
  e.path = "x.txt";
  e.url = "https://example.invalid/x.txt";
  e.bytes = 5;
  e.sha256 = sha256_hex(std::string("hello"));
  CHECK(check_file(write_text("mf-ok", "x.txt", "hello"), e).status == CheckStatus::kOk);
  const FileCheck size = check_file(write_text("mf-size", "x.txt", "hello!"), e);
  CHECK(size.status == CheckStatus::kSizeMismatch);
  CHECK_THAT(size.message, HasSubstr("size 6 bytes, manifest says 5"));
  const FileCheck byte = check_file(write_text("mf-byte", "x.txt", "hellp"), e);
  CHECK(byte.status == CheckStatus::kDigestMismatch);
  CHECK(byte.sha256 == sha256_hex(std::string("hellp")));
  CHECK_THROWS_AS(check_file((kvq_test::scratch_dir("mf-missing") / "none").string(), e), IoError);
}

TEST_CASE("bad manifests are FormatErrors naming the manifest", "[manifest][errors]") {
  const std::string bad_json = write_text("m1", "m.json", "{\"name\": ");
  CHECK_THROWS_AS(load_manifest(bad_json), FormatError);
  CHECK_THROWS_WITH(load_manifest(bad_json), HasSubstr(bad_json) && HasSubstr("invalid JSON"));
  const std::string no_files = write_text("m2", "m.json", "{\"name\": \"x\", \"files\": []}");
  CHECK_THROWS_WITH(load_manifest(no_files), HasSubstr("\"files\" must be a non-empty array"));
  const std::string bad_digest =
      write_text("m3", "m.json", "{\"name\": \"x\", \"files\": [{\"path\": \"a\", \"url\": \"u\", \"sha256\": \"ABC\"}]}");
  CHECK_THROWS_WITH(load_manifest(bad_digest), HasSubstr("not 64 lowercase hex digits"));
  const std::string no_source = write_text("m4", "m.json", "{\"name\": \"x\", \"files\": [{\"path\": \"a\"}]}");
  CHECK_THROWS_WITH(load_manifest(no_source), HasSubstr("neither a url nor an archive member"));
  const std::string neg = write_text("m5", "m.json", "{\"name\": \"x\", \"files\": [{\"path\": \"a\", \"url\": \"u\", \"bytes\": -1}]}");
  CHECK_THROWS_WITH(load_manifest(neg), HasSubstr("non-negative integer"));
}

TEST_CASE("dataset specs: paths, names under roots, and clear errors", "[spec]") {
  const std::string shared = kvq_test::shared_path("datasets").string();
  const auto wt = resolve_dataset("wikitext2", {"/nonexistent-root", shared});
  CHECK(wt.name == "wikitext2");
  CHECK(std::filesystem::equivalent(wt.path, shared + "/wikitext-2-raw/wiki.test.raw"));
  CHECK(wt.protocol == Protocol::kWikiText);
  CHECK(wt.manifest == "wikitext-2-raw-v1.json");
  const auto docs = resolve_dataset("kvq-docs-valid", {shared});
  CHECK(docs.protocol == Protocol::kText);
  // An explicit protocol wins over the name's.
  CHECK(resolve_dataset("wikitext2", {shared}, Protocol::kText).protocol == Protocol::kText);
  // A path is taken as is, its protocol inferred from the name.
  const std::string file = write_text("spec", "rows.jsonl", "{\"text\": \"a\"}\n");
  const auto p = resolve_dataset(file, {});
  CHECK(p.path == file);
  CHECK(p.name.empty());
  CHECK(p.protocol == Protocol::kC4);

  const std::string empty_root = kvq_test::scratch_dir("emptyroot").string();
  CHECK_THROWS_AS(resolve_dataset("c4", {empty_root}), IoError);
  CHECK_THROWS_WITH(resolve_dataset("c4", {empty_root}), HasSubstr("c4-validation.00000-of-00008.json.gz"));
  CHECK_THROWS_WITH(resolve_dataset("/no/such/file.txt", {shared}), HasSubstr("not a dataset name"));
  CHECK_THROWS_WITH(resolve_dataset(kvq_test::scratch_dir("specdir").string(), {}), HasSubstr("is a folder"));
}
