// MappedFile and AtomicFile: mapping contents, empty files, errors naming the file; atomic
// replacement that leaves the destination untouched and no temporary behind on failure.
#include <filesystem>
#include <random>
#include <stdexcept>
#include <sys/stat.h>
#include <unistd.h>

#include "formats/atomic_file.h"
#include "formats/error.h"
#include "formats/mapped_file.h"
#include "tests/catch.h"
#include "tests/formats/expect_error.h"
#include "tests/support/test_support.h"

using namespace kvq;
using kvq_test::expect_error;
using kvq_test::HasSubstr;
namespace fs = std::filesystem;

namespace {

int count_files(const fs::path& dir) {
  int n = 0;
  for (auto it = fs::directory_iterator(dir); it != fs::directory_iterator(); ++it) ++n;
  return n;
}

}  // namespace

TEST_CASE("MappedFile maps the bytes of a file", "[file_io]") {
  const fs::path dir = kvq_test::scratch_dir("mapped");
  std::mt19937_64 rng(kvq_test::test_seed(3));
  std::vector<uint8_t> data(4097);
  for (auto& b : data) b = static_cast<uint8_t>(rng());
  kvq_test::write_bytes(dir / "a.bin", data.data(), data.size());
  MappedFile m((dir / "a.bin").string());
  REQUIRE(m.size() == data.size());
  CHECK(std::equal(data.begin(), data.end(), m.data()));
  CHECK(m.path() == (dir / "a.bin").string());

  // Move keeps the mapping valid and empties the source.
  MappedFile moved(std::move(m));
  CHECK(moved.size() == data.size());
  CHECK(moved.bytes()[4096] == data[4096]);
  CHECK(m.size() == 0);  // NOLINT(bugprone-use-after-move): documented moved-from state
  CHECK(m.data() == nullptr);

  kvq_test::write_bytes(dir / "empty.bin", "", 0);
  MappedFile e((dir / "empty.bin").string());
  CHECK(e.size() == 0);
  CHECK(e.bytes().empty());
}

TEST_CASE("MappedFile errors name the file", "[file_io]") {
  const fs::path dir = kvq_test::scratch_dir("mapped-bad");
  const auto e = expect_error<IoError>([&] { MappedFile m((dir / "nope").string()); });
  CHECK_THAT(std::string(e.what()), HasSubstr((dir / "nope").string()));
  CHECK_THAT(std::string(e.what()), HasSubstr("No such file"));
  const auto e2 = expect_error<IoError>([&] { MappedFile m(dir.string()); });
  CHECK_THAT(std::string(e2.what()), HasSubstr("not a regular file"));
}

TEST_CASE("write_file_atomic replaces the destination", "[file_io]") {
  const fs::path dir = kvq_test::scratch_dir("atomic");
  const std::string p = (dir / "out.txt").string();
  write_file_atomic(p, std::string_view("first"));
  CHECK(kvq_test::read_bytes(p) == std::vector<uint8_t>{'f', 'i', 'r', 's', 't'});
  // Bigger than the 1 MiB buffer, in mixed small and large writes.
  std::vector<uint8_t> big(3 * 1024 * 1024 + 7);
  std::mt19937_64 rng(kvq_test::test_seed(11));
  for (auto& b : big) b = static_cast<uint8_t>(rng());
  write_file_atomic(p, [&](AtomicFile& f) {
    f.write(big.data(), 5);
    f.write(big.data() + 5, 2 * 1024 * 1024);
    f.write(big.data() + 5 + 2 * 1024 * 1024, big.size() - 5 - 2 * 1024 * 1024);
    CHECK(f.bytes_written() == big.size());
  });
  CHECK(kvq_test::read_bytes(p) == big);
  CHECK(count_files(dir) == 1);
  // A mapping of the old file stays valid across the replacement (rename, new inode).
  MappedFile old(p);
  write_file_atomic(p, std::string_view("x"));
  CHECK(old.size() == big.size());
  CHECK(std::equal(big.begin(), big.end(), old.data()));
  // The new file gets the usual create mode (0666 & ~umask), not mkstemp's 0600.
  const mode_t mask = ::umask(0);
  ::umask(mask);
  const auto perms = fs::status(p).permissions();
  CHECK(static_cast<unsigned>(perms) == (0666u & ~static_cast<unsigned>(mask)));
}

TEST_CASE("write_file_atomic leaves the destination untouched on failure", "[file_io]") {
  const fs::path dir = kvq_test::scratch_dir("atomic-fail");
  const std::string p = (dir / "keep.txt").string();
  write_file_atomic(p, std::string_view("original"));

  SECTION("the writer throws half-way") {
    CHECK_THROWS_AS(write_file_atomic(p,
                                      [](AtomicFile& f) {
                                        f.write(std::string(2 << 20, 'z'));  // flushed to disk
                                        throw std::runtime_error("interrupted");
                                      }),
                    std::runtime_error);
  }
  SECTION("destroyed without commit") {
    AtomicFile f(p);
    f.write(std::string_view("partial"));
    CHECK(fs::exists(f.temp_path()));
    CHECK(fs::path(f.temp_path()).parent_path() == dir);
  }
  SECTION("explicit discard, then commit is refused") {
    AtomicFile f(p);
    f.write(std::string_view("partial"));
    f.discard();
    CHECK_FALSE(fs::exists(f.temp_path()));
    CHECK_THROWS_AS(f.commit(), IoError);
  }
  SECTION("rename fails: destination is a non-empty folder") {
    const std::string d = (dir / "folder").string();
    fs::create_directories(dir / "folder" / "inside");
    const auto e = expect_error<IoError>([&] { write_file_atomic(d, std::string_view("x")); });
    CHECK_THAT(std::string(e.what()), HasSubstr(d));
    CHECK(fs::is_directory(d));
    fs::remove_all(d);
  }
  CHECK(kvq_test::read_bytes(p) == std::vector<uint8_t>{'o', 'r', 'i', 'g', 'i', 'n', 'a', 'l'});
  CHECK(count_files(dir) == 1);  // no temporary left
}

TEST_CASE("AtomicFile into a missing folder is an IoError naming the destination", "[file_io]") {
  const fs::path dir = kvq_test::scratch_dir("atomic-missing");
  const std::string p = (dir / "no" / "such" / "out.bin").string();
  const auto e = expect_error<IoError>([&] { write_file_atomic(p, std::string_view("x")); });
  CHECK_THAT(std::string(e.what()), HasSubstr(p));
  CHECK_THAT(std::string(e.what()), HasSubstr("cannot create a temporary file"));
  CHECK_FALSE(fs::exists(dir / "no"));
}
