// kvq-bench: throughput of the forward pass (a benchmark, not a test). For each backend
// asked for (--backend cpu,cuda): prefill tokens/s over one sequence of --seqlen tokens,
// and decode ms/token for --decode-tokens greedy steps that end at --seqlen, each
// repeated --reps times after --warmup runs; the median is reported with every repetition.
// It prints the machine (CPU model, cores, load average), the date and the git revision,
// because a figure without them cannot be compared.
//
// Adding a backend is adding its name to --backend: rows come from bench_backend() over
// the Backend interface, whatever the device.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "formats/error.h"
#include "lib/backend_factory.h"
#include "lib/model.h"
#include "tools/common/backend_select.h"
#include "tools/common/cli.h"
#include "tools/common/data_paths.h"
#include "tools/common/machine.h"
#include "tools/common/progress.h"
#include "tools/common/report.h"

namespace {

using namespace kvq;
using Clock = std::chrono::steady_clock;

struct Options {
  std::string model;
  std::string backends = "cpu";
  int seqlen = 1024;
  int decode_tokens = 32;
  int reps = 3;
  int warmup = 1;
  int threads = 0;
  uint64_t seed = 1;
  cli::OutputFormat format = cli::OutputFormat::kText;
};

struct BenchRow {
  std::string backend;      // Backend::name()
  std::string phase;        // "prefill" or "decode"
  int context = 0;          // tokens in the cache at the end of the measured work
  int tokens = 0;           // tokens processed per repetition
  std::vector<double> seconds;  // per repetition
  double median_s = 0.0;
  double tokens_per_s = 0.0;
  double ms_per_token = 0.0;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

int32_t argmax(const float* row, int n) {
  return static_cast<int32_t>(std::max_element(row, row + n) - row);
}

std::vector<BenchRow> bench_backend(Backend& be, const Options& o, cli::Progress& progress) {
  const ModelConfig& cfg = be.config();
  if (o.seqlen > cfg.max_position) {
    throw InvalidArgument("--seqlen", std::to_string(o.seqlen) + " is longer than the model's window of " +
                                          std::to_string(cfg.max_position));
  }
  if (o.decode_tokens >= o.seqlen) throw InvalidArgument("--decode-tokens", "must be smaller than --seqlen");
  // Token ids do not change the arithmetic; random ids from a printed seed keep it honest.
  std::mt19937_64 rng(o.seed);
  std::uniform_int_distribution<int32_t> dist(0, cfg.vocab - 1);
  std::vector<int32_t> ids(static_cast<size_t>(o.seqlen));
  for (auto& t : ids) t = dist(rng);

  BenchRow prefill{be.name(), "prefill", o.seqlen, o.seqlen, {}, 0, 0, 0};
  BenchRow decode{be.name(), "decode", o.seqlen, o.decode_tokens, {}, 0, 0, 0};
  be.reset(1, o.seqlen);
  ForwardOptions last;
  last.last_only = true;
  const int total = o.warmup + o.reps;
  const int prompt = o.seqlen - o.decode_tokens;
  for (int r = 0; r < total; ++r) {
    // Prefill: the whole window from an empty cache.
    be.truncate(0, 0);
    auto t0 = Clock::now();
    be.forward(ids, o.seqlen, last);
    const double tp = std::chrono::duration<double>(Clock::now() - t0).count();
    // Decode: prefill seqlen - decode_tokens, then greedy steps up to seqlen.
    be.truncate(0, 0);
    Logits lg = be.forward(std::span<const int32_t>(ids.data(), static_cast<size_t>(prompt)), prompt, last);
    int32_t next = argmax(lg.at(0, 0), lg.vocab);
    t0 = Clock::now();
    for (int s = 0; s < o.decode_tokens; ++s) {
      lg = be.forward(std::span<const int32_t>(&next, 1), 1, last);
      next = argmax(lg.at(0, 0), lg.vocab);
    }
    const double td = std::chrono::duration<double>(Clock::now() - t0).count();
    if (r >= o.warmup) {
      prefill.seconds.push_back(tp);
      decode.seconds.push_back(td);
    }
    progress.update(r + 1, total,
                    be.name() + cli::strf(" prefill %.1f tok/s, decode %.2f ms/token%s", o.seqlen / tp,
                                          1e3 * td / o.decode_tokens, r < o.warmup ? " (warm-up)" : ""),
                    -1);
  }
  progress.finish();
  prefill.median_s = median(prefill.seconds);
  prefill.tokens_per_s = o.seqlen / prefill.median_s;
  prefill.ms_per_token = 1e3 * prefill.median_s / o.seqlen;
  decode.median_s = median(decode.seconds);
  decode.tokens_per_s = o.decode_tokens / decode.median_s;
  decode.ms_per_token = 1e3 * decode.median_s / o.decode_tokens;
  return {prefill, decode};
}

int run(const Options& o) {
  const std::string model_path = o.model.empty() ? cli::default_model_path() : o.model;
  if (model_path.empty()) throw InvalidArgument("--model", "no model given and KVQ_MODEL is not set");
  std::vector<std::string> names;
  {
    std::stringstream ss(o.backends);
    for (std::string n; std::getline(ss, n, ',');) {
      if (!n.empty()) names.push_back(n);
    }
  }
  if (names.empty()) throw InvalidArgument("--backend", "no backend named");
  const auto model = load_model(model_path);
  const int threads = cli::apply_threads(o.threads);
  const std::string date = cli::utc_now();
  const std::string load = cli::load_average();
  std::fprintf(stderr, "kvq-bench: kvq %s\n", cli::build_info_text().c_str());
  std::fprintf(stderr, "  machine  %s, %d cores, %d threads, load average %s\n", cli::cpu_model().c_str(),
               cli::online_cores(), threads, load.c_str());
  std::fprintf(stderr, "  model    %s, seqlen %d, decode %d tokens, %d reps after %d warm-up, seed %llu\n",
               model_path.c_str(), o.seqlen, o.decode_tokens, o.reps, o.warmup,
               static_cast<unsigned long long>(o.seed));

  std::vector<BenchRow> rows;
  for (const auto& n : names) {
    auto be = make_backend(n, model);
    cli::Progress progress(0.0);
    for (auto& r : bench_backend(*be, o, progress)) rows.push_back(std::move(r));
  }
  const std::string load_after = cli::load_average();

  if (o.format == cli::OutputFormat::kJson) {
    nlohmann::ordered_json j;
    j["tool"] = "kvq-bench";
    j["date"] = date;
    j["kvq"] = cli::build_info();
    j["machine"] = {{"cpu", cli::cpu_model()}, {"cores", cli::online_cores()}, {"threads", threads},
                    {"load_average_before", load}, {"load_average_after", load_after}};
    j["model"] = cli::base_name(model_path);
    j["model_path"] = model_path;
    j["seqlen"] = o.seqlen;
    j["decode_tokens"] = o.decode_tokens;
    j["reps"] = o.reps;
    j["warmup"] = o.warmup;
    j["seed"] = o.seed;
    j["rows"] = nlohmann::ordered_json::array();
    for (const auto& r : rows) {
      j["rows"].push_back({{"backend", r.backend}, {"phase", r.phase}, {"context", r.context}, {"tokens", r.tokens},
                           {"median_s", r.median_s}, {"tokens_per_s", r.tokens_per_s},
                           {"ms_per_token", r.ms_per_token}, {"seconds", r.seconds}});
    }
    std::printf("%s\n", j.dump(2).c_str());
    return 0;
  }
  cli::print_key_values({{"model", cli::base_name(model_path)},
                         {"machine", cli::cpu_model() + ", " + std::to_string(cli::online_cores()) + " cores, " +
                                         std::to_string(threads) + " threads"},
                         {"load average", load + " (before), " + load_after + " (after)"},
                         {"date", date},
                         {"kvq", cli::build_info_text()}});
  std::printf("\n");
  std::vector<std::vector<std::string>> table;
  for (const auto& r : rows) {
    std::string reps;
    for (double s : r.seconds) reps += (reps.empty() ? "" : " ") + cli::strf("%.3f", s);
    table.push_back({r.backend, r.phase, std::to_string(r.context), std::to_string(r.tokens),
                     cli::strf("%.1f", r.tokens_per_s), cli::strf("%.3f", r.ms_per_token), reps});
  }
  cli::print_table({"backend", "phase", "context", "tokens", "tokens/s", "ms/token", "seconds per rep"}, table);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"kvq-bench: forward-pass throughput (prefill tokens/s, decode ms/token) per backend"};
  Options o;
  app.add_option("--model", o.model, "Hugging Face folder or llama2.c .bin (default: $KVQ_MODEL, else the testbed)");
  app.add_option("--backend", o.backends, "Comma-separated backends to measure: cpu, cuda, cuda:N")
      ->capture_default_str();
  app.add_option("--seqlen", o.seqlen, "Prefill length; decode ends at this context")
      ->check(CLI::Range(2, 1 << 24))
      ->capture_default_str();
  app.add_option("--decode-tokens", o.decode_tokens, "Greedy decode steps per repetition")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  app.add_option("--reps", o.reps, "Measured repetitions (median reported)")->check(CLI::Range(1, 1000))->capture_default_str();
  app.add_option("--warmup", o.warmup, "Unmeasured repetitions first")->check(CLI::Range(0, 100))->capture_default_str();
  app.add_option("--seed", o.seed, "Seed of the random token ids")->capture_default_str();
  cli::add_threads_option(app, o.threads);
  cli::add_format_option(app, o.format);
  cli::add_version_flag(app, "kvq-bench");
  return kvq::cli::run("kvq-bench", [&]() -> int {
    if (const auto done = cli::parse(app, argc, argv)) return *done;
    return run(o);
  });
}
