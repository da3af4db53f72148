// kvq-convert: calibration file -> quantization profiles (docs/profile-format.md), and the
// tools around profiles: inspect, validate against a model, export vLLM FP8 KV scales.
// The conversion itself is formats/profile_convert.h; this file parses, prints and writes.
//
//   kvq-convert --calib FILE --method kvquant --bits 3 --outliers 1% --sink 1 -o model-kvq3.kvqp
//   kvq-convert --calib FILE --method kvquant,kivi --bits 2,3,4 -o 'out/{method}-{bits}.kvqp'
//   kvq-convert --calib FILE --profile kvquant:bits=3 --profile mikv:bits=2 -o '{method}{bits}.kvqp'
//   kvq-convert --model DIR --method kivi --bits 2 -o kivi2.kvqp      (calibration-free)
//   kvq-convert inspect FILE [--format json] [--no-verify]
//   kvq-convert validate FILE --model DIR
//   kvq-convert export-vllm --calib FILE -o kv_scales.safetensors [--fp8-format e4m3]
//
// The effective configuration goes to stderr first, then one line per profile written on
// stdout (or one JSON document with --format json). Every file is written atomically.
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "formats/calibration.h"
#include "formats/error.h"
#include "formats/fingerprint.h"
#include "formats/mapped_file.h"
#include "formats/profile.h"
#include "formats/profile_convert.h"
#include "formats/safetensors.h"
#include "formats/version.h"
#include "tools/common/cli.h"

namespace {

using namespace kvq;
using nlohmann::json;

constexpr const char* kTool = "kvq-convert";

struct ConvertOptions {
  std::string calib;
  std::string model;
  std::vector<std::string> methods;   // --method (comma lists allowed)
  std::vector<int> bits;              // --bits (comma lists allowed)
  std::string key_bits, value_bits;   // --key-bits / --value-bits
  std::string outliers, sink;         // --outliers / --sink
  std::vector<std::string> profiles;  // --profile METHOD[:k=v,...]
  std::string output;
  bool no_verify = false;
  cli::OutputFormat format = cli::OutputFormat::kText;
};

WriterInfo this_writer() { return WriterInfo{kTool, kVersion, kGitRevision}; }

[[noreturn]] void usage(const std::string& message) {
  throw CLI::ValidationError(message);
}

std::string percent(double f) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g%%", f * 100.0);
  return buf;
}

// The specs one call makes: every --profile, plus --method x --bits with the shared flags.
std::vector<ProfileSpec> collect_specs(const ConvertOptions& o) {
  std::vector<ProfileSpec> specs;
  // Flags shared by every --method profile, applied where the method takes them.
  std::map<std::string, std::string> shared;
  if (!o.key_bits.empty()) shared["key-bits"] = o.key_bits;
  if (!o.value_bits.empty()) shared["value-bits"] = o.value_bits;
  if (!o.outliers.empty()) shared["outliers"] = o.outliers;
  if (!o.sink.empty()) shared["sink"] = o.sink;
  std::set<std::string> used;
  for (const std::string& m : o.methods) {
    ProfileSpec base;
    try {
      base = parse_profile_spec(m);
    } catch (const InvalidArgument& e) {
      usage(std::string("--method: ") + e.message());
    }
    if (m.find(':') != std::string::npos) usage("--method takes a method name; use --profile " + m);
    for (const auto& [k, v] : shared) {
      if (method_takes_option(base.method, k)) {
        base.options[k] = v;
        used.insert(k);
      }
    }
    const bool takes_bits = method_takes_option(base.method, "bits");
    if (takes_bits && !o.bits.empty()) used.insert("bits");
    if (!takes_bits || o.bits.empty()) {
      base.text = m;
      specs.push_back(base);
      continue;
    }
    for (int b : o.bits) {
      ProfileSpec s = base;
      s.options["bits"] = std::to_string(b);
      s.text = m + ":bits=" + std::to_string(b);
      specs.push_back(std::move(s));
    }
  }
  for (const auto& [k, v] : shared) {
    if (!o.methods.empty() && used.count(k) == 0) {
      usage("--" + k + " does not apply to any of the given methods");
    }
  }
  if (!o.bits.empty() && !o.methods.empty() && used.count("bits") == 0) {
    usage("--bits does not apply to any of the given methods (q8_0, q4_0 and fp8 have fixed widths)");
  }
  if (o.methods.empty() && (!o.bits.empty() || !shared.empty())) {
    usage("--bits/--key-bits/--value-bits/--outliers/--sink go with --method; inside --profile write them as KEY=VALUE");
  }
  for (const std::string& p : o.profiles) {
    try {
      specs.push_back(parse_profile_spec(p));
    } catch (const InvalidArgument& e) {
      usage("--profile: " + e.message());
    }
  }
  if (specs.empty()) usage("nothing to convert: give --method (with --bits) or --profile");
  return specs;
}

