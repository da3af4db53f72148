// kvq-eval: evaluates a model on a dataset. Today: --task ppl, the perplexity protocol of
// GPTQ / KVQuant / KIVI (datasets/perplexity.h) on WikiText-2, C4 or any text file, on
// the CPU reference backend. The tool parses, prints and calls the libraries; all the
// logic (readers, protocols, windows, the evaluator) is in datasets/ and lib/.
//
//   kvq-eval --task ppl --model DIR|FILE --dataset PATH|NAME --seqlen N [--max-windows N]
//            [--tokenizer PATH] [--protocol wikitext|text|c4] [--backend cpu|cuda|auto]
//            [--threads N] [--batch N] [--format text|json]
//
// Output: the effective configuration on stderr first, then progress lines on stderr, the
// results on stdout (a table, or one JSON object with --format json).
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "datasets/eval_tokens.h"
#include "datasets/manifest.h"
#include "datasets/perplexity.h"
#include "datasets/protocol.h"
#include "datasets/spec.h"
#include "formats/error.h"
#include "formats/tokenizer.h"
#include "lib/backend_factory.h"
#include "lib/model.h"
#include "tools/common/backend_select.h"
#include "tools/common/cli.h"
#include "tools/common/data_paths.h"
#include "tools/common/progress.h"
#include "tools/common/report.h"

