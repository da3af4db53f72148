// kvq-calibrate: fits KVQuant/MiKV/FP8 calibration to a checkpoint and writes the
// calibration file (docs/calibration-format.md) that kvq-convert turns into profiles.
//
//   kvq-calibrate --model DIR|FILE --dataset PATH [--tokenizer PATH] [--nseq 16]
//                 [--seqlen 2048] [--seed 0] [--outliers 1%] [--sink 1] [--bits 2,3,4]
//                 [--fisher-clip 1] [--uniform-mix 0]
//                 -o calib.kvqc [--resume] [--threads N] [--format text|json]
//                 [--backend cpu|cuda|cuda:N|auto]
//                 [--crr [--crr-window 5] [--crr-epochs 2] [--crr-lr 5e-3] [--crr-group G]]
//
// The pipeline (calib/calibrate.h): sample sequences, forward+backward per sequence
// (Fisher information; on the GPU with --backend cuda, the default when a GPU exists), then per layer thresholds, Fisher-weighted NUQ signposts, Q-Norm
// and absmax, writing the file after every layer (--resume continues an interrupted run);
// with --crr, WKVQuant's cross-block reconstruction (calib/crr.h, CPU) at the end.
// The effective configuration and progress with ETA go to stderr, the summary to stdout.
// docs/calibrate.md has the details and measured figures.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "calib/calibrate.h"
#include "calib/fisher.h"
#include "calib/thresholds.h"
#include "datasets/eval_tokens.h"
#include "datasets/text_file.h"
#include "formats/calibration.h"
#include "formats/error.h"
#include "formats/fingerprint.h"
#include "formats/sha256.h"
#include "formats/tokenizer.h"
#include "formats/version.h"
#include "lib/backend_factory.h"
#include "lib/model.h"
#if KVQ_HAVE_CUDA
#include "lib/cuda/cuda_backend.h"
#endif
#include "tools/common/backend_select.h"
#include "tools/common/cli.h"
#include "tools/common/data_paths.h"
#include "tools/common/progress.h"
#include "tools/common/report.h"

namespace {

using namespace kvq;
namespace fs = std::filesystem;

constexpr int kTokenBudget = 16 * 2048;  // the 16 sequences x 2048 tokens

struct Options {
  std::string model;
  std::string dataset;
  std::string tokenizer;
  int nseq = 16;
  int seqlen = 2048;
  uint64_t seed = 0;
  std::string outliers = "1%";
  int sink = 1;
  std::string bits = "2,3,4";
  double fisher_clip = 1.0;
  double uniform_mix = 0.0;
  std::string starts;  // explicit, comma-separated
  std::string output;
  bool resume = false;
  int stop_after_layers = 0;
  std::string fisher_out;
  int threads = 0;
  std::string backend = "auto";
  bool crr = false;
  int crr_window = 5;
  int crr_epochs = 2;
  double crr_lr = 5e-3;
  int crr_group = 0;
  double crr_alpha = 0.5;
  cli::OutputFormat format = cli::OutputFormat::kText;
};

std::vector<int64_t> parse_list(const std::string& text, const char* flag) {
  std::vector<int64_t> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    try {
      size_t used = 0;
      const long long v = std::stoll(item, &used);
      if (used != item.size()) throw std::invalid_argument(item);
      out.push_back(v);
    } catch (const std::exception&) {
      throw InvalidArgument(flag, "cannot parse '" + item + "' as an integer", "write a list like 2,3,4");
    }
  }
  if (out.empty()) throw InvalidArgument(flag, "empty list");
  return out;
}

std::string tokenizer_path(const Options& o, const std::string& model_path) {
  if (!o.tokenizer.empty()) return o.tokenizer;
  std::error_code ec;
  if (fs::is_directory(model_path, ec)) return model_path;
  throw InvalidArgument(model_path, "a llama2.c checkpoint carries no tokenizer",
                        "pass --tokenizer (for stories260K: tok512.bin beside it)");
}