std::string describe_scheme(const KindScheme& s) {
  std::string d = std::to_string(s.bits) + " bits, per " +
                  (s.axis == QuantAxis::kChannel ? std::string("channel") : std::string("token"));
  if (s.group > 0) d += ", group " + std::to_string(s.group);
  d += s.symmetric ? ", symmetric" : ", asymmetric";
  if (s.range == RangeSource::kStatic) d += ", static range";
  if (s.pre_rope) d += ", pre-RoPE";
  if (s.nuq) d += ", NUQ";
  if (s.outlier_fraction > 0) d += ", outliers " + percent(s.outlier_fraction);
  if (s.qnorm) d += ", Q-Norm";
  if (s.smoothing) d += ", smoothing";
  if (s.fp8_scale == Fp8Scale::kDynamic) d += ", fp8 dynamic scales";
  if (s.fp8_scale == Fp8Scale::kPerHead) d += ", fp8 per-head scales";
  return d;
}

int run_convert(const ConvertOptions& o) {
  if (o.output.empty()) usage("-o/--output is required");
  const std::vector<ProfileSpec> specs = collect_specs(o);
  bool need_calib = false;
  for (const auto& s : specs) need_calib = need_calib || spec_needs_calibration(s);
  if (need_calib && o.calib.empty()) {
    for (const auto& s : specs) {
      if (spec_needs_calibration(s)) {
        usage(s.text + " needs --calib FILE (a kvq-calibrate output)");
      }
    }
  }
  if (o.calib.empty() && o.model.empty()) usage("give --calib FILE, or --model DIR for calibration-free methods");

  // Inputs are read and cross-checked before anything is printed or written.
  std::optional<Calibration> calib;
  if (!o.calib.empty()) calib = read_calibration(o.calib, CalibrationReadOptions{!o.no_verify});
  std::optional<ModelFingerprint> model;
  if (!o.model.empty()) {
    model = compute_fingerprint(o.model);
    if (calib) check_fingerprint(calib->fingerprint, *model, o.calib, "calibration");
  }

  std::vector<Profile> profiles;
  std::vector<std::string> notes;
  for (const auto& s : specs) {
    try {
      profiles.push_back(make_profile(s, calib ? &*calib : nullptr, model ? &*model : nullptr,
                                      this_writer(), &notes));
    } catch (const InvalidArgument& e) {
      throw InvalidArgument(s.text, e.message(), e.hint());
    }
  }
  std::vector<std::string> paths;
  std::set<std::string> seen;
  for (const auto& p : profiles) {
    paths.push_back(expand_output_template(o.output, p));
    if (!seen.insert(paths.back()).second) {
      usage("two profiles would be written to " + paths.back() +
            ": put {method} and {bits} in -o (e.g. -o '{method}-{bits}.kvqp')");
    }
  }

  std::fprintf(stderr, "%s %s (git %s)\n", kTool, kVersion, kGitRevision);
  if (calib) {
    std::fprintf(stderr, "  calibration  %s (%d/%d layers, %s, %lld x %lld tokens, sink %d, outliers %s)\n",
                 o.calib.c_str(), calib->complete_layers, calib->fingerprint.layers,
                 calib->provenance.dataset.c_str(), static_cast<long long>(calib->provenance.sequences),
                 static_cast<long long>(calib->provenance.tokens), calib->sink_tokens,
                 percent(calib->outlier_fraction).c_str());
  }
  if (model) std::fprintf(stderr, "  model        %s\n", o.model.c_str());
  for (size_t i = 0; i < profiles.size(); ++i) {
    std::fprintf(stderr, "  profile      %s -> %s\n", specs[i].text.c_str(), paths[i].c_str());
  }
  for (const auto& n : notes) std::fprintf(stderr, "note: %s\n", n.c_str());

  json out = json::array();
  for (size_t i = 0; i < profiles.size(); ++i) {
    const Profile& p = profiles[i];
    write_profile(paths[i], p);
    const auto size = std::filesystem::file_size(paths[i]);
    if (o.format == cli::OutputFormat::kJson) {
      out.push_back({{"path", paths[i]}, {"method", std::string(method_name(p.method))},
                     {"key_bits", p.keys.bits}, {"value_bits", p.values.bits},
                     {"tensors", p.tensors.size()}, {"bytes", size},
                     {"tensors_sha256", tensors_sha256(p.tensors)}});
    } else {
      std::printf("wrote %s: %s, keys %s; values %s; %zu tensors, %ju bytes\n", paths[i].c_str(),
                  std::string(method_name(p.method)).c_str(), describe_scheme(p.keys).c_str(),
                  describe_scheme(p.values).c_str(), p.tensors.size(), static_cast<uintmax_t>(size));
    }
  }
  if (o.format == cli::OutputFormat::kJson) std::printf("%s\n", out.dump(2).c_str());
  return 0;
}

