// What every kvq command-line tool shares: the one-line error report and exit codes
// (0 ok, 1 runtime failure, 2 usage error), --version, and the output format switch.
#pragma once

#include <functional>
#include <optional>
#include <string>

#include <CLI/CLI.hpp>

namespace kvq::cli {

enum class OutputFormat { kText, kJson };

// Runs `body` and turns exceptions into `TOOL: error: ...` on stderr (plus `hint: ...`)
// and an exit code. CLI11 parse errors and --help are handled the CLI11 way (exit 2 / 0).
int run(const char* tool, const std::function<int()>& body);

// Parses the command line the way every kvq tool does: returns an exit code when the tool
// should stop at once (--help, --version: CLI11 printed them, 0), nullopt to go on; a
// usage error is rethrown as the CLI::ParseError, which run() reports as `TOOL: error:` and
// exit code 2. Call it inside run()'s body.
std::optional<int> parse(CLI::App& app, int argc, char** argv);

// Adds --version (prints "TOOL VERSION (git REV, CUDA on|off)" and exits 0).
void add_version_flag(CLI::App& app, const char* tool);

// Adds --format text|json bound to `format`.
void add_format_option(CLI::App& app, OutputFormat& format);

// First existing path among `env_var`'s value and the fallbacks (relative to the
// executable's repository checkout and to the current directory); "" if none exists.
std::string default_path(const char* env_var, const std::string& shared_relative);

}  // namespace kvq::cli