// "kvq-docs/calib.txt": the file and its folder, what provenance calls the dataset.
std::string dataset_label(const std::string& path) {
  const fs::path p = fs::absolute(path).lexically_normal();
  return p.parent_path().filename().string() + "/" + p.filename().string();
}

void write_fisher(const std::string& dir, const calib::FisherInfo& f, const std::vector<int64_t>& starts) {
  fs::create_directories(dir);
  for (size_t l = 0; l < f.k.size(); ++l) {
    for (int kind = 0; kind < 2; ++kind) {
      const std::string name = "layer" + std::to_string(l) + (kind == 0 ? ".k_proj" : ".v_proj") + ".fisher.f32";
      const std::vector<float>& a = kind == 0 ? f.k[l] : f.v[l];
      std::ofstream out(dir + "/" + name, std::ios::binary | std::ios::trunc);
      out.write(reinterpret_cast<const char*>(a.data()), static_cast<std::streamsize>(a.size() * 4));
      if (!out) throw IoError(dir + "/" + name, "cannot write");
      nlohmann::ordered_json side = {{"what", "sum over sequences of squared dLoss/d(output) [position, channels]"},
                                     {"nseq", starts.size()},
                                     {"seqlen", f.seqlen},
                                     {"starts", starts},
                                     {"shape", {f.seqlen, f.kv_dim}},
                                     {"dtype", "f32"}};
      std::ofstream js(dir + "/" + name + ".json");
      js << side.dump(1) << "\n";
    }
  }
}

// "auto" -> "cuda" when this build has CUDA and a usable GPU is present, else "cpu".
std::string resolve_backend(const std::string& name) {
  if (name != "auto") return name;
  return cuda_available() ? "cuda" : "cpu";
}

nlohmann::ordered_json crr_json(const calib::CalibrateSummary& s) {
  if (!s.crr) return nullptr;
  nlohmann::ordered_json per = nlohmann::ordered_json::array();
  for (const calib::CrrBitsResult& b : s.crr->per_bits) {
    per.push_back({{"bits", b.bits},
                   {"loss_before", b.loss_before},
                   {"loss_after", b.loss_after},
                   {"window0_identity_loss", b.loss_identity},
                   {"window0_init_loss", b.loss_init}});
  }
  return {{"window", s.crr->window}, {"epochs", s.crr->epochs}, {"lr", s.crr->lr},
          {"group", s.crr->group},   {"seconds", s.crr->seconds}, {"per_bits", per}};
}

