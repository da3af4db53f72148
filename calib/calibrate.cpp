// kvq-calibrate's pipeline (see calibrate.h).
#include "calib/calibrate.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>

#include "calib/crr.h"
#include "calib/key_ranges.h"
#include "calib/serial_products.h"
#include "calib/signposts.h"
#include "calib/thresholds.h"
#include "formats/error.h"
#include "formats/version.h"
#include "lib/backward/cpu_gradient.h"
#if KVQ_HAVE_CUDA
#include "lib/cuda/cuda_gradient.h"
#endif

namespace fs = std::filesystem;

namespace kvq::calib {

namespace {

constexpr char kMagic[8] = {'K', 'V', 'Q', 'S', 'P', 'I', 'L', '1'};

// Spill file: magic, i32 layers, seqlen, q_dim, kv_dim, i64 start, f64 loss, then per
// layer: qabs[q_dim], kabs[kv_dim], vabs[kv_dim], K, V, dK, dV (each [seqlen, kv_dim]).
struct SpillHeader {
  char magic[8];
  int32_t layers, seqlen, q_dim, kv_dim;
  int64_t start;
  double loss;
};
static_assert(sizeof(SpillHeader) == 40, "spill header layout");

struct Shape {
  int layers, seqlen, q_dim, kv_dim;
  int64_t mat() const { return static_cast<int64_t>(seqlen) * kv_dim; }
  int64_t layer_floats() const { return q_dim + 2 * kv_dim + 4 * mat(); }
  int64_t file_bytes() const {
    return static_cast<int64_t>(sizeof(SpillHeader)) + layers * layer_floats() * 4;
  }
};

std::string spill_path(const std::string& dir, size_t i) {
  return dir + "/seq" + std::to_string(i) + ".bin";
}

// A finished spill file of sequence i (right size and header); its loss when valid.
bool spill_valid(const std::string& path, const Shape& sh, int64_t start, double* loss) {
  std::error_code ec;
  if (!fs::exists(path, ec) || static_cast<int64_t>(fs::file_size(path, ec)) != sh.file_bytes()) return false;
  std::ifstream in(path, std::ios::binary);
  SpillHeader h{};
  if (!in.read(reinterpret_cast<char*>(&h), sizeof h)) return false;
  if (std::memcmp(h.magic, kMagic, 8) != 0 || h.layers != sh.layers || h.seqlen != sh.seqlen ||
      h.q_dim != sh.q_dim || h.kv_dim != sh.kv_dim || h.start != start) {
    return false;
  }
  *loss = h.loss;
  return true;
}

void write_all(std::ofstream& out, const float* p, int64_t n, const std::string& path) {
  out.write(reinterpret_cast<const char*>(p), static_cast<std::streamsize>(n * 4));
  if (!out) throw IoError(path, "cannot write the calibration spill file (disk full?)");
}

// One forward+backward pass on the chosen backend (CPU or CUDA: the same LayerView).
struct BackwardEngine {
  std::function<double(std::span<const int32_t>, const CpuGradient<float>::LayerVisitor&)> backward;
  std::function<size_t()> peak_bytes = [] { return size_t{0}; };
  bool concurrent = false;  // backward() may run on several threads at once (the CPU one)
};

BackwardEngine make_backward_engine(const std::string& backend, const std::shared_ptr<const Model>& model) {
  BackwardEngine e;
  if (backend == "cpu") {
    auto g = std::make_shared<const CpuGradient<float>>(model);
    e.backward = [g](std::span<const int32_t> s, const CpuGradient<float>::LayerVisitor& v) { return g->backward(s, v); };
    e.concurrent = true;
    return e;
  }
  if (backend == "cuda" || backend.rfind("cuda:", 0) == 0) {
#if KVQ_HAVE_CUDA
    CudaGradientOptions o;
    if (backend.size() > 5) {
      try {
        o.device = std::stoi(backend.substr(5));
      } catch (const std::exception&) {
        throw InvalidArgument("--backend", "'" + backend + "' is not cuda:N");
      }
    }
    auto g = std::make_shared<CudaGradient>(model, o);
    e.backward = [g](std::span<const int32_t> s, const CpuGradient<float>::LayerVisitor& v) { return g->backward(s, v); };
    e.peak_bytes = [g] { return g->peak_device_bytes(); };
    return e;
#else
    throw UnsupportedError("--backend", "this build of kvq has no CUDA backend",
                           "rebuild with -DKVQ_CUDA=ON on a machine with the CUDA toolkit, or use --backend cpu");
#endif
  }
  throw InvalidArgument("--backend", "unknown backend '" + backend + "'", "one of: cpu, cuda, cuda:N, auto");
}

void capture_sequence(const BackwardEngine& grad, std::span<const int32_t> seq,
                      const Shape& sh, int64_t start, const std::string& path, double* loss_out) {
  // Gradients arrive in layer order L-1 .. 0; keep the per-layer blocks until the end.
  std::vector<std::vector<float>> blocks(static_cast<size_t>(sh.layers));
  const double loss = grad.backward(seq, [&](const CpuGradient<float>::LayerView& v) {
    std::vector<float>& b = blocks[static_cast<size_t>(v.layer)];
    b.assign(static_cast<size_t>(sh.layer_floats()), 0.0f);
    float* qabs = b.data();
    float* kabs = qabs + sh.q_dim;
    float* vabs = kabs + sh.kv_dim;
    for (int t = 0; t < sh.seqlen; ++t) {
      for (int c = 0; c < sh.q_dim; ++c) qabs[c] = std::max(qabs[c], std::fabs((*v.q_post_rope)(t, c)));
      for (int c = 0; c < sh.kv_dim; ++c) {
        kabs[c] = std::max(kabs[c], std::fabs((*v.k_post_rope)(t, c)));
        vabs[c] = std::max(vabs[c], std::fabs((*v.v)(t, c)));
      }
    }
    float* p = vabs + sh.kv_dim;
    for (const auto* m : {v.k_pre_rope, v.v, v.dk_pre_rope, v.dv}) {
      std::copy(m->data(), m->data() + sh.mat(), p);
      p += sh.mat();
    }
  });
  if (!std::isfinite(loss)) throw Error(path, "the loss of sequence at token " + std::to_string(start) + " is not finite");
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw IoError(tmp, "cannot create the calibration spill file");
    SpillHeader h{};
    std::memcpy(h.magic, kMagic, 8);
    h.layers = sh.layers;
    h.seqlen = sh.seqlen;
    h.q_dim = sh.q_dim;
    h.kv_dim = sh.kv_dim;
    h.start = start;
    h.loss = loss;
    out.write(reinterpret_cast<const char*>(&h), sizeof h);
    for (const auto& b : blocks) write_all(out, b.data(), static_cast<int64_t>(b.size()), tmp);
    out.close();
    if (!out) throw IoError(tmp, "cannot write the calibration spill file (disk full?)");
  }
  fs::rename(tmp, path);
  *loss_out = loss;
}

// One layer's block of every sequence, read back from the spill files.
struct LayerData {
  std::vector<float> qabs, kabs, vabs;  // max over sequences
  std::vector<std::vector<float>> k, v, dk, dv;  // per sequence [seqlen, kv_dim]
};

LayerData read_layer(const std::string& dir, size_t nseq, const Shape& sh, int layer) {
  LayerData d;
  d.qabs.assign(static_cast<size_t>(sh.q_dim), 0.0f);
  d.kabs.assign(static_cast<size_t>(sh.kv_dim), 0.0f);
  d.vabs.assign(static_cast<size_t>(sh.kv_dim), 0.0f);
  std::vector<float> b(static_cast<size_t>(sh.layer_floats()));
  for (size_t i = 0; i < nseq; ++i) {
    const std::string path = spill_path(dir, i);
    std::ifstream in(path, std::ios::binary);
    const int64_t off = static_cast<int64_t>(sizeof(SpillHeader)) + layer * sh.layer_floats() * 4;
    in.seekg(off);
    if (!in.read(reinterpret_cast<char*>(b.data()), static_cast<std::streamsize>(b.size() * 4))) {
      throw FormatError(path, off, "spill file truncated while reading layer " + std::to_string(layer),
                        "delete the work folder and run again without --resume");
    }
    const float* p = b.data();
    for (int c = 0; c < sh.q_dim; ++c) d.qabs[c] = std::max(d.qabs[c], p[c]);
    p += sh.q_dim;
    for (int c = 0; c < sh.kv_dim; ++c) d.kabs[c] = std::max(d.kabs[c], p[c]);
    p += sh.kv_dim;
    for (int c = 0; c < sh.kv_dim; ++c) d.vabs[c] = std::max(d.vabs[c], p[c]);
    p += sh.kv_dim;
    for (auto* dst : {&d.k, &d.v, &d.dk, &d.dv}) {
      dst->emplace_back(p, p + sh.mat());
      p += sh.mat();
    }
  }
  return d;
}

FloatTensor tensor(std::vector<int64_t> shape, std::vector<float> data) {
  FloatTensor t;
  t.shape = std::move(shape);
  t.data = std::move(data);
  return t;
}

// Mean and standard deviation over the non-sink rows, accumulated in double.
std::vector<float> moments(const std::vector<std::vector<float>>& seqs, int sink, const Shape& sh) {
  double s = 0, s2 = 0;
  int64_t n = 0;
  for (const auto& m : seqs) {
    for (int64_t i = static_cast<int64_t>(sink) * sh.kv_dim; i < sh.mat(); ++i) {
      s += m[static_cast<size_t>(i)];
      s2 += static_cast<double>(m[static_cast<size_t>(i)]) * m[static_cast<size_t>(i)];
      ++n;
    }
  }
  const double mean = s / static_cast<double>(n);
  const double var = std::max(0.0, s2 / static_cast<double>(n) - mean * mean);
  return {static_cast<float>(mean), static_cast<float>(std::sqrt(var))};
}

void check_options(const CalibrateOptions& o, const ModelConfig& cfg) {
  if (o.starts.empty()) throw InvalidArgument("--nseq", "no calibration sequences");
  if (o.seqlen < 2 || o.seqlen > cfg.max_position) {
    throw InvalidArgument("--seqlen", std::to_string(o.seqlen) + " outside 2.." + std::to_string(cfg.max_position));
  }
  if (o.sink < 0 || o.sink >= o.seqlen) {
    throw InvalidArgument("--sink", std::to_string(o.sink) + " sink tokens leave nothing of " +
                                        std::to_string(o.seqlen) + "-token sequences");
  }
  if (o.output.empty()) throw InvalidArgument("-o", "no output path");
  for (int b : o.bits) {
    if (b < 1 || b > 8) throw InvalidArgument("--bits", std::to_string(b) + " outside 1..8");
  }
  check_weighting(o.weighting, "--fisher-clip/--uniform-mix");
}

}  // namespace