namespace {

using namespace kvq;
namespace ds = kvq::datasets;

struct Options {
  std::string task = "ppl";
  std::string model;
  std::string dataset;
  std::string tokenizer;
  std::string protocol;  // "" = from the dataset
  int seqlen = 0;        // 0 = min(model window, 2048)
  int64_t max_windows = -1;
  int batch = 1;
  int threads = 0;
  std::string backend = "auto";
  cli::OutputFormat format = cli::OutputFormat::kText;
};

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

int run_ppl(const Options& o) {
  const std::string model_path = o.model.empty() ? cli::default_model_path() : o.model;
  if (model_path.empty()) {
    throw InvalidArgument("--model", "no model given, KVQ_MODEL is not set and ../shared/models/kvq-testbed-llama2-23m was not found",
                          "pass --model DIR|FILE");
  }
  std::optional<ds::Protocol> protocol;
  if (!o.protocol.empty()) protocol = ds::parse_protocol(o.protocol);  // validated by CLI11

  // Everything that can be wrong with the inputs is checked before the configuration is
  // printed, so a bad input gives exactly one error line.
  const ds::ResolvedDataset dataset =
      ds::resolve_dataset(o.dataset.empty() ? cli::default_dataset_spec() : o.dataset, cli::data_roots(), protocol);
  const std::shared_ptr<const Model> model = load_model(model_path);
  const ModelConfig& cfg = model->config();
  const std::unique_ptr<Tokenizer> tok = load_tokenizer(tokenizer_path(o, model_path));
  ds::check_tokenizer_vocab(*tok, model->embedding().shape[0], model_path);
  const int window = cfg.max_position > 0 ? cfg.max_position : 2048;
  const int seqlen = o.seqlen > 0 ? o.seqlen : std::min(window, 2048);
  const std::string text = ds::load_protocol_text(dataset.path, dataset.protocol);
  const std::string data_check = check_against_manifest(dataset);
  const int threads = cli::apply_threads(o.threads);
  const std::unique_ptr<Backend> backend = make_backend(o.backend, model);

  const ds::EvalTokens tokens = ds::tokenize_for_eval(text, dataset.protocol, *tok, seqlen);
  const int64_t windows_available = static_cast<int64_t>(tokens.ids.size()) / seqlen;
  ds::PerplexityOptions popt;
  popt.seqlen = seqlen;
  popt.max_windows = o.max_windows;
  popt.batch = o.batch;
  ds::check_perplexity_inputs(cfg, tokens.ids.size(), popt);

  std::fprintf(stderr, "kvq-eval: task ppl, kvq %s\n", cli::build_info_text().c_str());
  std::fprintf(stderr, "  model      %s (%s, %d layers, hidden %d, heads %d/%d, vocab %d, window %d, %s)\n",
               model_path.c_str(), std::string(architecture_name(cfg.arch)).c_str(), cfg.n_layers, cfg.hidden,
               cfg.n_heads, cfg.n_kv_heads, cfg.vocab, cfg.max_position, std::string(dtype_name(cfg.dtype)).c_str());
  std::fprintf(stderr, "  tokenizer  %s (%s, %d ids, BOS %s)\n", tok->path().c_str(),
               std::string(tok->kind()).c_str(), tok->vocab_size(), tok->add_bos_by_default() ? "added" : "not added");
  std::fprintf(stderr, "  dataset    %s (protocol %s, %s bytes of text)\n", dataset.path.c_str(),
               std::string(ds::protocol_name(dataset.protocol)).c_str(), cli::thousands(static_cast<int64_t>(text.size())).c_str());
  if (!data_check.empty()) std::fprintf(stderr, "  data check %s\n", data_check.c_str());
  std::fprintf(stderr, "  seqlen     %d, max windows %s, batch %d\n", seqlen,
               o.max_windows < 0 ? "all" : std::to_string(o.max_windows).c_str(), o.batch);
  std::fprintf(stderr, "  backend    %s (asked: %s), %d threads\n", backend->name().c_str(), o.backend.c_str(), threads);
  std::fprintf(stderr, "  tokens     %s (tokenized in %.1fs)%s, %s windows of %d\n",
               cli::thousands(tokens.tokens_total).c_str(), tokens.tokenize_seconds,
               tokens.tokens_total > static_cast<int64_t>(tokens.ids.size())
                   ? (", first " + cli::thousands(static_cast<int64_t>(tokens.ids.size())) + " used").c_str()
                   : "",
               cli::thousands(windows_available).c_str(), seqlen);

  cli::Progress progress;
  popt.progress = [&](const ds::PerplexityProgress& p) {
    progress.update(p.windows_done, p.windows_total, cli::strf("ppl %.4f", p.ppl), p.eta_s);
  };
  const ds::PerplexityResult r = ds::evaluate_perplexity(*backend, tokens.ids, popt);
  progress.finish();

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
        {"backend", backend->name() + ", " + std::to_string(threads) + " threads"},
        {"kvq", cli::build_info_text()},
    });
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"kvq-eval: evaluate a model on a dataset (today: perplexity, --task ppl)"};
  Options o;
  app.add_option("--task", o.task, "Evaluation task")->check(CLI::IsMember({"ppl"}))->capture_default_str();
  app.add_option("--model", o.model,
                 "Hugging Face folder or llama2.c .bin (default: $KVQ_MODEL, else ../shared/models/kvq-testbed-llama2-23m)");
  app.add_option("--dataset", o.dataset,
                 "Dataset file, or a name: wikitext2, wikitext2-valid, c4, kvq-docs-valid, ... "
                 "(default: $KVQ_DATA when a file, else wikitext2 under $KVQ_DATA or ../shared/datasets)");
  app.add_option("--protocol", o.protocol, "wikitext, text or c4 (default: from the dataset's name)")
      ->check(CLI::IsMember({"wikitext", "text", "c4"}));
  app.add_option("--tokenizer", o.tokenizer,
                 "tokenizer.json, tokenizer.model, llama2.c tokenizer .bin or a folder (default: the model folder)");
  app.add_option("--seqlen", o.seqlen, "Window length in tokens (0: min(model window, 2048))")
      ->check(CLI::Range(0, 1 << 24))
      ->capture_default_str();
  app.add_option("--max-windows", o.max_windows, "Evaluate only the first N windows (-1: all)")
      ->check(CLI::Range(int64_t{-1}, int64_t{1} << 40))
      ->capture_default_str();
  app.add_option("--batch", o.batch, "Windows per forward call")->check(CLI::PositiveNumber)->capture_default_str();
  cli::add_backend_option(app, o.backend);
  cli::add_threads_option(app, o.threads);
  cli::add_format_option(app, o.format);
  cli::add_version_flag(app, "kvq-eval");

  return kvq::cli::run("kvq-eval", [&]() -> int {
    try {
      app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
      if (e.get_exit_code() == 0) return app.exit(e);  // --help, --version
      throw;
    }
    return run_ppl(o);
  });
}