// ---- inspect -------------------------------------------------------------------------

std::string file_format(const std::string& path) {
  SafetensorsReader st(path);
  auto it = st.metadata().find("format");
  return it == st.metadata().end() ? "" : it->second;
}

json tensor_summary(const std::string& name, const FloatTensor& t) {
  float lo = 0, hi = 0;
  if (!t.data.empty()) {
    lo = hi = t.data[0];
    for (float x : t.data) {
      lo = std::min(lo, x);
      hi = std::max(hi, x);
    }
  }
  return {{"name", name}, {"dtype", "F32"}, {"shape", t.shape}, {"min", lo}, {"max", hi}};
}

void print_tensors(const FloatTensors& tensors) {
  std::printf("tensors (%zu):\n", tensors.size());
  for (const auto& [name, t] : tensors) {
    const json s = tensor_summary(name, t);
    std::printf("  %-34s F32 %-12s min %-12.6g max %.6g\n", name.c_str(), shape_text(t.shape).c_str(),
                s["min"].get<double>(), s["max"].get<double>());
  }
}

void print_fingerprint(const ModelFingerprint& fp) {
  std::printf("fingerprint  %s, %d layers, %d heads / %d kv heads x %d, RoPE %s theta %g\n",
              fp.architecture.c_str(), fp.layers, fp.heads, fp.kv_heads, fp.head_dim,
              fp.rope_layout.c_str(), fp.rope_theta);
  std::printf("             %s sha256 %s\n", fp.config_source.c_str(), fp.config_sha256.c_str());
  std::printf("             k/v weights sha256 %s\n", fp.kv_weights_sha256.c_str());
}

void print_provenance(const CalibrationProvenance& p) {
  std::printf("calibration  %s (sha256 %.16s...), %lld x %lld tokens, seed %llu, %s %s (git %s)\n",
              p.dataset.c_str(), p.dataset_sha256.c_str(), static_cast<long long>(p.sequences),
              static_cast<long long>(p.tokens), static_cast<unsigned long long>(p.seed), p.tool.c_str(),
              p.version.c_str(), p.git_revision.c_str());
}

