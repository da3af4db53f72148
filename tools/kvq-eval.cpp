// kvq-eval: evaluates a model on a dataset, with or without simulated KV quantization.
// Tasks: ppl; kld (exact per-token KL against the unquantized pass, window by window);
// passkey and lines (datasets/retrieval.h, greedy, seeded prompts shared by every method);
// longbench (datasets/longbench.h: LongBench v1 task files, greedy, the official metric per
// task). kld/passkey/lines/longbench always print the compare table with the fp16 row.
// Every compare row also reports memory and speed: KV bytes/token and effective bits from
// the codec caches' exact bytes, forward tokens per second of forward time, the peak GPU
// memory in use during the row (cudaMemGetInfo after every forward call; n/a on the CPU),
// and with --memory-budget the longest context that fits (datasets/kv_memory.h states the
// formula). --task ppl is the perplexity protocol of
// GPTQ / KVQuant / KIVI (datasets/perplexity.h) on WikiText-2, C4 or any text file, on
// the CPU reference backend. The tool parses, prints and calls the libraries; all the
// logic (readers, protocols, windows, the evaluator) is in datasets/ and lib/.
//
//   kvq-eval --task ppl --model DIR|FILE --dataset PATH|NAME --seqlen N [--max-windows N]
//            [--tokenizer PATH] [--protocol wikitext|text|c4] [--backend cpu|cuda|auto]
//            [--threads N] [--batch N] [--format text|json]
//            [--kv SPEC | --profile FILE.kvqp [--no-verify]] [--poq]   simulated KV quantization
//            (a profile must carry this model's fingerprint)
//            [--compare fp16|SPEC ...] [--plot FILE.svg] [--max-ppl-increase 1%]
//            [--memory-budget 80GiB]
//   kvq-eval --task longbench --longbench-dir DIR [--tasks a,b] [--config DIR]
//            [--max-rows N] [--seqlen WINDOW] [--max-new-tokens CAP] [--compare ...]
//
// --kv runs the papers' protocol: every window is one forward pass from an empty cache with
// K/V quantized then dequantized by lib/codecs/sim_observer (--poq: past-only, the diagonal
// stays at full precision). Compare mode runs every --compare method on the same windows
// and prints one table (datasets/compare.h); "fp16" is the unquantized reference row.
// Exit codes: 0 ok, 1 runtime failure, 2 usage error, 3 a --max-* threshold failed (the
// results are still printed; each failing row and metric is named on stderr). 3 and not 1
// so that a CI script can tell "the quantization regressed" from "the run broke".
//
// Output: the effective configuration on stderr first, then progress lines on stderr, the
// results on stdout (a table, or one JSON object with --format json).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "datasets/compare.h"
#include "datasets/eval_tokens.h"
#include "datasets/manifest.h"
#include "datasets/perplexity.h"
#include "datasets/protocol.h"
#include "datasets/spec.h"
#include "datasets/retrieval.h"
#include "datasets/kld.h"
#include "datasets/kv_memory.h"
#include "datasets/longbench.h"
#include "datasets/metrics.h"
#include "datasets/windows.h"
#include "formats/error.h"
#include "formats/fingerprint.h"
#include "formats/profile.h"
#include "formats/tokenizer.h"
#include "lib/backend_factory.h"
#include "lib/codecs/codec.h"
#include "lib/codecs/sim_observer.h"
#include "lib/model.h"
#include "tools/common/backend_select.h"
#include "tools/common/cli.h"
#include "tools/common/data_paths.h"
#include "tools/common/progress.h"
#include "tools/common/report.h"
#include "tools/common/svg_plot.h"

namespace {

using namespace kvq;
namespace ds = kvq::datasets;

struct Options {
  std::string task = "ppl";
  std::string model;
  std::string dataset;
  std::string tokenizer;
  std::string protocol;  // "" = from the dataset
  int seqlen = 0;        // 0 = min(model window, 2048); longbench: the window, 0 = the model's
  int64_t max_windows = -1;
  int batch = 1;
  int threads = 0;
  std::string backend = "auto";
  cli::OutputFormat format = cli::OutputFormat::kText;
  std::string kv;                    // "" = no simulated quantization
  bool poq = false;
  std::string profile;
  bool no_verify = false;
  std::vector<std::string> compare;  // compare mode when non-empty
  std::string plot;
  std::string max_ppl_increase;
  std::string max_kld, min_top1, min_passkey, min_lines;
  int context = 0;          // passkey prompt tokens (0: seqlen - max_new_tokens)
  int lines = 17;
  int trials = 10;
  uint64_t seed = 1234;
  int max_new_tokens = 10;
  bool max_new_tokens_given = false;  // longbench: a cap on dataset2maxlen only when given
  std::string longbench_dir;
  std::vector<std::string> longbench_tasks;  // empty: every *.jsonl in the folder
  std::string longbench_config;              // "" = <data root>/longbench/config
  int64_t max_rows = -1;
  std::string memory_budget;
};

constexpr int kExitThreshold = 3;

// One KV method to evaluate: "fp16" (no observer: the model's own precision) or a codec
// spec run through SimQuantObserver.
struct KvRun {
  std::string label;
  std::optional<codecs::CodecSpec> spec;  // keys (and values unless v_spec)
  std::optional<codecs::CodecSpec> v_spec;
  codecs::SimOptions sim;

  std::unique_ptr<codecs::SimQuantObserver> observer(const ModelConfig& cfg) const {
    if (v_spec) return std::make_unique<codecs::SimQuantObserver>(cfg, *spec, *v_spec, sim);
    return std::make_unique<codecs::SimQuantObserver>(cfg, *spec, sim);
  }
};

// The evaluation backend with meters: per compare row, the tokens pushed through forward()
// and forward_nll() and the seconds spent inside them (tokens/s = forward tokens per second
// of forward time: prefill and decode steps alike, the simulated quantization included,
// tokenization and scoring not), and on a GPU the device memory in use sampled after every
// reset and forward call (its maximum is the row's peak). Calls made while no row is
// selected (kld's shared reference pass) are not counted.
class MeteredBackend final : public Backend {
 public:
  struct Meter {
    int64_t tokens = 0;
    double seconds = 0.0;
    size_t peak_bytes = 0;
    bool gpu = false;
    double tokens_per_s() const { return seconds > 0 ? static_cast<double>(tokens) / seconds : ds::kNotMeasured; }
    double peak() const { return gpu ? static_cast<double>(peak_bytes) : ds::kNotMeasured; }
  };

  MeteredBackend(std::function<std::unique_ptr<Backend>()> make, size_t rows)
      : make_(std::move(make)), inner_(make_()), meters_(rows) {}

  // Counts the following calls into row i (-1: none).
  void select(int i) {
    current_ = i;
    sample();
  }
  const Meter& meter(size_t i) const { return meters_.at(i); }
  bool on_gpu() const { return inner_->name().rfind("cuda", 0) == 0; }
  // Destroys the backend and makes a fresh one, so that a row's GPU peak holds its own
  // buffers only (the CUDA backend's buffers grow and are kept until it is destroyed).
  void renew() {
    inner_.reset();
    inner_ = make_();
    sample();
  }