int run(const Options& o) {
  const std::string model_path = o.model.empty() ? cli::default_model_path() : o.model;
  if (model_path.empty()) throw InvalidArgument("--model", "no model given and none found", "pass --model DIR|FILE");
  std::string dataset = o.dataset;
  if (dataset.empty()) dataset = cli::default_path("KVQ_CALIB_DATA", "datasets/kvq-docs/calib.txt");
  if (dataset.empty()) throw InvalidArgument("--dataset", "no dataset given and kvq-docs/calib.txt not found");
  if (o.output.empty()) throw InvalidArgument("-o", "no output path given");
  const calib::OutlierSpec outl = calib::parse_outlier_spec(o.outliers);
  std::vector<int> bits;
  for (int64_t b : parse_list(o.bits, "--bits")) {
    if (b < 1 || b > 8) throw InvalidArgument("--bits", std::to_string(b) + " outside 1..8");
    bits.push_back(static_cast<int>(b));
  }

  const std::shared_ptr<const Model> model = load_model(model_path);
  const ModelConfig& cfg = model->config();
  const std::unique_ptr<Tokenizer> tok = load_tokenizer(tokenizer_path(o, model_path));
  datasets::check_tokenizer_vocab(*tok, model->embedding().shape[0], model_path);
  const int seqlen = std::min(o.seqlen, cfg.max_position);
  const int threads = cli::apply_threads(o.threads);
  const std::string backend = resolve_backend(o.backend);
  const std::string text = datasets::read_text_file(dataset);
  const std::vector<int32_t> ids = tok->encode(text);
  // --nseq 0: the token budget, 16 x 2048 tokens, whatever the window (the
  // testbed's 1024-token window then gets 32 sequences instead of 16 x 1024 tokens).
  const int nseq = o.nseq > 0 ? o.nseq : (kTokenBudget + seqlen - 1) / seqlen;
  const std::vector<int64_t> starts = o.starts.empty() ? calib::sample_starts(static_cast<int64_t>(ids.size()), seqlen, nseq, o.seed)
                                                       : parse_list(o.starts, "--starts");

  std::fprintf(stderr, "kvq-calibrate: kvq %s\n", cli::build_info_text().c_str());
  std::fprintf(stderr, "  model      %s (%d layers, hidden %d, heads %d/%d, head_dim %d, window %d)\n",
               model_path.c_str(), cfg.n_layers, cfg.hidden, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim,
               cfg.max_position);
  std::fprintf(stderr, "  tokenizer  %s (%s)\n", tok->path().c_str(), std::string(tok->kind()).c_str());
  std::fprintf(stderr, "  dataset    %s (%s tokens)\n", dataset.c_str(), cli::thousands(static_cast<int64_t>(ids.size())).c_str());
  std::fprintf(stderr, "  sequences  %zu x %d tokens%s, seed %llu%s\n", starts.size(), seqlen,
               seqlen < o.seqlen ? " (clamped to the model window)" : "", static_cast<unsigned long long>(o.seed),
               o.starts.empty() ? "" : " (explicit --starts)");
  std::fprintf(stderr, "  outliers   %g%% (%g%% per tail), sink %d, bits %s\n", outl.total_fraction * 100,
               outl.tail_fraction() * 100, o.sink, o.bits.c_str());
  std::fprintf(stderr, "  output     %s%s, %d threads\n", o.output.c_str(), o.resume ? " (resume)" : "", threads);
  std::fprintf(stderr, "  backend    %s%s\n", backend.c_str(), o.backend == "auto" ? " (auto)" : "");
  std::fprintf(stderr, "  weights    Fisher%s, uniform mix %g\n",
               o.fisher_clip < 1.0 ? cli::strf(" clipped at its %g quantile", o.fisher_clip).c_str() : " (raw)",
               o.uniform_mix);
  if (o.crr) {
    std::fprintf(stderr, "  crr        window %d (of %d blocks), %d epochs, lr %g, group %d, bits %s (CPU)\n",
                 std::min(o.crr_window, cfg.n_layers), cfg.n_layers, o.crr_epochs, o.crr_lr,
                 o.crr_group > 0 ? o.crr_group : cfg.head_dim, o.bits.c_str());
  } else {
    std::fprintf(stderr, "  crr        off (--crr for WKVQuant profiles)\n");
  }
#if KVQ_HAVE_CUDA
  if (backend != "cpu") {
    std::fprintf(stderr, "  device     %s\n",
                 cuda_device_summary(backend.size() > 5 ? std::stoi(backend.substr(5)) : 0).c_str());
  }
#endif

  if (!o.fisher_out.empty()) {
    const calib::FisherInfo f = calib::fisher_information(model, ids, starts, seqlen, backend);
    write_fisher(o.fisher_out, f, starts);
    std::fprintf(stderr, "kvq-calibrate: Fisher information written to %s\n", o.fisher_out.c_str());
  }

  Calibration base;
  base.fingerprint = compute_fingerprint(model_path);
  base.provenance.dataset = dataset_label(dataset);
  base.provenance.dataset_sha256 = sha256_file_hex(dataset);
  base.provenance.sequences = static_cast<int64_t>(starts.size());
  base.provenance.tokens = seqlen;
  base.provenance.seed = o.seed;
  base.provenance.tool = "kvq-calibrate";
  base.provenance.version = kVersion;
  base.provenance.git_revision = kGitRevision;

  calib::CalibrateOptions copt;
  copt.seqlen = seqlen;
  copt.starts = starts;
  copt.outlier_fraction = outl.total_fraction;
  copt.sink = o.sink;
  copt.bits = bits;
  copt.weighting.clip_quantile = o.fisher_clip;
  copt.weighting.uniform_mix = o.uniform_mix;
  copt.output = o.output;
  copt.resume = o.resume;
  copt.stop_after_layers = o.stop_after_layers;
  copt.backend = backend;
  copt.crr = o.crr;
  copt.crr_options.window = o.crr_window;
  copt.crr_options.epochs = o.crr_epochs;
  copt.crr_options.lr = o.crr_lr;
  copt.crr_options.group = o.crr_group;
  copt.crr_options.alpha = o.crr_alpha;

  cli::Progress progress;
  // One stderr line per CRR (block, bits): the window loss before and after training.
  copt.crr_progress = [&](int b, int block, double before, double after, int64_t, int64_t) {
    progress.finish();
    std::fprintf(stderr, "kvq-calibrate: crr %d bits, block %d: window loss %.6g -> %.6g (%+.2f%%)\n", b, block,
                 before, after, before > 0 ? (after / before - 1) * 100 : 0.0);
  };
  const auto t0 = std::chrono::steady_clock::now();
  auto stage_t0 = t0;
  std::string stage_name;
  const calib::CalibrateSummary s = calib::run_calibration(
      model, ids, copt, base, [&](const char* stage, int64_t done, int64_t total) {
        const auto now = std::chrono::steady_clock::now();
        if (stage_name != stage) {
          if (!stage_name.empty()) progress.finish();
          stage_name = stage;
          stage_t0 = now;
        }
        const double el = std::chrono::duration<double>(now - stage_t0).count();
        progress.update(done, total, std::string(stage) + (std::string(stage) == "capture" ? " (forward+backward)" : std::string(stage) == "crr" ? " (window)" : " (layer)"),
                        done > 0 ? el / static_cast<double>(done) * static_cast<double>(total - done) : -1.0);
      });
  progress.finish();

  double mean_loss = 0;
  for (double l : s.seq_loss) mean_loss += l;
  mean_loss /= static_cast<double>(s.seq_loss.size());
  const std::string digest = sha256_file_hex(o.output);
  if (o.format == cli::OutputFormat::kJson) {
    nlohmann::ordered_json layers = nlohmann::ordered_json::array();
    for (size_t l = 0; l < s.layers.size(); ++l) {
      if (s.layers[l].k_cost.empty()) continue;
      layers.push_back({{"layer", l},
                        {"k_points", s.layers[l].k_points},
                        {"v_points", s.layers[l].v_points},
                        {"bits", bits},
                        {"k_kmeans_cost", s.layers[l].k_cost},
                        {"v_kmeans_cost", s.layers[l].v_cost}});
    }
    nlohmann::ordered_json j = {{"tool", "kvq-calibrate"},
                                {"model", cli::base_name(model_path)},
                                {"dataset", base.provenance.dataset},
                                {"sequences", starts.size()},
                                {"seqlen", seqlen},
                                {"seed", o.seed},
                                {"starts", starts},
                                {"outlier_fraction", outl.total_fraction},
                                {"sink", o.sink},
                                {"bits", bits},
                                {"fisher_clip", o.fisher_clip},
                                {"uniform_mix", o.uniform_mix},
                                {"mean_loss", mean_loss},
                                {"resumed_sequences", s.resumed_sequences},
                                {"resumed_layers", s.resumed_layers},
                                {"complete_layers", s.complete_layers},
                                {"capture_seconds", s.capture_seconds},
                                {"fit_seconds", s.fit_seconds},
                                {"spill_read_seconds", s.spill_read_seconds},
                                {"thresholds_seconds", s.thresholds_seconds},
                                {"signposts_seconds", s.signposts_seconds},
                                {"backend", backend},
                                {"gpu_peak_bytes", s.gpu_peak_bytes},
                                {"output", o.output},
                                {"output_sha256", digest},
                                {"layers", layers},
                                {"crr", crr_json(s)},
                                {"threads", threads},
                                {"kvq", cli::build_info()}};
    std::printf("%s\n", j.dump(2).c_str());
  } else {
    cli::print_key_values({
        {"model", cli::base_name(model_path)},
        {"dataset", base.provenance.dataset},
        {"sequences", cli::strf("%zu x %d tokens (seed %llu)", starts.size(), seqlen, static_cast<unsigned long long>(o.seed))},
        {"mean loss", cli::strf("%.6f nats/token", mean_loss)},
        {"resumed", cli::strf("%d sequences, %d layers", s.resumed_sequences, s.resumed_layers)},
        {"layers", cli::strf("%d of %d complete", s.complete_layers, cfg.n_layers)},
        {"time", cli::strf("capture %.1f s, fit %.1f s", s.capture_seconds, s.fit_seconds)},
        {"backend", backend + (s.gpu_peak_bytes ? cli::strf(" (peak %.2f GiB on the GPU)", s.gpu_peak_bytes / 1073741824.0) : "")},
        {"output", o.output},
        {"sha256", digest},
    });
    std::vector<std::vector<std::string>> rows;
    for (size_t l = 0; l < s.layers.size(); ++l) {
      if (s.layers[l].k_cost.empty()) continue;
      for (size_t b = 0; b < bits.size(); ++b) {
        rows.push_back({std::to_string(l), std::to_string(bits[b]), cli::thousands(s.layers[l].k_points),
                        cli::strf("%.6g", s.layers[l].k_cost[b]), cli::thousands(s.layers[l].v_points),
                        cli::strf("%.6g", s.layers[l].v_cost[b])});
      }
    }
    if (!rows.empty()) {
      std::printf("\n");
      cli::print_table({"layer", "bits", "k points", "k cost", "v points", "v cost"}, rows);
    }
    if (s.crr) {
      std::vector<std::vector<std::string>> crows;
      for (const calib::CrrBitsResult& b : s.crr->per_bits) {
        for (size_t i = 0; i < b.loss_before.size(); ++i) {
          crows.push_back({std::to_string(i), std::to_string(b.bits), cli::strf("%.6g", b.loss_before[i]),
                           cli::strf("%.6g", b.loss_after[i]),
                           cli::strf("%+.2f%%", (b.loss_after[i] / b.loss_before[i] - 1) * 100),
                           i == 0 ? cli::strf("%.6g", b.loss_identity) : std::string()});
        }
      }
      std::printf("\nWKVQuant CRR (window %d, %d epochs, lr %g, group %d, %.1f s): mean |Y_fp - Y_q| at the window output\n",
                  s.crr->window, s.crr->epochs, s.crr->lr, s.crr->group, s.crr->seconds);
      cli::print_table({"block", "bits", "before", "after", "change", "delta=0,s=1"}, crows);
    } else if (s.crr_resumed) {
      std::printf("\nWKVQuant CRR: kept from the resumed file\n");
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"kvq-calibrate: fit KV-cache quantization calibration (Fisher information, NUQ signposts, "
               "outlier thresholds, Q-Norm, absmax) to a model"};
  Options o;
  app.add_option("--model", o.model,
                 "Hugging Face folder or llama2.c .bin (default: $KVQ_MODEL, else ../shared/models/kvq-testbed-llama2-23m)");
  app.add_option("--dataset", o.dataset,
                 "Calibration text file (default: $KVQ_CALIB_DATA, else ../shared/datasets/kvq-docs/calib.txt); "
                 "never the evaluation split");
  app.add_option("--tokenizer", o.tokenizer, "Tokenizer file or folder (default: the model folder)");
  app.add_option("--nseq", o.nseq, "Calibration sequences (0: 16 x 2048 tokens' worth at the clamped --seqlen)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--seqlen", o.seqlen, "Tokens per sequence (clamped to the model window)")
      ->check(CLI::Range(2, 1 << 20))
      ->capture_default_str();
  app.add_option("--seed", o.seed, "Seed of the sequence start sampler")->capture_default_str();
  app.add_option("--starts", o.starts, "Explicit sequence starts (comma-separated token offsets) instead of sampling");
  app.add_option("--outliers", o.outliers, "Outlier share, both tails together (1% = 0.5% per tail)")->capture_default_str();
  app.add_option("--sink", o.sink, "Attention-sink tokens at the start of each sequence, left out")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--bits", o.bits, "NUQ bit widths to fit signposts for")->capture_default_str();
  app.add_option("--fisher-clip", o.fisher_clip,
                 "Clip each layer's Fisher weights at this quantile before the signpost k-means (1: raw F, "
                 "KVQuant's fit; docs/calibrate.md, \"Robust signpost weights\")")
      ->check(CLI::Validator(
          [](std::string& text) -> std::string {
            try {
              size_t used = 0;
              const double q = std::stod(text, &used);
              if (used == text.size() && q > 0.0 && q <= 1.0) return {};
            } catch (const std::exception&) {
            }
            return "Value " + text + " not in (0, 1]";
          },
          "in (0, 1]"))
      ->capture_default_str();
  app.add_option("--uniform-mix", o.uniform_mix,
                 "Share eps of the signpost k-means weight spread uniformly over [-1, 1] "
                 "((1 - eps) Fisher + eps uniform; 0: KVQuant's fit)")
      ->check(CLI::Range(0.0, 0.99))
      ->capture_default_str();
  app.add_option("-o,--output", o.output, "Calibration file to write (.kvqc)")->required();
  app.add_flag("--resume", o.resume, "Continue an interrupted run from its last complete layer");
  app.add_option("--stop-after-layers", o.stop_after_layers,
                 "Stop after writing N layers (tests of --resume; 0: all)")
      ->check(CLI::NonNegativeNumber)
      ->group("");
  app.add_option("--fisher-out", o.fisher_out,
                 "Also write the Fisher information (hf_oracle.py fisher layout) to this folder")
      ->group("");
  app.add_flag("--crr", o.crr,
               "Also run WKVQuant cross-block reconstruction (CPU; needed for wkvquant profiles; costs about "
               "3 x window x epochs x bit widths Fisher passes)");
  app.add_option("--crr-window", o.crr_window, "CRR: consecutive blocks per window (clamped to the layers)")
      ->check(CLI::Range(1, 1 << 16))
      ->capture_default_str();
  app.add_option("--crr-epochs", o.crr_epochs, "CRR: passes over the sequences per window")
      ->check(CLI::Range(0, 1 << 16))
      ->capture_default_str();
  app.add_option("--crr-lr", o.crr_lr, "CRR: AdamW learning rate on the normalised (delta, log s)")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  app.add_option("--crr-group", o.crr_group, "CRR: channels per quantization group (0: head_dim)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--crr-alpha", o.crr_alpha, "CRR: initial s = (channel half-range / head mean)^alpha (measurements)")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 2.0))
      ->group("");
  cli::add_threads_option(app, o.threads);
  cli::add_backend_option(app, o.backend);
  cli::add_format_option(app, o.format);
  cli::add_version_flag(app, "kvq-calibrate");

  return kvq::cli::run("kvq-calibrate", [&]() -> int {
    if (const auto done = cli::parse(app, argc, argv)) return *done;
    return run(o);
  });
}