int run_inspect(const std::string& path, bool no_verify, cli::OutputFormat format) {
  const std::string kind = file_format(path);
  const bool verified = !no_verify;
  if (kind == "kvq-calibration") {
    const Calibration c = read_calibration(path, CalibrationReadOptions{verified});
    if (format == cli::OutputFormat::kJson) {
      json t = json::array();
      for (const auto& [n, v] : c.tensors) t.push_back(tensor_summary(n, v));
      std::printf("%s\n", json{{"file", path}, {"format", "kvq-calibration"}, {"format_version", c.version.str()},
                              {"digest_verified", verified}, {"file_sha256", c.file_sha256},
                              {"calibration", json::parse(calibration_document(c))}, {"tensors", t}}
                              .dump(2).c_str());
      return 0;
    }
    std::printf("file         %s\n", path.c_str());
    std::printf("format       kvq-calibration %s, little-endian, digest %s\n", c.version.str().c_str(),
                verified ? "verified" : "not checked (--no-verify)");
    std::printf("layers       %d of %d complete\n", c.complete_layers, c.fingerprint.layers);
    std::printf("statistics   sink %d, outliers %s (thresholds for", c.sink_tokens, percent(c.outlier_fraction).c_str());
    for (double f : c.outlier_fractions) std::printf(" %s", percent(f).c_str());
    std::printf("), NUQ bits");
    for (int b : c.nuq_bits) std::printf(" %d", b);
    std::printf(", %s\n", c.fisher_weighted ? "Fisher-weighted" : "unweighted");
    if (c.wkvquant) {
      std::printf("wkvquant     bits");
      for (int b : c.wkvquant->bits) std::printf(" %d", b);
      std::printf(", group %d, window %d\n", c.wkvquant->group, c.wkvquant->window);
    }
    print_fingerprint(c.fingerprint);
    print_provenance(c.provenance);
    print_tensors(c.tensors);
    return 0;
  }
  const Profile p = read_profile(path, ProfileReadOptions{verified});
  if (format == cli::OutputFormat::kJson) {
    json t = json::array();
    for (const auto& [n, v] : p.tensors) t.push_back(tensor_summary(n, v));
    std::printf("%s\n", json{{"file", path}, {"format", "kvq-profile"}, {"format_version", p.version.str()},
                            {"digest_verified", verified}, {"profile", json::parse(profile_document(p))},
                            {"tensors", t}}
                            .dump(2).c_str());
    return 0;
  }
  std::printf("file         %s\n", path.c_str());
  std::printf("format       kvq-profile %s, little-endian, digest %s\n", p.version.str().c_str(),
              verified ? "verified" : "not checked (--no-verify)");
  std::printf("method       %s\n", std::string(method_name(p.method)).c_str());
  std::printf("keys         %s\n", describe_scheme(p.keys).c_str());
  std::printf("values       %s\n", describe_scheme(p.values).c_str());
  const ProfileOptions& op = p.options;
  std::printf("options      sink %d", op.sink_tokens);
  if (op.residual > 0) std::printf(", residual %d", op.residual);
  if (op.poq) std::printf(", past-only");
  if (p.method == Method::kHadamard) std::printf(", seed %llu", static_cast<unsigned long long>(op.hadamard_seed));
  if (p.method == Method::kFp8) std::printf(", %s", op.fp8_format == Fp8Format::kE4M3 ? "e4m3" : "e5m2");
  if (p.method == Method::kMikv) {
    std::printf(", high share %g, recent %d, high %s, balancer %s", op.mikv_high_share, op.mikv_recent,
                op.mikv_high == MikvHigh::kFp16 ? "fp16" : "int8", op.balancer ? "on" : "off");
  }
  std::printf("\n");
  if (p.layers.empty()) {
    std::printf("layers       %d, all alike\n", p.fingerprint.layers);
  } else {
    for (size_t i = 0; i < p.layers.size(); ++i) {
      std::printf("layer %-6zu keys %s; values %s\n", i, describe_scheme(p.layers[i].keys).c_str(),
                  describe_scheme(p.layers[i].values).c_str());
    }
  }
  print_fingerprint(p.fingerprint);
  if (p.calibration) {
    print_provenance(p.calibration->provenance);
    std::printf("             calibration file sha256 %s\n", p.calibration->file_sha256.c_str());
  } else {
    std::printf("calibration  none (calibration-free)\n");
  }
  std::printf("writer       %s %s (git %s)\n", p.writer.tool.c_str(), p.writer.version.c_str(),
              p.writer.git_revision.c_str());
  print_tensors(p.tensors);
  return 0;
}

// ---- validate ------------------------------------------------------------------------

int run_validate(const std::string& path, const std::string& model_path, bool no_verify) {
  const std::string kind = file_format(path);
  ModelFingerprint stored;
  const char* label = "profile";
  if (kind == "kvq-calibration") {
    stored = read_calibration(path, CalibrationReadOptions{!no_verify}).fingerprint;
    label = "calibration";
  } else {
    stored = read_profile(path, ProfileReadOptions{!no_verify}).fingerprint;
  }
  const ModelFingerprint model = compute_fingerprint(model_path);
  check_fingerprint(stored, model, path, label);
  std::printf("%s: ok, %s matches %s\n", path.c_str(), label, model_path.c_str());
  return 0;
}

// ---- export-vllm ---------------------------------------------------------------------