CalibrateSummary run_calibration(std::shared_ptr<const Model> model, std::span<const int32_t> ids,
                                 const CalibrateOptions& opt, Calibration base,
                                 const ProgressFn& progress) {
  const ModelConfig& cfg = model->config();
  check_options(opt, cfg);
  const Shape sh{cfg.n_layers, opt.seqlen, cfg.q_dim(), cfg.kv_dim()};
  const std::string work = opt.work_dir.empty() ? opt.output + ".work" : opt.work_dir;
  const size_t nseq = opt.starts.size();

  // The header of the file; fractions sorted and containing the fit's fraction.
  std::vector<double> fractions = opt.outlier_fractions;
  if (opt.outlier_fraction > 0) fractions.push_back(opt.outlier_fraction);
  std::sort(fractions.begin(), fractions.end());
  fractions.erase(std::unique(fractions.begin(), fractions.end()), fractions.end());
  std::vector<int> bits = opt.bits;
  std::sort(bits.begin(), bits.end());
  bits.erase(std::unique(bits.begin(), bits.end()), bits.end());
  base.sink_tokens = opt.sink;
  base.outlier_fraction = opt.outlier_fraction;
  base.outlier_fractions = fractions;
  base.nuq_bits = bits;
  base.fisher_weighted = true;
  base.signpost_clip_quantile = opt.weighting.clip_quantile;
  base.signpost_uniform_mix = opt.weighting.uniform_mix;
  base.wkvquant.reset();
  base.complete_layers = 0;
  base.tensors.clear();

  CalibrateSummary sum;
  std::error_code ec;
  if (opt.resume && fs::exists(opt.output, ec)) {
    Calibration prev = read_calibration(opt.output);
    check_fingerprint(prev.fingerprint, base.fingerprint, opt.output, "calibration");
    if (!(prev.provenance == base.provenance) || prev.sink_tokens != base.sink_tokens ||
        prev.outlier_fraction != base.outlier_fraction || prev.outlier_fractions != base.outlier_fractions ||
        prev.nuq_bits != base.nuq_bits || prev.signpost_clip_quantile != base.signpost_clip_quantile ||
        prev.signpost_uniform_mix != base.signpost_uniform_mix) {
      throw InvalidArgument(opt.output, "cannot resume: the file was made with other data or settings",
                            "run without --resume to start over");
    }
    base.tensors = prev.tensors;
    base.complete_layers = prev.complete_layers;
    sum.resumed_layers = prev.complete_layers;
    // A finished CRR fit is kept when it was made for the same bits, group and window;
    // otherwise its tensors go and CRR runs again at the end.
    if (prev.wkvquant && opt.crr && prev.complete_layers == cfg.n_layers &&
        prev.wkvquant->bits == bits && prev.wkvquant->window == std::min(opt.crr_options.window, cfg.n_layers) &&
        prev.wkvquant->group == (opt.crr_options.group > 0 ? opt.crr_options.group : cfg.head_dim)) {
      base.wkvquant = prev.wkvquant;
      sum.crr_resumed = true;
    } else {
      for (auto it = base.tensors.begin(); it != base.tensors.end();) {
        const bool smooth = it->first.find(".smooth_delta") != std::string::npos ||
                            it->first.find(".smooth_scale") != std::string::npos;
        it = smooth ? base.tensors.erase(it) : std::next(it);
      }
    }
  } else if (!opt.resume) {
    fs::remove_all(work, ec);
  }
  fs::create_directories(work, ec);
  if (ec) throw IoError(work, "cannot create the work folder: " + ec.message());

  // 1. Capture.
  const auto t0 = std::chrono::steady_clock::now();
  sum.seq_loss.assign(nseq, 0.0);
  if (base.complete_layers < cfg.n_layers) {
    const BackwardEngine grad = make_backward_engine(opt.backend, model);
    std::vector<size_t> todo;
    for (size_t i = 0; i < nseq; ++i) {
      const int64_t s = opt.starts[i];
      if (s < 0 || s + opt.seqlen > static_cast<int64_t>(ids.size())) {
        throw InvalidArgument("starts", "sequence start " + std::to_string(s) + " outside the token stream");
      }
      if (opt.resume && spill_valid(spill_path(work, i), sh, s, &sum.seq_loss[i])) {
        ++sum.resumed_sequences;
      } else {
        todo.push_back(i);
      }
    }
    int64_t done = sum.resumed_sequences;
    if (progress && done > 0) progress("capture", done, static_cast<int64_t>(nseq));
    // Thread-count independent bytes (calib/serial_products.h): Eigen's products run on one
    // thread each, and on the CPU the sequences run side by side, one per thread (a team of
    // one leaves the threads to the backward pass's own head and row loops). Each sequence's
    // arithmetic is then the same for any thread count, and the spill files do not depend
    // on the order in which sequences finish.
    // Memory: each sequence in flight holds its spill blocks (all layers, until written) and
    // the backward pass's layer checkpoints; the team is capped so that these stay within
    // kCaptureBytes (the team size does not change any byte of the output). Testbed at
    // 1024 tokens: 47 MB per sequence; Llama-2-7B at 2048: 5.4 GB, so one at a time.
    constexpr int64_t kCaptureBytes = int64_t{8} << 30;
    const int64_t per_seq = sh.file_bytes() + int64_t{4} * sh.layers * sh.seqlen * cfg.hidden;
    const int64_t fit = std::max<int64_t>(1, kCaptureBytes / std::max<int64_t>(1, per_seq));
    const SerialEigenProducts serial;
    const int team = grad.concurrent
                         ? static_cast<int>(std::min<int64_t>({static_cast<int64_t>(todo.size()),
                                                               std::max(1, omp_get_max_threads()), fit}))
                         : 1;
    std::vector<std::exception_ptr> errors(todo.size());
    std::atomic<bool> failed{false};
#pragma omp parallel for schedule(dynamic, 1) num_threads(std::max(team, 1))
    for (int64_t j = 0; j < static_cast<int64_t>(todo.size()); ++j) {
      if (failed.load()) continue;
      const size_t i = todo[static_cast<size_t>(j)];
      const int64_t s = opt.starts[i];
      try {
        capture_sequence(grad, ids.subspan(static_cast<size_t>(s), static_cast<size_t>(opt.seqlen)), sh, s,
                         spill_path(work, i), &sum.seq_loss[i]);
      } catch (...) {
        errors[static_cast<size_t>(j)] = std::current_exception();
        failed.store(true);
        continue;
      }
#pragma omp critical(kvq_calib_capture_progress)
      {
        ++done;
        if (progress) progress("capture", done, static_cast<int64_t>(nseq));
      }
    }
    // The error of the lowest-numbered failed sequence (the same one a serial run reports
    // when only one fails).
    for (const std::exception_ptr& e : errors) {
      if (e) std::rethrow_exception(e);
    }
    sum.gpu_peak_bytes = grad.peak_bytes();
  }
  const auto t1 = std::chrono::steady_clock::now();
  sum.capture_seconds = std::chrono::duration<double>(t1 - t0).count();

  // 2. Fit, layer by layer, writing the file after each.
  sum.layers.resize(static_cast<size_t>(cfg.n_layers));
  const int D = cfg.kv_dim(), hd = cfg.head_dim;
  const int last = opt.stop_after_layers > 0 ? std::min(cfg.n_layers, base.complete_layers + opt.stop_after_layers)
                                             : cfg.n_layers;
  // Phase times (fit_seconds = these + the file writes); names as in the JSON summary.
  using Clock = std::chrono::steady_clock;
  auto secs = [](Clock::time_point a) { return std::chrono::duration<double>(Clock::now() - a).count(); };
  for (int l = base.complete_layers; l < last; ++l) {
    auto tp = Clock::now();
    const LayerData d = read_layer(work, nseq, sh, l);
    sum.spill_read_seconds += secs(tp);
    tp = Clock::now();
    std::vector<RowsView> kview, vview;
    for (size_t i = 0; i < nseq; ++i) {
      kview.push_back({d.k[i].data() + static_cast<int64_t>(opt.sink) * D, opt.seqlen - opt.sink, D});
      vview.push_back({d.v[i].data() + static_cast<int64_t>(opt.sink) * D, opt.seqlen - opt.sink, D});
    }
    FloatTensors& T = base.tensors;
    // Ranges, thresholds and moments: one gather and one multi-rank selection per channel
    // and kind (calib/thresholds.h per_channel_order_stats), for all fractions at once.
    std::vector<double> tails;
    for (double f : fractions) tails.push_back(f / 2);
    const ChannelOrderStats vr = per_channel_order_stats(vview, 0, {});
    const ChannelOrderStats kt = per_channel_order_stats(kview, 0, tails);
    std::vector<float> krange, vrange, kthr;
    std::vector<float> fit_lo = kt.min, fit_hi = kt.max;
    krange = kt.min;
    krange.insert(krange.end(), kt.max.begin(), kt.max.end());
    vrange = vr.min;
    vrange.insert(vrange.end(), vr.max.begin(), vr.max.end());
    // The fit fraction's row: the same total outlier budget, allocated across channels
    // and tails by Fisher weight (calib/key_ranges.h); it becomes the profile's static key
    // range, and the signposts and Q-Norm are fitted on it. The other rows stay plain
    // percentiles (kvq-convert --outliers F for another F). Why: on kvq-docs valid.txt
    // (the development set) it gave lower 2/3/4-bit PPL than the percentile row
    // (docs/calibrate.md, "Static key ranges").
    std::vector<RowsView> gview;
    for (size_t i = 0; i < nseq; ++i) gview.push_back({d.dk[i].data() + static_cast<int64_t>(opt.sink) * D, opt.seqlen - opt.sink, D});
    KeyRangeFit kr;
    if (opt.outlier_fraction > 0) kr = fisher_key_ranges(kview, gview, opt.outlier_fraction / 2);
    for (size_t fi = 0; fi < fractions.size(); ++fi) {
      const bool fit_row = fractions[fi] == opt.outlier_fraction;
      const std::vector<float>& lo = fit_row ? kr.lo : kt.lo[fi];
      const std::vector<float>& hi = fit_row ? kr.hi : kt.hi[fi];
      kthr.insert(kthr.end(), lo.begin(), lo.end());
      kthr.insert(kthr.end(), hi.begin(), hi.end());
      if (fit_row) {
        fit_lo = lo;
        fit_hi = hi;
      }
    }
    T[calibration_tensor_name(l, 'k', "channel_range")] = tensor({2, D}, krange);
    T[calibration_tensor_name(l, 'v', "channel_range")] = tensor({2, D}, vrange);
    T[calibration_tensor_name(l, 'k', "moments")] = tensor({2}, moments(d.k, opt.sink, sh));
    T[calibration_tensor_name(l, 'v', "moments")] = tensor({2}, moments(d.v, opt.sink, sh));
    if (!fractions.empty()) {
      T[calibration_tensor_name(l, 'k', "outlier_threshold")] =
          tensor({static_cast<int64_t>(fractions.size()), 2, D}, kthr);
    }
    sum.thresholds_seconds += secs(tp);
    tp = Clock::now();
    // Fisher-weighted points (sequences side by side, concatenated in order).
    std::vector<float> ku, kw, vu, vw;
    std::vector<PointRows> kp, vp;
    const int64_t off = static_cast<int64_t>(opt.sink) * D;
    const int64_t rows = opt.seqlen - opt.sink;
    for (size_t i = 0; i < nseq; ++i) {
      kp.push_back({d.k[i].data() + off, d.dk[i].data() + off, rows});
      vp.push_back({d.v[i].data() + off, d.dv[i].data() + off, rows});
    }
    key_points(kp, D, fit_lo, fit_hi, ku, kw);
    value_points(vp, D, hd, opt.outlier_fraction, vu, vw);
    LayerFitSummary& ls = sum.layers[static_cast<size_t>(l)];
    ls.k_points = static_cast<int64_t>(ku.size());
    ls.v_points = static_cast<int64_t>(vu.size());
    // Robust weights (off by default): clipped F and/or a uniform share, per layer and kind.
    apply_weighting(ku, kw, opt.weighting);
    apply_weighting(vu, vw, opt.weighting);
    // Each kind's points are binned once for all bit widths (SignpostFitter), and the
    // (kind, bits) fits with their Q-Norm run side by side: they are independent, and each
    // one's arithmetic does not depend on which thread runs it.
    // The fitters are built one after the other: binning is parallel inside.
    const SignpostFitter kfitter(ku, kw), vfitter(vu, vw);
    const SignpostFitter* fitters[2] = {&kfitter, &vfitter};
    const int nb = static_cast<int>(bits.size());
    std::vector<SignpostFit> fits(static_cast<size_t>(2 * nb));
    std::vector<std::pair<float, float>> qn(fits.size());
    std::vector<std::exception_ptr> fit_errors(fits.size());
#pragma omp parallel for schedule(dynamic, 1)
    for (int t = 0; t < 2 * nb; ++t) {
      // Largest k first (t = 0, 1 are the widest bits): they take longest.
      const int kind = t % 2, b = bits[static_cast<size_t>(nb - 1 - t / 2)];
      try {
        const SignpostFit f = fitters[kind]->fit(b);
        QNormAccumulator q;
        for (size_t i = 0; i < nseq; ++i) {
          if (kind == 0) {
            qnorm_add_keys(d.k[i].data() + off, rows, D, fit_lo, fit_hi, f.signposts, q);
          } else {
            qnorm_add_values(d.v[i].data() + off, rows, D, hd, opt.outlier_fraction, f.signposts, q);
          }
        }
        qn[static_cast<size_t>(t)] = q.fit();
        fits[static_cast<size_t>(t)] = f;
      } catch (...) {
        fit_errors[static_cast<size_t>(t)] = std::current_exception();
      }
    }
    for (const std::exception_ptr& e : fit_errors) {
      if (e) std::rethrow_exception(e);
    }
    for (int bi = 0; bi < nb; ++bi) {
      const int b = bits[static_cast<size_t>(bi)];
      const size_t tk = static_cast<size_t>(2 * (nb - 1 - bi)), tv = tk + 1;
      ls.k_cost.push_back(fits[tk].cost);
      ls.v_cost.push_back(fits[tv].cost);
      T[calibration_bits_name(l, KvKind::kKeys, b, "signposts")] = tensor({int64_t{1} << b}, fits[tk].signposts);
      T[calibration_bits_name(l, KvKind::kValues, b, "signposts")] = tensor({int64_t{1} << b}, fits[tv].signposts);
      T[calibration_bits_name(l, KvKind::kKeys, b, "qnorm")] = tensor({2}, {qn[tk].first, qn[tk].second});
      T[calibration_bits_name(l, KvKind::kValues, b, "qnorm")] = tensor({2}, {qn[tv].first, qn[tv].second});
    }
    sum.signposts_seconds += secs(tp);
    T[calibration_tensor_name(l, 'q', "post_rope_absmax")] = tensor({cfg.q_dim()}, d.qabs);
    T[calibration_tensor_name(l, 'k', "post_rope_absmax")] = tensor({D}, d.kabs);
    T[calibration_tensor_name(l, 'v', "absmax")] = tensor({D}, d.vabs);
    base.complete_layers = l + 1;
    write_calibration(opt.output, base);
    if (progress) progress("fit", l + 1, cfg.n_layers);
  }
  sum.complete_layers = base.complete_layers;
  sum.fit_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();

  // 3. WKVQuant CRR on the same sequences (CPU), once every layer is written.
  if (opt.crr && base.complete_layers == cfg.n_layers && !base.wkvquant) {
    std::vector<std::span<const int32_t>> seqs;
    for (int64_t s : opt.starts) {
      if (s < 0 || s + opt.seqlen > static_cast<int64_t>(ids.size())) {
        throw InvalidArgument("starts", "sequence start " + std::to_string(s) + " outside the token stream");
      }
      seqs.push_back(ids.subspan(static_cast<size_t>(s), static_cast<size_t>(opt.seqlen)));
    }
    CrrOptions co = opt.crr_options;
    co.bits = bits;
    co.sink = opt.sink;
    const CpuGradient<float> grad(model);
    sum.crr = run_crr(grad, seqs, co, [&](int b, int block, double before, double after, int64_t done, int64_t total) {
      if (opt.crr_progress) opt.crr_progress(b, block, before, after, done, total);
      if (progress) progress("crr", done, total);
    });
    store_crr(*sum.crr, base);
    write_calibration(opt.output, base);
  }
  if (base.complete_layers == cfg.n_layers) fs::remove_all(work, ec);
  return sum;
}

}  // namespace kvq::calib