  std::string name() const override { return inner_->name(); }
  const ModelConfig& config() const override { return inner_->config(); }
  void reset(int batch, int max_tokens) override {
    inner_->reset(batch, max_tokens);
    sample();
  }
  int batch() const override { return inner_->batch(); }
  int max_tokens() const override { return inner_->max_tokens(); }
  int cache_len(int slot) const override { return inner_->cache_len(slot); }
  void truncate(int slot, int len) override { inner_->truncate(slot, len); }
  Logits forward(std::span<const int32_t> tokens, int n, const ForwardOptions& opt = {}) override {
    const auto t0 = std::chrono::steady_clock::now();
    Logits out = inner_->forward(tokens, n, opt);
    count(tokens.size(), t0);
    return out;
  }
  NllResult forward_nll(std::span<const int32_t> tokens, std::span<const int32_t> targets, int n,
                        const ForwardOptions& opt = {}) override {
    const auto t0 = std::chrono::steady_clock::now();
    NllResult out = inner_->forward_nll(tokens, targets, n, opt);
    count(tokens.size(), t0);
    return out;
  }

 private:
  void count(size_t tokens, std::chrono::steady_clock::time_point t0) {
    if (current_ < 0) return;
    Meter& m = meters_.at(static_cast<size_t>(current_));
    m.tokens += static_cast<int64_t>(tokens);
    m.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    sample();
  }
  void sample() {
    if (current_ < 0) return;
    size_t used = 0, total = 0;
    if (!gpu_memory_in_use(*inner_, used, total)) return;
    Meter& m = meters_.at(static_cast<size_t>(current_));
    m.gpu = true;
    m.peak_bytes = std::max(m.peak_bytes, used);
  }