int run_export_vllm(const std::string& calib_path, const std::string& output,
                    const std::string& fp8_format, bool no_verify) {
  const Calibration c = read_calibration(calib_path, CalibrationReadOptions{!no_verify});
  const Fp8Format f = fp8_format == "e5m2" ? Fp8Format::kE5M2 : Fp8Format::kE4M3;
  const FloatTensors scales = vllm_kv_scales(c, f);
  std::fprintf(stderr, "%s %s (git %s)\n  calibration  %s\n  fp8 format   %s (max finite %g)\n  output       %s\n",
               kTool, kVersion, kGitRevision, calib_path.c_str(), fp8_format.c_str(),
               static_cast<double>(fp8_max_finite(f)), output.c_str());
  // "format": "pt" is what transformers' safetensors loaders expect to find.
  write_safetensors(output, tensor_views(scales),
                    {{"format", "pt"},
                     {"kvq", json{{"source", "kvq-convert export-vllm"},
                                  {"calibration_sha256", c.file_sha256},
                                  {"fp8_format", fp8_format},
                                  {"scale", "absmax / max_finite; keys post-RoPE, all calibration tokens"}}
                                 .dump()}});
  std::printf("wrote %s: %zu scales (k_scale, v_scale for %d layers)\n", output.c_str(), scales.size(),
              c.fingerprint.layers);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return cli::run(kTool, [&]() -> int {
    CLI::App app{"kvq-convert: turn a kvq calibration file into KV-cache quantization profiles "
                 "(docs/profile-format.md)"};
    cli::add_version_flag(app, kTool);
    app.require_subcommand(0, 1);
    ConvertOptions o;
    app.add_option("--calib", o.calib, "Calibration file written by kvq-calibrate")->check(CLI::ExistingFile);
    app.add_option("--model", o.model,
                   "Model folder (HF) or llama2.c .bin: the fingerprint for calibration-free methods, "
                   "and a cross-check of --calib");
    app.add_option("--method", o.methods,
                   "Methods: int, kivi, kvquant, wkvquant, mikv, q8_0, q4_0, fp8, hadamard (comma list)")
        ->delimiter(',');
    app.add_option("--bits", o.bits, "Bit widths for --method (comma list, one profile each)")
        ->delimiter(',')
        ->check(CLI::Range(1, 16));
    app.add_option("--key-bits", o.key_bits, "Key bits for --method (overrides --bits for keys)");
    app.add_option("--value-bits", o.value_bits, "Value bits for --method (overrides --bits for values)");
    app.add_option("--outliers", o.outliers, "Outlier fraction for kvquant, e.g. 1% or 0.01 (default: the calibration's)");
    app.add_option("--sink", o.sink, "Attention-sink tokens kept in fp16 (default: kvquant the calibration's, else 0)");
    app.add_option("--profile", o.profiles,
                   "A profile spec METHOD[:KEY=VALUE,...], e.g. kvquant:bits=3,outliers=1% (repeatable)");
    app.add_option("-o,--output", o.output,
                   "Output file; {method} and {bits} are replaced (needed when several profiles are made)");
    app.add_flag("--no-verify", o.no_verify, "Skip the tensor digest check of the calibration file");
    cli::add_format_option(app, o.format);

    std::string file, model;
    bool no_verify = false;
    cli::OutputFormat format = cli::OutputFormat::kText;
    CLI::App* inspect = app.add_subcommand("inspect", "Print a profile's (or calibration file's) header, fingerprint, provenance and tensors");
    inspect->add_option("file", file, "Profile (.kvqp) or calibration file")->required()->check(CLI::ExistingFile);
    inspect->add_flag("--no-verify", no_verify, "Skip the tensor digest check");
    cli::add_format_option(*inspect, format);

    CLI::App* validate = app.add_subcommand("validate", "Check that a profile was made for a model (exit 0) or say why not (exit 1)");
    validate->add_option("file", file, "Profile (.kvqp) or calibration file")->required()->check(CLI::ExistingFile);
    validate->add_option("--model", model, "Model folder (HF) or llama2.c .bin")->required();
    validate->add_flag("--no-verify", no_verify, "Skip the tensor digest check");

    std::string calib, output, fp8_format = "e4m3";
    CLI::App* vllm = app.add_subcommand("export-vllm", "Write vLLM FP8 KV-cache scales (k_scale/v_scale per layer) from a calibration file");
    vllm->add_option("--calib", calib, "Calibration file")->required()->check(CLI::ExistingFile);
    vllm->add_option("-o,--output", output, "Output .safetensors")->required();
    vllm->add_option("--fp8-format", fp8_format, "e4m3 (max 448) or e5m2 (max 57344)")
        ->check(CLI::IsMember({"e4m3", "e5m2"}))
        ->capture_default_str();
    vllm->add_flag("--no-verify", no_verify, "Skip the tensor digest check");

    try {
      app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
      return app.exit(e) == 0 ? 0 : 2;
    }
    try {
      if (inspect->parsed()) return run_inspect(file, no_verify, format);
      if (validate->parsed()) return run_validate(file, model, no_verify);
      if (vllm->parsed()) return run_export_vllm(calib, output, fp8_format, no_verify);
      return run_convert(o);
    } catch (const CLI::ValidationError& e) {
      std::fprintf(stderr, "%s: error: %s\n", kTool, e.what());
      std::fprintf(stderr, "hint: %s --help shows every option\n", kTool);
      return 2;
    }
  });
}
