#include "tools/common/cli.h"

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <new>

#include "formats/error.h"
#include "formats/version.h"

namespace kvq::cli {

namespace {

void report(const char* tool, const std::string& message, const std::string& hint) {
  std::fprintf(stderr, "%s: error: %s\n", tool, message.c_str());
  if (!hint.empty()) std::fprintf(stderr, "hint: %s\n", hint.c_str());
}

// Directory of the running executable (Linux), used to find ../shared next to a checkout.
std::filesystem::path exe_dir() {
  std::error_code ec;
  auto p = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::filesystem::path() : p.parent_path();
}

}  // namespace

int run(const char* tool, const std::function<int()>& body) {
  try {
    return body();
  } catch (const CLI::ParseError& e) {
    // Reached only when a tool parses outside CLI11_PARSE; keep CLI11's conventions.
    report(tool, e.what(), "");
    return e.get_exit_code() == 0 ? 0 : 2;
  } catch (const kvq::Error& e) {
    report(tool, e.what(), e.hint());
  } catch (const std::bad_alloc&) {
    report(tool, "out of host memory", "use a shorter --seqlen or fewer --max-windows");
  } catch (const std::exception& e) {
    report(tool, e.what(), "");
  }
  return 1;
}

std::optional<int> parse(CLI::App& app, int argc, char** argv) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help, --version
    throw;
  }
  return std::nullopt;
}

void add_version_flag(CLI::App& app, const char* tool) {
  std::string text = std::string(tool) + " " + kVersion + " (git " + kGitRevision + ", CUDA " +
                     (kHaveCuda ? "on" : "off") + ")";
  app.set_version_flag("--version", text);
}

void add_format_option(CLI::App& app, OutputFormat& format) {
  app.add_option("--format", format, "Output format for results on stdout")
      ->transform(CLI::CheckedTransformer(
          std::map<std::string, OutputFormat>{{"text", OutputFormat::kText},
                                              {"json", OutputFormat::kJson}},
          CLI::ignore_case))
      ->capture_default_str();
}

std::string default_path(const char* env_var, const std::string& shared_relative) {
  if (const char* v = std::getenv(env_var); v != nullptr && *v != '\0') return v;
  namespace fs = std::filesystem;
  // build/tools/kvq-eval -> checkout root is two levels up; ../shared sits beside it.
  const fs::path candidates[] = {
      exe_dir() / ".." / ".." / ".." / "shared" / shared_relative,
      fs::current_path() / ".." / "shared" / shared_relative,
      fs::current_path() / "shared" / shared_relative,
  };
  for (const auto& c : candidates) {
    std::error_code ec;
    if (fs::exists(c, ec)) return fs::weakly_canonical(c).string();
  }
  return "";
}

}  // namespace kvq::cli