  std::function<std::unique_ptr<Backend>()> make_;
  std::unique_ptr<Backend> inner_;
  std::vector<Meter> meters_;
  int current_ = -1;
};

std::string group_opt(int g) { return g > 0 ? ",group=" + std::to_string(g) : std::string(); }

// The --kv spec that applies one kind's scheme of a profile (docs/profile-format.md,
// "Methods"), and the calibrated tensors of one layer as codec parameters.
std::string scheme_spec(const Profile& p, const KindScheme& s) {
  const std::string b = std::to_string(s.bits);
  switch (p.method) {
    case Method::kInt:
      return "int" + b + ":axis=" + (s.axis == QuantAxis::kChannel ? "channel" : "token") + group_opt(s.group) +
             ",sym=" + (s.symmetric ? "1" : "0") + ",stage=" + (s.pre_rope ? "pre" : "post");
    case Method::kKivi:
      return "kivi:bits=" + b + group_opt(s.group) + ",residual=" + std::to_string(p.options.residual);
    case Method::kKvquant:
      return "kvquant:bits=" + b + ",outliers=" + cli::strf("%.17g", s.outlier_fraction) +
             ",sink=" + std::to_string(p.options.sink_tokens) + ",qnorm=" + (s.qnorm ? "1" : "0");
    case Method::kWkvquant:
      return "wkvquant:bits=" + b + group_opt(s.group) + ",poq=" + (p.options.poq ? "1" : "0");
    case Method::kQ8_0: return "q8_0";
    case Method::kQ4_0: return "q4_0";
    case Method::kFp8: return std::string("fp8:") + (p.options.fp8_format == Fp8Format::kE5M2 ? "e5m2" : "e4m3");
    case Method::kHadamard: return "hadamard:bits=" + b + ",seed=" + std::to_string(p.options.hadamard_seed);
    case Method::kMikv:
      // The codec has no sink tokens: a profile asking for them cannot be honoured.
      if (p.options.sink_tokens > 0) break;
      return "mikv:hi=" + std::string(p.options.mikv_high == MikvHigh::kFp16 ? "fp16" : "int8") + ",lo=int" + b +
             ",budget=" + cli::strf("%.17g", p.options.mikv_high_share) +
             ",recent=" + std::to_string(p.options.mikv_recent) + ",balance=" + (p.options.balancer ? "1" : "0");
  }
  throw UnsupportedError("--profile", std::string(method_name(p.method)) + " profiles with sink tokens cannot be simulated",
                         "MiKV keeps no sink tokens: convert with sink=0");
}

codecs::CodecParams layer_params(const Profile& p, int layer, KvKind kind) {
  codecs::CodecParams c;
  auto get = [&](const char* q) { return p.find(profile_tensor_name(layer, kind, q)); };
  if (const FloatTensor* t = get("signposts")) c.tensors["lut"] = t->data;
  if (kind == KvKind::kKeys && p.method == Method::kKvquant) {
    if (const FloatTensor* t = get("channel_range")) {
      const size_t d = t->data.size() / 2;
      c.tensors["k_lo"].assign(t->data.begin(), t->data.begin() + static_cast<std::ptrdiff_t>(d));
      c.tensors["k_hi"].assign(t->data.begin() + static_cast<std::ptrdiff_t>(d), t->data.end());
    }
  }
  if (const FloatTensor* t = get("qnorm")) {
    c.numbers["qnorm_scale"] = t->data.at(0);
    c.numbers["qnorm_offset"] = t->data.at(1);
  }
  if (const FloatTensor* t = get("smooth_delta")) c.tensors["delta"] = t->data;
  if (const FloatTensor* t = get("smooth_scale")) c.tensors["s"] = t->data;
  if (const FloatTensor* t = get("fp8_scale")) c.tensors["scale"] = t->data;
  // MiKV's balancer multiplies keys (lib/codecs/mikv.cpp); one tensor per layer.
  if (kind == KvKind::kKeys && p.method == Method::kMikv && p.options.balancer) {
    if (const FloatTensor* t = p.find(profile_balancer_name(layer))) c.tensors["balance"] = t->data;
  }
  return c;
}

// --task kld: exact per-token KL(p_ref || p_quant) with no stored reference. Per window,
// the reference (unquantized) pass runs once and its log-softmax is kept for that window
// only ([seqlen-1, vocab] floats), then every quantized run's pass is compared with it.
// The runs' KL values are kept (8 bytes per token per run) for the median and p99.
// Log-softmax in double over fp32 logits: identical logits give exactly 0.
struct KldRun {
  std::vector<double> kl;
  int64_t top1 = 0;
  double nll = 0.0;
  double bits = 16.0;
};

void log_softmax_rows(const Logits& lg, std::vector<double>& out) {
  out.resize(static_cast<size_t>(lg.n) * lg.vocab);
  for (int i = 0; i < lg.n; ++i) {
    const float* x = lg.at(0, i);
    double m = x[0];
    for (int v = 1; v < lg.vocab; ++v) m = std::max(m, static_cast<double>(x[v]));
    double z = 0.0;
    for (int v = 0; v < lg.vocab; ++v) z += std::exp(static_cast<double>(x[v]) - m);
    const double lz = m + std::log(z);
    double* o = out.data() + static_cast<size_t>(i) * lg.vocab;
    for (int v = 0; v < lg.vocab; ++v) o[v] = static_cast<double>(x[v]) - lz;
  }
}

std::vector<KldRun> run_kld(MeteredBackend& backend, const ModelConfig& cfg, const ds::EvalTokens& tokens, int seqlen,
                            int64_t max_windows, const std::vector<KvRun>& runs) {
  const auto windows = ds::cut_windows(tokens.ids.size(), seqlen, max_windows);
  std::vector<std::unique_ptr<codecs::SimQuantObserver>> obs;
  for (const auto& r : runs) obs.push_back(r.spec ? r.observer(cfg) : nullptr);
  std::vector<KldRun> out(runs.size());
  std::vector<double> ref, q;
  const int n = seqlen - 1;
  cli::Progress progress;
  int64_t done = 0;
  for (const auto& w : windows) {
    const std::span<const int32_t> in(tokens.ids.data() + w.begin, static_cast<size_t>(n));
    const int32_t* target = tokens.ids.data() + w.begin + 1;
    backend.select(-1);  // the shared reference pass belongs to no row
    backend.reset(1, seqlen);
    log_softmax_rows(backend.forward(in, n), ref);
    for (size_t r = 0; r < runs.size(); ++r) {
      backend.select(static_cast<int>(r));
      ForwardOptions fo;
      fo.observer = obs[r].get();
      backend.reset(1, seqlen);
      log_softmax_rows(backend.forward(in, n, fo), q);
      const int V = cfg.vocab;
      for (int i = 0; i < n; ++i) {
        const double* a = ref.data() + static_cast<size_t>(i) * V;
        const double* b = q.data() + static_cast<size_t>(i) * V;
        double kl = 0.0;
        int am = 0, bm = 0;
        for (int v = 0; v < V; ++v) {
          if (a[v] > a[am]) am = v;
          if (b[v] > b[bm]) bm = v;
          kl += std::exp(a[v]) * (a[v] - b[v]);
        }
        out[r].kl.push_back(std::max(kl, 0.0));  // rounding can give -1e-17 for equal rows
        out[r].top1 += am == bm;
        out[r].nll -= b[target[i]];
      }
    }
    progress.update(++done, static_cast<int64_t>(windows.size()), "kld", 0.0);
  }
  progress.finish();
  backend.select(-1);
  for (size_t r = 0; r < runs.size(); ++r)
    if (obs[r]) out[r].bits = obs[r]->stats().bits_per_element();
  return out;
}

// A profile as a simulated run: refused (one line) when it was made for another model or
// uses what the simulation cannot express (per-layer schemes, sinks outside kvquant).
KvRun profile_run(const std::string& path, const Profile& p, const ModelFingerprint& model_fp, const ModelConfig& cfg) {
  check_fingerprint(p.fingerprint, model_fp, path);
  for (const auto& l : p.layers)
    if (!(l.keys == p.keys && l.values == p.values))
      throw UnsupportedError(path, "per-layer schemes cannot be simulated by kvq-eval yet");
  if (p.options.sink_tokens > 0 && p.method != Method::kKvquant)
    throw UnsupportedError(path, "sink tokens are only simulated for kvquant profiles");
  KvRun r;
  r.label = cli::base_name(path);
  r.spec = codecs::parse_codec_spec(scheme_spec(p, p.keys));
  r.v_spec = codecs::parse_codec_spec(scheme_spec(p, p.values));
  for (int l = 0; l < cfg.n_layers; ++l) {
    r.sim.k_params.push_back(layer_params(p, l, KvKind::kKeys));
    r.sim.v_params.push_back(layer_params(p, l, KvKind::kValues));
  }
  return r;
}

struct KvRunResult {
  ds::PerplexityResult ppl;
  double accuracy = ds::kNotMeasured;  // passkey / lines
  double bits_per_element = 16.0;
  double kv_bytes_per_token = 0.0;
};

// Evaluates one method on the windows of popt. Bits per element come from the bytes the
// simulated caches held (metadata included); KV bytes per token = K+V of every layer.
KvRunResult run_one(Backend& backend, const ModelConfig& cfg, const ds::EvalTokens& tokens,
                    ds::PerplexityOptions popt, const KvRun& run) {
  KvRunResult out;
  const double elems_per_token = 2.0 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim;
  std::unique_ptr<codecs::SimQuantObserver> obs;
  if (run.spec) {
    obs = run.observer(cfg);
    popt.observer = obs.get();
  }
  out.ppl = ds::evaluate_perplexity(backend, tokens.ids, popt);
  if (obs) out.bits_per_element = obs->stats().bits_per_element();
  out.kv_bytes_per_token = out.bits_per_element * elems_per_token / 8.0;
  return out;
}

// Where the tokenizer comes from: --tokenizer, else the model folder. llama2.c .bin files
// hold no tokenizer.
std::string tokenizer_path(const Options& o, const std::string& model_path) {
  if (!o.tokenizer.empty()) return o.tokenizer;
  std::error_code ec;
  if (std::filesystem::is_directory(model_path, ec)) return model_path;
  throw InvalidArgument(model_path, "a llama2.c checkpoint carries no tokenizer",
                        "pass --tokenizer (for stories260K: tok512.bin beside it)");
}

// For standard dataset names: compares the local file with its manifest (size, sha256).
// A copy that differs still runs (it may be a deliberate edit) but is flagged, because its
// numbers are not comparable with published ones.
std::string check_against_manifest(const ds::ResolvedDataset& d) {
  if (d.manifest.empty()) return "";
  for (const auto& n : ds::dataset_names()) {
    if (d.name != n.name) continue;
    const std::string mpath = ds::manifest_dir() + "/" + d.manifest;
    std::error_code ec;
    if (!std::filesystem::exists(mpath, ec)) return "manifest " + mpath + " not found; not verified";
    const ds::Manifest m = ds::load_manifest(mpath);
    const ds::ManifestFile* entry = m.find(n.relative_path);
    if (entry == nullptr) return "no manifest entry for " + std::string(n.relative_path);
    const ds::FileCheck c = ds::check_file(d.path, *entry);
    if (c.status == ds::CheckStatus::kSizeMismatch || c.status == ds::CheckStatus::kDigestMismatch) {
      std::fprintf(stderr, "kvq-eval: warning: %s: %s (%s): results are not comparable with published ones\n",
                   d.path.c_str(), c.message.c_str(), mpath.c_str());
    }
    return c.message;
  }
  return "";
}

void warm_up(MeteredBackend& backend, int n) {
  backend.select(-1);
  backend.reset(1, n);
  const int32_t id = backend.config().bos_id >= 0 ? backend.config().bos_id : 0;
  const std::vector<int32_t> ids(static_cast<size_t>(n), id);
  ForwardOptions fo;
  fo.last_only = true;
  (void)backend.forward(ids, n, fo);
}

// --task longbench inputs, all read and checked before the configuration is printed: the
// config (dataset2prompt.json, dataset2maxlen.json) and every task file's rows.
struct LongBenchInputs {
  struct Task {
    std::string name;  // the rows' "dataset" field
    std::string path;
    std::vector<ds::LongBenchRow> rows;
  };
  std::string config_dir;
  ds::LongBenchConfig config;
  std::vector<Task> tasks;
  int64_t total_rows() const {
    int64_t n = 0;
    for (const auto& t : tasks) n += static_cast<int64_t>(t.rows.size());
    return n;
  }
};

// Generation length of a task: dataset2maxlen, capped by --max-new-tokens when given.
int lb_max_new(const ds::LongBenchConfig& cfg, const std::string& task, const Options& o) {
  const int m = cfg.max_new_tokens.at(task);
  return o.max_new_tokens_given ? std::min(m, o.max_new_tokens) : m;
}

LongBenchInputs read_longbench_inputs(const Options& o) {
  namespace fs = std::filesystem;
  if (o.longbench_dir.empty())
    throw InvalidArgument("--longbench-dir", "--task longbench needs a folder of LongBench task files (TASK.jsonl)",
                          "pass --longbench-dir DIR (tests/data/longbench holds a small fixture)");
  std::error_code ec;
  if (!fs::is_directory(o.longbench_dir, ec))
    throw InvalidArgument("--longbench-dir", o.longbench_dir + ": not a folder");
  LongBenchInputs in;
  in.config_dir = o.longbench_config;
  if (in.config_dir.empty()) {
    for (const auto& root : cli::data_roots()) {
      const fs::path c = fs::path(root) / "longbench" / "config";
      if (fs::exists(c / "dataset2prompt.json", ec)) {
        in.config_dir = c.string();
        break;
      }
    }
    if (in.config_dir.empty())
      throw InvalidArgument("--config", "no longbench/config/dataset2prompt.json under $KVQ_DATA or ../shared/datasets",
                            "pass --config DIR (the folder of dataset2prompt.json and dataset2maxlen.json)");
  }
  in.config = ds::read_longbench_config(in.config_dir);
  std::vector<std::string> paths;
  if (!o.longbench_tasks.empty()) {
    for (const auto& t : o.longbench_tasks) paths.push_back((fs::path(o.longbench_dir) / (t + ".jsonl")).string());
  } else {
    for (const auto& e : fs::directory_iterator(o.longbench_dir, ec))
      if (e.is_regular_file() && e.path().extension() == ".jsonl") paths.push_back(e.path().string());
    std::sort(paths.begin(), paths.end());
    if (paths.empty()) throw InvalidArgument("--longbench-dir", o.longbench_dir + ": no *.jsonl task files");
  }
  for (const auto& path : paths) {
    LongBenchInputs::Task t;
    t.path = path;
    t.rows = ds::read_longbench_jsonl(path, o.max_rows);
    t.name = t.rows.front().dataset;
    try {
      (void)ds::metric_for_task(t.name);  // unsupported (Chinese) or unknown tasks: one error now
    } catch (const UnsupportedError& e) {
      throw UnsupportedError(path, e.message(), e.hint());
    } catch (const InvalidArgument& e) {
      throw InvalidArgument(path, e.message(), e.hint());
    }
    if (!in.config.prompts.count(t.name) || !in.config.max_new_tokens.count(t.name))
      throw InvalidArgument(path, "task \"" + t.name + "\" has no prompt or generation length in " + in.config_dir);
    for (const auto& other : in.tasks)
      if (other.name == t.name) throw InvalidArgument(path, "task \"" + t.name + "\" also in " + other.path);
    in.tasks.push_back(std::move(t));
  }
  return in;
}

// The "longbench" object of --format json: inputs, and per method every task's score,
// metric, rows, truncated rows, generated tokens and time.
nlohmann::json longbench_json(const LongBenchInputs& in, const std::vector<ds::LongBenchResult>& results,
                              const std::vector<KvRun>& runs, int window, const Options& o) {
  nlohmann::json j;
  j["dir"] = o.longbench_dir;
  j["config"] = in.config_dir;
  j["window"] = window;
  j["tasks"] = nlohmann::json::array();
  for (const auto& t : in.tasks)
    j["tasks"].push_back({{"task", t.name},
                          {"file", t.path},
                          {"metric", std::string(ds::metric_name(ds::metric_for_task(t.name)))},
                          {"rows", t.rows.size()},
                          {"max_new_tokens", lb_max_new(in.config, t.name, o)}});
  j["runs"] = nlohmann::json::array();
  for (size_t i = 0; i < results.size(); ++i) {
    nlohmann::json r = {{"method", runs[i].label}, {"average", results[i].average}};
    r["tasks"] = nlohmann::json::array();
    for (const auto& t : results[i].tasks) {
      int64_t generated = 0, prompt = 0;
      for (const auto& row : t.rows) {
        generated += row.generated_tokens;
        prompt += row.prompt_tokens;
      }
      r["tasks"].push_back({{"task", t.task},
                            {"metric", t.metric},
                            {"score", t.score},
                            {"rows", t.rows.size()},
                            {"truncated_rows", t.truncated_rows},
                            {"prompt_tokens", prompt},
                            {"generated_tokens", generated},
                            {"seconds", t.seconds}});
    }
    j["runs"].push_back(r);
  }
  return j;
}

// "ppl,kld" -> {"ppl", "kld"}; duplicates dropped, order kept; empty items are kept (as
// "") so that the validator names them.
std::vector<std::string> split_tasks(const std::string& v) {
  std::vector<std::string> out;
  size_t start = 0;
  while (true) {
    const size_t comma = v.find(',', start);
    std::string t = v.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    if (std::find(out.begin(), out.end(), t) == out.end()) out.push_back(std::move(t));
    if (comma == std::string::npos) return out;
    start = comma + 1;
  }
}

// A short plot label: "kivi:bits=2,group=32,residual=128" -> "kivi-2", "mikv:hi=fp16,lo=int2,..."
// -> "mikv-2", "int4:axis=..." -> "int4", "kvquant3.kvqp" -> "kvquant3", "fp8:e4m3" stays; the
// table keeps the full spec.
std::string plot_label(std::string m) {
  std::string suffix;
  if (m.ends_with(" (poq)")) {
    suffix = " (poq)";
    m.resize(m.size() - suffix.size());
  }
  if (m.ends_with(".kvqp")) return std::filesystem::path(m).stem().string() + suffix;
  const size_t colon = m.find(':');
  if (colon == std::string::npos) return m + suffix;
  const std::string name = m.substr(0, colon), opts = "," + m.substr(colon + 1);
  for (const char* key : {",bits=", ",lo=int"}) {  // the bit width, MiKV's low precision
    const size_t b = opts.find(key);
    if (b == std::string::npos) continue;
    const size_t from = b + std::string_view(key).size();
    return name + "-" + opts.substr(from, opts.find(',', from) - from) + suffix;
  }
  if (opts.find('=') == std::string::npos) return m + suffix;  // "fp8:e4m3"
  return name + suffix;
}

// The y value of a compare row for --plot: the task's headline metric.
double plot_metric(const std::string& task, const ds::CompareRow& row) {
  if (task == "kld") return row.kld_mean;
  if (task == "passkey") return row.passkey_acc;
  if (task == "lines") return row.lines_acc;
  if (task == "longbench") return row.longbench_avg;
  return row.ppl;
}

// Prints a compare table (text or JSON), draws --plot with `plot_task`'s metric, and
// checks the thresholds: 0, or kExitThreshold when one failed.
int report_compare(const Options& o, const ds::CompareTable& table, const std::string& plot_task,
                   const nlohmann::json& extra) {
  if (o.format == cli::OutputFormat::kJson) {
    nlohmann::json j = nlohmann::json::parse(ds::format_compare_json(table));
    for (const auto& [k, v] : extra.items()) j[k] = v;
    std::printf("%s\n", j.dump(2).c_str());
  } else {
    std::printf("%s", ds::format_compare_text(table).c_str());
  }
  std::fflush(stdout);
  if (!o.plot.empty()) {
    std::vector<cli::PlotPoint> pts;
    for (const auto& row : table.rows)
      pts.push_back({plot_label(row.method), row.kv_bytes_per_token, plot_metric(plot_task, row), row.reference});
    cli::PlotOptions po;
    if (plot_task == "kld") po.y_label = "mean KL divergence from fp16 (nats/token)";
    if (plot_task == "passkey" || plot_task == "lines") po.y_label = plot_task + " accuracy";
    if (plot_task == "longbench") po.y_label = "LongBench average score (0-100)";
    cli::write_svg_plot(o.plot, pts, po);
    std::fprintf(stderr, "kvq-eval: wrote %s\n", o.plot.c_str());
  }
  ds::Thresholds thresholds;
  if (!o.max_kld.empty()) thresholds.max_kld = ds::parse_fraction(o.max_kld, "--max-kld");
  if (!o.min_passkey.empty()) thresholds.min_passkey = ds::parse_fraction(o.min_passkey, "--min-passkey");
  if (!o.min_lines.empty()) thresholds.min_lines = ds::parse_fraction(o.min_lines, "--min-lines");
  if (!o.min_top1.empty()) thresholds.min_top1 = ds::parse_fraction(o.min_top1, "--min-top1");
  if (!o.max_ppl_increase.empty()) thresholds.max_ppl_increase_pct = ds::parse_percent(o.max_ppl_increase, "--max-ppl-increase");
  const auto failures = ds::check_thresholds(table, thresholds);
  for (const auto& f : failures) std::fprintf(stderr, "kvq-eval: threshold failed: %s\n", f.message().c_str());
  return failures.empty() ? 0 : kExitThreshold;
}

// One task. In compare mode the table is printed, or handed to `collect` (several tasks
// in one invocation: run_tasks merges and prints them).
int run_ppl(const Options& o, ds::CompareTable* collect = nullptr) {
  const std::string model_path = o.model.empty() ? cli::default_model_path() : o.model;
  if (model_path.empty()) {
    throw InvalidArgument("--model", "no model given, KVQ_MODEL is not set and ../shared/models/kvq-testbed-llama2-23m was not found",
                          "pass --model DIR|FILE");
  }
  std::optional<ds::Protocol> protocol;
  if (!o.protocol.empty()) protocol = ds::parse_protocol(o.protocol);  // validated by CLI11

  // Everything that can be wrong with the inputs is checked before the configuration is
  // printed, so a bad input gives exactly one error line.
  const bool longbench = o.task == "longbench";
  const ds::ResolvedDataset dataset =
      longbench ? ds::ResolvedDataset{}
                : ds::resolve_dataset(o.dataset.empty() ? cli::default_dataset_spec() : o.dataset, cli::data_roots(), protocol);
  const LongBenchInputs lb = longbench ? read_longbench_inputs(o) : LongBenchInputs{};
  // -1: no --memory-budget (a plain integer: GCC 12 warns about std::optional here).
  const int64_t budget = o.memory_budget.empty() ? -1 : ds::parse_byte_size(o.memory_budget, "--memory-budget");
  const std::shared_ptr<const Model> model = load_model(model_path);
  const ModelConfig& cfg = model->config();
  const std::unique_ptr<Tokenizer> tok = load_tokenizer(tokenizer_path(o, model_path));
  ds::check_tokenizer_vocab(*tok, model->embedding().shape[0], model_path);
  const int window = cfg.max_position > 0 ? cfg.max_position : 2048;
  const int seqlen = o.seqlen > 0 ? o.seqlen : std::min(window, 2048);
  const std::string text = longbench ? std::string() : ds::load_protocol_text(dataset.path, dataset.protocol);
  const std::string data_check = longbench ? std::string() : check_against_manifest(dataset);
  const int threads = cli::apply_threads(o.threads);
  const size_t n_runs = o.compare.size() + 2;  // an upper bound: fp16 + every --compare, or fp16 + --kv
  const auto backend =
      std::make_unique<MeteredBackend>([&] { return make_backend(o.backend, model); }, n_runs);

  // passkey / lines: greedy retrieval on seeded prompts (datasets/retrieval.h); the
  // dataset's text is the passkey filler, and no perplexity windows are cut.
  const bool retrieval = o.task == "passkey" || o.task == "lines";
  const ds::EvalTokens tokens =
      retrieval || longbench ? ds::EvalTokens{} : ds::tokenize_for_eval(text, dataset.protocol, *tok, seqlen);
  std::vector<ds::RetrievalSample> samples;
  if (o.task == "passkey") samples = ds::make_passkey_samples(*tok, text, o.context > 0 ? o.context : seqlen - o.max_new_tokens, o.trials, o.seed);
  if (o.task == "lines") samples = ds::make_line_samples(*tok, o.lines, o.trials, o.seed);
  const int64_t windows_available = static_cast<int64_t>(tokens.ids.size()) / seqlen;
  ds::PerplexityOptions popt;
  popt.seqlen = seqlen;
  popt.max_windows = o.max_windows;
  popt.batch = o.batch;
  if (!retrieval && !longbench) ds::check_perplexity_inputs(cfg, tokens.ids.size(), popt);
  // longbench: the prompt window (prompt + generation), the model's by default.
  const int lb_window = o.seqlen > 0 ? o.seqlen : cfg.max_position;
  if (longbench && lb_window > cfg.max_position)
    throw InvalidArgument("--seqlen", "window " + std::to_string(lb_window) + " exceeds the model's " +
                                          std::to_string(cfg.max_position));
  for (const auto& t : lb.tasks)
    if (lb_window - lb_max_new(lb.config, t.name, o) < 2)
      throw InvalidArgument("--seqlen", "window " + std::to_string(lb_window) + " leaves no room for a prompt before " +
                                            std::to_string(lb_max_new(lb.config, t.name, o)) + " new tokens of " + t.name,
                            "use a longer --seqlen or cap --max-new-tokens");

  // The KV methods, each checked (spec syntax and options, by building its observer once)
  // before anything is printed.
  std::vector<KvRun> runs;
  std::optional<ModelFingerprint> model_fp;  // computed once, for profiles only
  auto add_run = [&](const std::string& text) {
    KvRun r;
    r.label = text;
    if (text.size() > 5 && text.ends_with(".kvqp")) {
      ProfileReadOptions ro;
      ro.verify_digest = !o.no_verify;
      const Profile p = read_profile(text, ro);
      if (!model_fp) model_fp = compute_fingerprint(model_path);
      r = profile_run(text, p, *model_fp, cfg);
    } else if (text != "fp16") {
      r.spec = codecs::parse_codec_spec(text);
    }
    if (r.spec) {
      r.sim.past_only = o.poq;
      const auto check = r.observer(cfg);  // make_codec's checks, now
      if (r.label == text && !r.v_spec) r.label = check->k_codec(0).describe();
      if (o.poq) r.label += " (poq)";
    }
    runs.push_back(std::move(r));
  };
  const bool kld = o.task == "kld";
  const bool generation = retrieval || longbench;
  const bool compare_mode = !o.compare.empty() || kld || generation;  // these always show fp16 too
  if ((kld || generation) && o.compare.empty()) {
    if (!o.kv.empty() && !o.profile.empty()) throw InvalidArgument("--profile", "give --kv or --profile, not both");
    add_run("fp16");
    if (!o.kv.empty() || !o.profile.empty()) add_run(!o.profile.empty() ? o.profile : o.kv);
  } else if (compare_mode) {
    if (!o.kv.empty() || !o.profile.empty())
      throw InvalidArgument(o.kv.empty() ? "--profile" : "--kv", "does not go with --compare", "pass it as --compare SPEC|FILE.kvqp");
    if (std::find(o.compare.begin(), o.compare.end(), "fp16") == o.compare.end()) add_run("fp16");
    for (const auto& c : o.compare) add_run(c);
  } else {
    if (!o.plot.empty() || !o.max_ppl_increase.empty() || !o.max_kld.empty() || !o.min_top1.empty() ||
        !o.memory_budget.empty())
      throw InvalidArgument(!o.plot.empty() ? "--plot" : !o.memory_budget.empty() ? "--memory-budget" : "--max-ppl-increase",
                            "needs compare mode", "add --compare fp16 --compare SPEC ...");
    if (!o.kv.empty() && !o.profile.empty()) throw InvalidArgument("--profile", "give --kv or --profile, not both");
    add_run(!o.profile.empty() ? o.profile : o.kv.empty() ? "fp16" : o.kv);
  }
  // The thresholds are parsed now so that a bad value stops the run before any work.
  if (!o.max_kld.empty()) (void)ds::parse_fraction(o.max_kld, "--max-kld");
  if (!o.min_passkey.empty()) (void)ds::parse_fraction(o.min_passkey, "--min-passkey");
  if (!o.min_lines.empty()) (void)ds::parse_fraction(o.min_lines, "--min-lines");
  if (!o.min_top1.empty()) (void)ds::parse_fraction(o.min_top1, "--min-top1");
  if (!o.max_ppl_increase.empty()) (void)ds::parse_percent(o.max_ppl_increase, "--max-ppl-increase");

  std::fprintf(stderr, "kvq-eval: task %s, kvq %s\n", o.task.c_str(), cli::build_info_text().c_str());
  std::fprintf(stderr, "  model      %s (%s, %d layers, hidden %d, heads %d/%d, vocab %d, window %d, %s)\n",
               model_path.c_str(), std::string(architecture_name(cfg.arch)).c_str(), cfg.n_layers, cfg.hidden,
               cfg.n_heads, cfg.n_kv_heads, cfg.vocab, cfg.max_position, std::string(dtype_name(cfg.dtype)).c_str());
  std::fprintf(stderr, "  tokenizer  %s (%s, %d ids, BOS %s)\n", tok->path().c_str(),
               std::string(tok->kind()).c_str(), tok->vocab_size(), tok->add_bos_by_default() ? "added" : "not added");
  if (longbench) {
    std::fprintf(stderr, "  longbench  %s: %zu tasks, %s rows (config %s)\n", o.longbench_dir.c_str(), lb.tasks.size(),
                 cli::thousands(lb.total_rows()).c_str(), lb.config_dir.c_str());
    for (const auto& t : lb.tasks)
      std::fprintf(stderr, "    %-22s %4zu rows, metric %s, max new tokens %d\n", t.name.c_str(), t.rows.size(),
                   std::string(ds::metric_name(ds::metric_for_task(t.name))).c_str(),
                   lb_max_new(lb.config, t.name, o));
    std::fprintf(stderr, "  window     %d tokens (prompt + generation; longer prompts truncated in the middle)\n", lb_window);
  } else {
    std::fprintf(stderr, "  dataset    %s (protocol %s, %s bytes of text)\n", dataset.path.c_str(),
                 std::string(ds::protocol_name(dataset.protocol)).c_str(), cli::thousands(static_cast<int64_t>(text.size())).c_str());
    if (!data_check.empty()) std::fprintf(stderr, "  data check %s\n", data_check.c_str());
    std::fprintf(stderr, "  seqlen     %d, max windows %s, batch %d\n", seqlen,
                 o.max_windows < 0 ? "all" : std::to_string(o.max_windows).c_str(), o.batch);
  }
  const int64_t weights_bytes = model->parameter_count() * 2;
  if (budget >= 0)
    std::fprintf(stderr,
                 "  memory     budget %s bytes (%.2f GiB): weights %s params x 2 B = %.3f GiB + KV(T) + workspace(T) "
                 "(datasets/kv_memory.h)\n",
                 cli::thousands(budget).c_str(), static_cast<double>(budget) / 0x1p30,
                 cli::thousands(model->parameter_count()).c_str(), static_cast<double>(weights_bytes) / 0x1p30);
  std::fprintf(stderr, "  backend    %s (asked: %s), %d threads\n", backend->name().c_str(), o.backend.c_str(), threads);
  if (!longbench)
    std::fprintf(stderr, "  tokens     %s (tokenized in %.1fs)%s, %s windows of %d\n",
                 cli::thousands(tokens.tokens_total).c_str(), tokens.tokenize_seconds,
                 tokens.tokens_total > static_cast<int64_t>(tokens.ids.size())
                     ? (", first " + cli::thousands(static_cast<int64_t>(tokens.ids.size())) + " used").c_str()
                     : "",
                 cli::thousands(windows_available).c_str(), seqlen);
  for (const auto& run : runs)
    std::fprintf(stderr, "  kv         %s%s\n", run.label.c_str(), run.spec ? "" : " (no simulated quantization)");

  // On a GPU every row but kld's (whose rows share each window's reference pass) gets a
  // fresh backend, so that its peak memory is its own.
  const bool renew_per_row = backend->on_gpu() && !kld;
  // One unmetered forward of 32 tokens first: the first pass over the weights pays for
  // page faults of the mapped checkpoint and one-time set-up (measured on the testbed, CPU:
  // fp16, the first row, showed 151 tok/s against int4's 639 on the same LongBench rows
  // without it).
  warm_up(*backend, std::min(32, cfg.max_position));
  const double elems_per_token = 2.0 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim;
  std::vector<KvRunResult> results;
  std::vector<KldRun> klds;
  std::vector<ds::LongBenchResult> lb_results;
  if (kld) {
    klds = run_kld(*backend, cfg, tokens, seqlen, o.max_windows, runs);
    for (const auto& k : klds) {
      KvRunResult r;
      r.ppl.tokens_scored = static_cast<int64_t>(k.kl.size());
      r.ppl.windows = r.ppl.tokens_scored / (seqlen - 1);
      r.ppl.mean_nll = k.nll / static_cast<double>(k.kl.size());
      r.ppl.ppl = std::exp(r.ppl.mean_nll);
      r.ppl.tokens_per_s = ds::kNotMeasured;
      r.bits_per_element = k.bits;
      r.kv_bytes_per_token = k.bits * elems_per_token / 8.0;
      results.push_back(r);
    }
  }
  for (size_t i = 0; i < runs.size() && !kld; ++i) {
    const KvRun& run = runs[i];
    if (renew_per_row && i > 0) {
      backend->renew();
      warm_up(*backend, std::min(32, cfg.max_position));
    }
    backend->select(static_cast<int>(i));
    KvRunResult r;
    if (retrieval) {
      const auto obs = run.spec ? run.observer(cfg) : nullptr;
      cli::Progress progress;
      ds::RetrievalOptions ro;
      ro.max_new_tokens = o.max_new_tokens;
      ro.observer = obs.get();
      ro.progress = [&](int64_t done, int64_t total) { progress.update(done, total, run.label + " " + o.task, 0.0); };
      const ds::RetrievalResult rr = ds::evaluate_retrieval(*backend, *tok, samples, ro);
      progress.finish();
      r.accuracy = rr.accuracy;
      r.ppl.ppl = ds::kNotMeasured;
      r.ppl.tokens_per_s = ds::kNotMeasured;
      r.bits_per_element = obs ? obs->stats().bits_per_element() : 16.0;
      r.kv_bytes_per_token = r.bits_per_element * elems_per_token / 8.0;
      std::fprintf(stderr, "kvq-eval: %s %s: %lld/%lld correct, mean prompt %.0f tokens\n", run.label.c_str(),
                   o.task.c_str(), static_cast<long long>(rr.correct), static_cast<long long>(rr.trials), rr.mean_prompt_tokens);
    } else if (longbench) {
      const auto obs = run.spec ? run.observer(cfg) : nullptr;
      ds::LongBenchResult res;
      double sum = 0.0;
      for (const auto& t : lb.tasks) {
        cli::Progress progress;
        ds::LongBenchOptions lo;
        lo.window = lb_window;
        lo.max_new_tokens_cap = o.max_new_tokens_given ? o.max_new_tokens : -1;
        lo.observer = obs.get();
        lo.progress = [&](const ds::LongBenchProgress& p) {
          progress.update(p.rows_done, p.rows_total, run.label + " " + p.task, 0.0);
        };
        res.tasks.push_back(ds::evaluate_longbench_task(*backend, *tok, lb.config, t.name, t.rows, lo));
        progress.finish();
        const auto& tr = res.tasks.back();
        sum += tr.score;
        std::fprintf(stderr, "kvq-eval: %s longbench %s: %.2f (%s, %zu rows, %lld truncated, %.1f s)\n",
                     run.label.c_str(), tr.task.c_str(), tr.score, tr.metric.c_str(), tr.rows.size(),
                     static_cast<long long>(tr.truncated_rows), tr.seconds);
      }
      res.average = sum / static_cast<double>(res.tasks.size());
      r.accuracy = res.average;
      r.ppl.ppl = ds::kNotMeasured;
      r.bits_per_element = obs ? obs->stats().bits_per_element() : 16.0;
      r.kv_bytes_per_token = r.bits_per_element * elems_per_token / 8.0;
      lb_results.push_back(std::move(res));
    } else {
      cli::Progress progress;
      popt.progress = [&](const ds::PerplexityProgress& p) {
        progress.update(p.windows_done, p.windows_total,
                        (compare_mode ? run.label + " " : std::string()) + cli::strf("ppl %.4f", p.ppl), p.eta_s);
      };
      r = run_one(*backend, cfg, tokens, popt, run);
      progress.finish();
    }
    results.push_back(r);
  }
  backend->select(-1);

  if (compare_mode) {
    ds::CompareTable table;
    table.model = cli::base_name(model_path);
    table.data = o.task == "lines" ? cli::strf("lines: %d lines, %d trials, seed %llu", o.lines, o.trials, static_cast<unsigned long long>(o.seed))
               : o.task == "passkey" ? cli::strf("passkey: %d trials, seed %llu, filler ", o.trials, static_cast<unsigned long long>(o.seed)) +
                                           cli::base_name(dataset.path)
               : longbench ? cli::strf("longbench: %zu tasks, %lld rows, window %d, ", lb.tasks.size(),
                                       static_cast<long long>(lb.total_rows()), lb_window) +
                                 cli::base_name(o.longbench_dir)
               : (dataset.name.empty() ? cli::base_name(dataset.path) : dataset.name) + " (" +
                 std::string(ds::protocol_name(dataset.protocol)) + " protocol, " +
                 cli::thousands(results[0].ppl.windows) + " windows)";
    table.device = backend->name();
    table.revision = cli::build_info_text();
    table.seqlen = longbench ? lb_window : seqlen;
    table.memory_columns = true;
    if (budget >= 0) table.memory_budget_bytes = static_cast<double>(budget);
    for (size_t i = 0; i < runs.size(); ++i) {
      ds::CompareRow row;
      row.method = runs[i].label;
      row.reference = !runs[i].spec.has_value();
      row.effective_bits = results[i].bits_per_element;
      row.kv_bytes_per_token = results[i].kv_bytes_per_token;
      row.ppl = results[i].ppl.ppl;
      row.window_nll = results[i].ppl.window_nll;
      row.tokens_per_s = backend->meter(i).tokens_per_s();
      row.peak_gpu_bytes = backend->meter(i).peak();
      if (o.task == "passkey") row.passkey_acc = results[i].accuracy;
      if (o.task == "lines") row.lines_acc = results[i].accuracy;
      if (longbench) {
        row.longbench_avg = lb_results[i].average;
        for (const auto& t : lb_results[i].tasks) row.longbench_tasks.emplace_back(t.task, t.score);
      }
      if (kld) {
        std::vector<double> sorted = klds[i].kl;
        std::sort(sorted.begin(), sorted.end());
        double sum = 0.0;
        for (double v : sorted) sum += v;
        row.kld_mean = sum / static_cast<double>(sorted.size());
        row.kld_median = ds::percentile_sorted(sorted, 50.0);
        row.kld_p99 = ds::percentile_sorted(sorted, 99.0);
        row.top1 = static_cast<double>(klds[i].top1) / static_cast<double>(sorted.size());
      }
      if (budget >= 0) {
        const auto obs = runs[i].spec ? runs[i].observer(cfg) : nullptr;
        const double bits = results[i].bits_per_element;
        row.max_context_tokens = static_cast<double>(ds::longest_context(
            budget, weights_bytes, [&](int64_t T) { return ds::kv_bytes_for_context(cfg, obs.get(), T, bits); },
            [&](int64_t T) { return ds::activation_workspace_bytes(cfg, T); }));
      }
      table.rows.push_back(row);
    }
    ds::fill_deltas(table);
    if (collect) {
      *collect = std::move(table);
      return 0;
    }
    nlohmann::json extra = {{"task", o.task}, {"weights_bytes", weights_bytes}};
    if (longbench) extra["longbench"] = longbench_json(lb, lb_results, runs, lb_window, o);
    return report_compare(o, table, o.task, extra);
  }

  const ds::PerplexityResult& r = results[0].ppl;

  const std::string windows_text =
      r.windows == windows_available ? cli::thousands(r.windows) + " (all)"
                                     : cli::thousands(r.windows) + " (first " + cli::thousands(r.windows) + " of " +
                                           cli::thousands(windows_available) + ")";
  if (o.format == cli::OutputFormat::kJson) {
    nlohmann::ordered_json j = {
        {"task", "ppl"},
        {"model", cli::base_name(model_path)},
        {"model_path", model_path},
        {"tokenizer_path", tok->path()},
        {"dataset", dataset.name.empty() ? cli::base_name(dataset.path) : dataset.name},
        {"dataset_path", dataset.path},
        {"protocol", ds::protocol_name(dataset.protocol)},
        {"seqlen", seqlen},
        {"windows", r.windows},
        {"windows_available", windows_available},
        {"tokens_scored", r.tokens_scored},
        {"tokens_available", r.tokens_available},
        {"tokens_total", tokens.tokens_total},
        {"ppl", r.ppl},
        {"nll", r.mean_nll},
        {"seconds", r.seconds},
        {"tokens_per_s", r.tokens_per_s},
        {"backend", backend->name()},
        {"threads", threads},
        {"batch", o.batch},
        {"kv", runs[0].label},
        {"poq", o.poq},
        {"bits_per_element", results[0].bits_per_element},
        {"kv_bytes_per_token", results[0].kv_bytes_per_token},
        {"kvq", cli::build_info()},
    };
    std::printf("%s\n", j.dump(2).c_str());
  } else {
    cli::print_key_values({
        {"task", "ppl"},
        {"model", cli::base_name(model_path)},
        {"dataset", (dataset.name.empty() ? cli::base_name(dataset.path) : dataset.name) + " (" +
                        std::string(ds::protocol_name(dataset.protocol)) + " protocol)"},
        {"seqlen", std::to_string(seqlen)},
        {"windows", windows_text},
        {"tokens scored", cli::thousands(r.tokens_scored)},
        {"ppl", cli::strf("%.4f", r.ppl)},
        {"nll", cli::strf("%.6f nats/token", r.mean_nll)},
        {"time", cli::strf("%.1f s", r.seconds)},
        {"tokens/s", cli::strf("%.1f", r.tokens_per_s)},
        {"kv", runs[0].label},
        {"bits/elem", cli::strf("%.4f (metadata included)", results[0].bits_per_element)},
        {"kv bytes/token", cli::strf("%.1f (K+V, all layers)", results[0].kv_bytes_per_token)},
        {"backend", backend->name() + ", " + std::to_string(threads) + " threads"},
        {"kvq", cli::build_info_text()},
    });
  }
  return 0;
}


// Several tasks in one invocation (`--task ppl,kld,passkey`): each runs as in compare mode
// and its columns are merged into one table, one row per method (the rows come in the same
// order from every task: fp16, then each --compare). Where two tasks measure the same
// column (ppl from ppl and kld; tokens/s), the first listed task wins; peak GPU memory is
// the largest. The plot uses the first task's metric.
int run_tasks(const Options& o, const std::vector<std::string>& tasks) {
  if (o.compare.empty())
    throw InvalidArgument("--task", "several tasks need compare mode", "add --compare fp16 --compare SPEC ...");
  ds::CompareTable merged;
  std::vector<std::string> data;
  for (const auto& task : tasks) {
    Options one = o;
    one.task = task;
    ds::CompareTable t;
    run_ppl(one, &t);
    data.push_back(t.data.starts_with(task + ":") ? t.data : task + ": " + t.data);
    if (merged.rows.empty()) {
      merged = std::move(t);
      continue;
    }
    if (t.rows.size() != merged.rows.size()) throw Error("kvq-eval", "task " + task + " produced a different set of rows");
    auto take = [](double& dst, double src) {
      if (std::isnan(dst)) dst = src;
    };
    for (size_t i = 0; i < t.rows.size(); ++i) {
      ds::CompareRow& d = merged.rows[i];
      const ds::CompareRow& r = t.rows[i];
      if (d.method != r.method) throw Error("kvq-eval", "task " + task + " row " + std::to_string(i) + " is " + r.method + ", not " + d.method);
      take(d.effective_bits, r.effective_bits);
      take(d.kv_bytes_per_token, r.kv_bytes_per_token);
      take(d.ppl, r.ppl);
      take(d.kld_mean, r.kld_mean);
      take(d.kld_median, r.kld_median);
      take(d.kld_p99, r.kld_p99);
      take(d.top1, r.top1);
      take(d.passkey_acc, r.passkey_acc);
      take(d.lines_acc, r.lines_acc);
      take(d.longbench_avg, r.longbench_avg);
      take(d.tokens_per_s, r.tokens_per_s);
      take(d.max_context_tokens, r.max_context_tokens);
      if (d.longbench_tasks.empty()) d.longbench_tasks = r.longbench_tasks;
      if (!std::isnan(r.peak_gpu_bytes))
        d.peak_gpu_bytes = std::isnan(d.peak_gpu_bytes) ? r.peak_gpu_bytes : std::max(d.peak_gpu_bytes, r.peak_gpu_bytes);
    }
  }
  merged.data.clear();
  for (const auto& d : data) merged.data += (merged.data.empty() ? "" : "; ") + d;
  ds::fill_deltas(merged);
  std::string joined;
  for (const auto& t : tasks) joined += (joined.empty() ? "" : ",") + t;
  return report_compare(o, merged, tasks.front(), nlohmann::json{{"task", joined}, {"tasks", tasks}});
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"kvq-eval: evaluate a model (ppl, kld, passkey, lines, longbench) with fp16 or quantized KV\n"
               "exit codes: 0 ok, 1 runtime failure, 2 usage error, 3 a --max-* threshold failed"};
  Options o;
  app.add_option("--task", o.task,
                 "Evaluation task: ppl, kld, passkey, lines or longbench; in compare mode a comma list "
                 "(ppl,kld,passkey) runs each and prints one merged table")
      ->check([](const std::string& v) -> std::string {
        for (const auto& t : split_tasks(v))
          if (t != "ppl" && t != "kld" && t != "passkey" && t != "lines" && t != "longbench")
            return "unknown task '" + t + "' (ppl, kld, passkey, lines, longbench)";
        return std::string();
      })
      ->capture_default_str();
  app.add_option("--model", o.model,
                 "Hugging Face folder or llama2.c .bin (default: $KVQ_MODEL, else ../shared/models/kvq-testbed-llama2-23m)");
  app.add_option("--dataset", o.dataset,
                 "Dataset file, or a name: wikitext2, wikitext2-valid, c4, kvq-docs-valid, ... "
                 "(default: $KVQ_DATA when a file, else wikitext2 under $KVQ_DATA or ../shared/datasets)");
  app.add_option("--protocol", o.protocol, "wikitext, text or c4 (default: from the dataset's name)")
      ->check(CLI::IsMember({"wikitext", "text", "c4"}));
  app.add_option("--tokenizer", o.tokenizer,
                 "tokenizer.json, tokenizer.model, llama2.c tokenizer .bin or a folder (default: the model folder)");
  app.add_option("--seqlen", o.seqlen,
                 "Window length in tokens (0: min(model window, 2048); longbench: prompt + generation, 0: the model's window)")
      ->check(CLI::Range(0, 1 << 24))
      ->capture_default_str();
  app.add_option("--max-windows", o.max_windows, "Evaluate only the first N windows (-1: all)")
      ->check(CLI::Range(int64_t{-1}, int64_t{1} << 40))
      ->capture_default_str();
  app.add_option("--batch", o.batch, "Windows per forward call")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--kv", o.kv,
                 "Simulated KV quantization METHOD[:k=v,...] (int2|int3|int4|int8, kivi, kvquant, wkvquant, mikv, "
                 "q8_0, q4_0, fp8, hadamard, fp16; default: none)");
  app.add_option("--profile", o.profile, "Simulate the KV quantization of a .kvqp profile made for this model");
  app.add_flag("--no-verify", o.no_verify, "Do not verify the profile's tensor digest");
  app.add_flag("--poq", o.poq, "Past-only quantization: the diagonal (j == t) stays at full precision");
  app.add_option("--compare", o.compare,
                 "Compare mode: a KV method (fp16, a --kv spec or a .kvqp profile), repeatable; fp16 is always the reference row");
  app.add_option("--plot", o.plot, "Compare mode: write PPL vs KV bytes/token as an SVG file");
  app.add_option("--max-ppl-increase", o.max_ppl_increase,
                 "Compare mode: exit 3 when a method's PPL exceeds fp16's by more than this (\"1%\" or 0.01)");
  app.add_option("--max-kld", o.max_kld, "Exit 3 when a method's mean KL divergence (nats, --task kld) exceeds this");
  app.add_option("--min-top1", o.min_top1, "Exit 3 when a method's top-1 agreement with fp16 (--task kld) is below this");
  app.add_option("--min-passkey", o.min_passkey, "Exit 3 when a method's passkey accuracy is below this (0.95 or 95%)");
  app.add_option("--min-lines", o.min_lines, "Exit 3 when a method's line-retrieval accuracy is below this");
  app.add_option("--context", o.context, "passkey: prompt length in tokens (0: seqlen - max new tokens)")->capture_default_str();
  app.add_option("--lines", o.lines, "lines: lines per prompt")->check(CLI::Range(1, 2000))->capture_default_str();
  app.add_option("--trials", o.trials, "passkey / lines: prompts per method")->check(CLI::Range(1, 100000))->capture_default_str();
  app.add_option("--seed", o.seed, "passkey / lines: generator seed")->capture_default_str();
  CLI::Option* max_new = app.add_option("--max-new-tokens", o.max_new_tokens,
                                        "passkey / lines: greedy tokens per prompt; longbench: a cap on dataset2maxlen (default: none)")
                             ->check(CLI::Range(1, 4096))
                             ->capture_default_str();
  app.add_option("--longbench-dir", o.longbench_dir, "longbench: folder of LongBench v1 task files (TASK.jsonl)");
  app.add_option("--tasks", o.longbench_tasks, "longbench: tasks to run, comma-separated (default: every *.jsonl in the folder)")
      ->delimiter(',');
  app.add_option("--config,--longbench-config", o.longbench_config,
                 "longbench: folder of dataset2prompt.json and dataset2maxlen.json "
                 "(default: longbench/config under $KVQ_DATA or ../shared/datasets)");
  app.add_option("--max-rows", o.max_rows, "longbench: first N rows of each task (-1: all)")
      ->check(CLI::Range(int64_t{-1}, int64_t{1} << 40))
      ->capture_default_str();
  app.add_option("--memory-budget", o.memory_budget,
                 "Compare mode: GPU memory budget (80GiB, 24GB, ...); adds the longest context that fits per method");
  cli::add_backend_option(app, o.backend);
  cli::add_threads_option(app, o.threads);
  cli::add_format_option(app, o.format);
  cli::add_version_flag(app, "kvq-eval");

  return kvq::cli::run("kvq-eval", [&]() -> int {
    if (const auto done = cli::parse(app, argc, argv)) return *done;
    o.max_new_tokens_given = max_new->count() > 0;
    const std::vector<std::string> tasks = split_tasks(o.task);
    if (tasks.size() > 1) return run_tasks(o, tasks);
    return run_ppl(o);
  });
}
