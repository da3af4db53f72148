// kvq-kvbench: speed of decode attention over the packed KV cache (not a test). One layer,
// one new query per sequence, for each head shape (Llama-2-7B: 32 heads x 128, MHA;
// Llama-3-8B: 32 query / 8 kv heads x 128), batch and context, against the fp16 decode
// kernel (kernels/attention_decode.cu) in the same run. Bytes are counted first (every
// byte the kernel must read: codes, scales/zeros, channel metadata, fp16 residual/sinks,
// outlier offsets and records) and turned into effective GB/s; the floor is bytes over the
// measured device-to-device copy bandwidth (bytes read + written, METHOD.md).
// Cache contents: uniform random rows with planted outlier channels (every 32nd channel
// x6), appended through the real append kernels in chunks of 4096 tokens.
// Caches come from make_packed_cache (lib/cuda/packed_more.h), so every codec with a GPU
// packed cache can be benchmarked; a codec without one prints a "skipped" line on stderr
// and the sweep goes on.
// The environment variable KVQ_KV_DECODE forces one decode kernel of PackedKvCache
// (lib/cuda/packed_cache.cpp; docs/cuda.md lists the kernels and every switch): for KVQuant caches
// kvq-fold2|kvq-foldm (default: kvq-fold2 at G = 1, kvq-foldm at G > 1; kvq-fold, kvq-mma and
// kvq-stream retired in session 7), for the others general|fast|fast-pf|mma-stream (default:
// version 4 of the tensor-core kernel, kernels/kv_decode_stream.cu, where it applies: uniform
// per-token int2/int4 and KIVI at G <= 2, or G <= 4 with 32-channel value groups, head_dim 128;
// else the fast kernel where it applies, else the general one); retired kernels' values are errors
// (notes/kv-cuda-perf.md "Retired kernels"). The header line on stderr names it, so tables of
// different variants stay apart. The acceptance-4 table: scripts/bench/kv_bench.sh.
// --ab NAME=v1,v2,... times every packed cache once per value of the environment variable NAME (set
// before each timing, restored after), on the same cache contents in the same process, so an A/B
// needs no second fill or process; only variables the decode reads on every call work:
// KVQ_KV_STAGE, KVQ_KV_COMBINE=pdl|1|0, KVQ_KV_OPT, KVQ_KV_ILP, KVQ_KV_WSM, KVQ_KV_KIVI=0|1,
// KVQ_KV_SPAN=stage (kernels/kv_decode_stream.cu) and KVQ_KV_DECODE for KVQuant caches;
// KVQ_KV_DECODE for the other codecs and KVQ_KV_FOLD are read once per process. Rows carry the
// setting after the codec ("int2 [KVQ_KV_STAGE=512]").
// --base-ab NAME=v1,v2,... re-times the fp16 baseline once per value of NAME (e.g.
// KVQ_ATTN_DECODE=old,new: the CUDA-core and tensor-core fp16 decode kernels,
// kernels/attention_decode.cu) on the same cache in the same process, each as its own row
// ("fp16 [KVQ_ATTN_DECODE=old]") after the plain fp16 row; the "vs fp16" column of every
// packed row stays relative to the plain row (the environment as it is).
// --latency adds, after every row, where a single decode's time goes (h46, session 5): the
// row's time is one decode between two events on an idle device, so it holds the host work
// before the first launch and the launch latencies; "pipelined" is the device time per call of
// --reps back-to-back decodes between one event pair (launches overlap the previous decode's
// kernels, so this is the kernels' own time plus the gaps between them), "host" the CPU time
// of one decode call (enqueue only, measured over the same back-to-back calls); "exposed" =
// single - pipelined, the part of a single decode's time that no kernel work covers.
// --l2 cold (the default from session 8) evicts L2 before every timed decode (L2Scrubber,
// lib/cuda/packed_cache.h): a model reads a layer's cache again only after the other layers'
// caches and weights have passed through L2, and a packed cache at batch 1 can be smaller
// than L2 (llama3-8b int4 up to ~45K tokens), so back-to-back decodes of one cache (--l2 warm,
// the tables before session 8) time L2 hits. The scrub is enqueued before the start event, so
// the decode's launches are queued while it runs and the row is device time, launch latency
// mostly hidden, as in a captured decode step. "pipelined" (--latency) stays back-to-back.
// "floor us" is bytes over the copy bandwidth; "read us" is measured: one streaming read of
// the row's byte count, timed like the decode (ReadProbe), so it holds the ramp and tail of a
// launch that the division leaves out (the floor a batch-1 decode is really up against).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "formats/dtype.h"
#include "formats/error.h"
#include "formats/version.h"
#include "lib/codecs/codec.h"
#include "tools/common/cli.h"
#if KVQ_HAVE_CUDA
#include "lib/cuda/cuda_backend.h"
#include "lib/cuda/packed_cache.h"
#include "lib/cuda/packed_more.h"
#include "lib/rope.h"
#endif

namespace {

#if KVQ_HAVE_CUDA
struct HeadShape {
  std::string name;
  int n_heads, kv_heads, head_dim;
};

HeadShape head_shape(const std::string& n) {
  if (n == "llama2-7b") return {n, 32, 32, 128};
  if (n == "llama3-8b") return {n, 32, 8, 128};
  throw kvq::InvalidArgument("--shapes", "unknown head shape '" + n + "'", "shapes: llama2-7b, llama3-8b");
}
// --latency: pipelined device time per call (median of 3 runs of `reps` back-to-back calls
// between one event pair) and host time per call (the same calls on a steady clock), in us.
struct Latency {
  double pipelined_us = 0, host_us = 0;
};
Latency measure_latency(const std::function<void()>& fn, int reps) {
  Latency r;
  const int n = std::max(reps, 2);
  std::vector<double> dev, host;
  for (int i = 0; i < 3; ++i) {
    double host_s = 0;
    const double ms = kvq::cuda::time_device_ms(
        [&] {
          const auto t0 = std::chrono::steady_clock::now();
          for (int j = 0; j < n; ++j) fn();
          host_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        },
        i == 0 ? 1 : 0, 1);
    dev.push_back(ms * 1e3 / n);
    host.push_back(host_s * 1e6 / n);
  }
  std::sort(dev.begin(), dev.end());
  std::sort(host.begin(), host.end());
  r.pipelined_us = dev[1];
  r.host_us = host[1];
  return r;
}

// "NAME=v1,v2,..." -> (NAME, values); throws InvalidArgument naming the option.
std::pair<std::string, std::vector<std::string>> parse_ab(const std::string& opt, const std::string& text) {
  const size_t eq = text.find('=');
  if (eq == std::string::npos || eq == 0 || eq + 1 >= text.size())
    throw kvq::InvalidArgument(opt, "expected NAME=v1,v2,..., got '" + text + "'", "e.g. " + opt + " KVQ_KV_STAGE=256,512");
  std::vector<std::string> values;
  for (size_t p = eq + 1; p <= text.size();) {
    const size_t c = std::min(text.find(',', p), text.size());
    if (c == p) throw kvq::InvalidArgument(opt, "empty value in '" + text + "'", "e.g. " + opt + " KVQ_KV_STAGE=256,512");
    values.push_back(text.substr(p, c - p));
    p = c + 1;
  }
  return {text.substr(0, eq), values};
}

// Sets NAME=value for a scope and restores the variable as it was on the way out.
struct ScopedEnv {
  std::string name, old;
  bool had = false;
  ScopedEnv(const std::string& n, const std::string& value) : name(n) {
    if (const char* e = std::getenv(n.c_str())) {
      old = e;
      had = true;
    }
    setenv(n.c_str(), value.c_str(), 1);
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;
  ~ScopedEnv() {
    if (had)
      setenv(name.c_str(), old.c_str(), 1);
    else
      unsetenv(name.c_str());
  }
};

void print_latency(const std::string& label, double single_us, const Latency& l) {
  std::printf("  latency %-28s single %8.1f us  pipelined %8.1f us/call  exposed %6.1f us  host %6.1f us/call\n",
              label.c_str(), single_us, l.pipelined_us, single_us - l.pipelined_us, l.host_us);
}
#endif

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"kvq-kvbench: decode attention over packed KV caches vs fp16 (one layer)"};
  kvq::cli::add_version_flag(app, "kvq-kvbench");
  std::vector<std::string> shapes = {"llama2-7b", "llama3-8b"};
  std::vector<int> contexts = {4096, 8192, 16384, 32768, 65536, 131072};
  std::vector<int> batches = {1, 8};
  std::vector<std::string> codecs = {"int4", "int2", "kivi:bits=4", "kivi:bits=2", "kvquant:bits=4",
                                     "kvquant:bits=2"};
  int reps = 20, device = 0;
  std::string json_out, ab, base_ab;
  bool latency = false;
  std::string l2 = "cold";
  app.add_option("--shapes", shapes, "Head shapes: llama2-7b, llama3-8b")->capture_default_str()->delimiter(',');
  app.add_option("--contexts", contexts, "Context lengths")->capture_default_str()->delimiter(',');
  app.add_option("--batch", batches, "Batch sizes")->capture_default_str()->delimiter(',');
  app.add_option("--kv", codecs, "Codec specs (key and value), repeatable")->capture_default_str();
  app.add_option("--reps", reps, "Timed runs per point (median)")->capture_default_str();
  app.add_option("--device", device, "CUDA device")->capture_default_str();
  app.add_option("--json", json_out, "Also write the results as JSON to this file");
  app.add_option("--ab", ab,
                 "NAME=v1,v2,...: time each packed cache once per value of environment variable NAME "
                 "(read per decode call, e.g. KVQ_KV_STAGE=256,384,512)");
  app.add_option("--base-ab", base_ab,
                 "NAME=v1,v2,...: also time the fp16 baseline once per value of environment variable NAME "
                 "(e.g. KVQ_ATTN_DECODE=old,new)");
  app.add_flag("--latency", latency,
               "After each row: pipelined time per call of back-to-back decodes, host time per call, "
               "and the exposed (launch + host) part of a single decode");
  app.add_option("--l2", l2,
                 "cold: evict L2 before every timed decode (a model's next read of this layer's cache); "
                 "warm: time back-to-back decodes of one cache (L2 may hold it)")
      ->check(CLI::IsMember({"cold", "warm"}))
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  return kvq::cli::run("kvq-kvbench", [&]() -> int {
#if !KVQ_HAVE_CUDA
    throw kvq::UnsupportedError("kvq-kvbench", "this build of kvq has no CUDA backend",
                                "rebuild with -DKVQ_CUDA=ON");
#else
    using namespace kvq;
    const std::string dev = cuda_device_summary(device);
    const double bw = measure_copy_bandwidth(device);
    std::unique_ptr<cuda::L2Scrubber> scrubber;
    if (l2 == "cold") scrubber = std::make_unique<cuda::L2Scrubber>(device);
    const std::function<void()> before = scrubber ? std::function<void()>([&] { (*scrubber)(); })
                                                  : std::function<void()>();
    const char* variant = std::getenv("KVQ_KV_DECODE");
    // --ab: the variable and its values; one empty value = no A/B (the environment as it is).
    std::string ab_name;
    std::vector<std::string> ab_values = {""};
    if (!ab.empty()) std::tie(ab_name, ab_values) = parse_ab("--ab", ab);
    std::string base_ab_name;
    std::vector<std::string> base_ab_values;
    if (!base_ab.empty()) std::tie(base_ab_name, base_ab_values) = parse_ab("--base-ab", base_ab);
    const char* ab_old_c = ab_name.empty() ? nullptr : std::getenv(ab_name.c_str());
    const std::string ab_old = ab_old_c ? ab_old_c : "";
    std::fprintf(stderr, "kvq-kvbench: %s; copy bandwidth %.0f GB/s (read+write); one layer; reps %d; "
                 "decode kernel %s; L2 %s\n", dev.c_str(), bw / 1e9, reps, variant ? variant : "default",
                 scrubber ? "cold (scrubbed before every timed decode)" : "warm (back-to-back decodes)");
    std::printf("%-10s %5s %7s %-16s %9s %9s %8s %7s %8s %8s %8s\n", "shape", "batch", "context", "kv",
                "MB read", "time us", "GB/s", "%copy", "floor us", "read us", "vs fp16");
    // "read us": one streaming read of the row's byte count, timed the same way (ReadProbe).
    cuda::ReadProbe probe;
    const auto read_us = [&](double bytes) {
      const auto n = static_cast<size_t>(bytes);
      probe.reserve(n);
      return 1e3 * cuda::time_device_ms([&] { probe.read(n); }, 3, reps, before);
    };
    nlohmann::json results = nlohmann::json::array();
    RopeConfig rc;
    rc.theta = 10000.0;
    for (const auto& sn : shapes) {
      const HeadShape hs = head_shape(sn);
      const int dim = hs.kv_heads * hs.head_dim;
      const std::vector<double> inv_freq = rope_inv_freq(rc, hs.head_dim);
      for (int B : batches)
        for (int ctx : contexts) {
          std::vector<int> slots(B);
          for (int b = 0; b < B; ++b) slots[b] = b;
          const size_t qn = static_cast<size_t>(B) * hs.n_heads * hs.head_dim;
          std::vector<uint16_t> qh(qn);
          for (size_t i = 0; i < qn; ++i)
            qh[i] = float_to_half(static_cast<float>(std::sin(0.37 * static_cast<double>(i))));
          auto dq = cuda::device_alloc(qn * 2, "queries");
          auto dout = cuda::device_alloc(qn * 2, "attention output");
          cuda::copy_to_device(dq.get(), qh.data(), qn * 2);
          double base_ms = 0;
          {
            cuda::Fp16DecodeBaseline base(B, ctx, hs.n_heads, hs.kv_heads, hs.head_dim, 7);
            base.prepare(slots, ctx);
            base_ms = cuda::time_device_ms([&] { base.decode(dq.get(), dout.get()); }, 3, reps, before);
            const double bytes = base.decode_bytes();
            const double base_read_us = read_us(bytes);
            std::printf("%-10s %5d %7d %-16s %9.1f %9.1f %8.0f %6.0f%% %8.1f %8.1f %7.2fx\n", sn.c_str(), B,
                        ctx, "fp16", bytes / 1e6, base_ms * 1e3, bytes / (base_ms * 1e-3) / 1e9,
                        100 * bytes / (base_ms * 1e-3) / bw, bytes / bw * 1e6, base_read_us, 1.0);
            results.push_back({{"shape", sn}, {"batch", B}, {"context", ctx}, {"kv", "fp16"},
                               {"bytes", bytes}, {"ms", base_ms}, {"read_ms", base_read_us * 1e-3}});
            if (latency) {
              const Latency l = measure_latency([&] { base.decode(dq.get(), dout.get()); }, reps);
              print_latency("fp16", base_ms * 1e3, l);
              results.back()["pipelined_ms"] = l.pipelined_us * 1e-3;
              results.back()["host_ms"] = l.host_us * 1e-3;
            }
            for (const std::string& val : base_ab_values) {
              const ScopedEnv env(base_ab_name, val);
              const std::string label = "fp16 [" + base_ab_name + "=" + val + "]";
              const double ms = cuda::time_device_ms([&] { base.decode(dq.get(), dout.get()); }, 3, reps, before);
              std::printf("%-10s %5d %7d %-16s %9.1f %9.1f %8.0f %6.0f%% %8.1f %8.1f %7.2fx\n", sn.c_str(), B,
                          ctx, label.c_str(), bytes / 1e6, ms * 1e3, bytes / (ms * 1e-3) / 1e9,
                          100 * bytes / (ms * 1e-3) / bw, bytes / bw * 1e6, base_read_us, base_ms / ms);
              std::fflush(stdout);
              results.push_back({{"shape", sn}, {"batch", B}, {"context", ctx}, {"kv", "fp16"},
                                 {"variant", base_ab_name + "=" + val}, {"bytes", bytes}, {"ms", ms},
                                 {"speedup", base_ms / ms}, {"read_ms", base_read_us * 1e-3}});
              if (latency) {
                const Latency l = measure_latency([&] { base.decode(dq.get(), dout.get()); }, reps);
                print_latency(label, ms * 1e3, l);
                results.back()["pipelined_ms"] = l.pipelined_us * 1e-3;
                results.back()["host_ms"] = l.host_us * 1e-3;
              }
            }
          }
          const int chunk = 4096;
          auto kbuf = cuda::device_alloc(static_cast<size_t>(chunk) * dim * 4, "bench keys");
          auto vbuf = cuda::device_alloc(static_cast<size_t>(chunk) * dim * 4, "bench values");
          for (const auto& spec_text : codecs) {
            const auto spec = codecs::parse_codec_spec(spec_text);
            const codecs::KvShape ks{hs.kv_heads, hs.head_dim, hs.n_heads};
            auto kc = codecs::make_codec(spec, codecs::KvSide::kKey, 0, ks);
            auto vc = codecs::make_codec(spec, codecs::KvSide::kValue, 0, ks);
            const std::string why = cuda::packed_cache_unsupported_reason(*kc, *vc);
            if (!why.empty()) {
              std::fprintf(stderr, "kvq-kvbench: skipped %s: %s\n", spec_text.c_str(), why.c_str());
              continue;
            }
            auto cache = cuda::make_packed_cache(*kc, *vc, B, ctx, hs.n_heads, inv_freq);
            for (int b = 0; b < B; ++b)
              for (int t = 0; t < ctx; t += chunk) {
                const int n = std::min(chunk, ctx - t);
                const uint64_t seed = (static_cast<uint64_t>(b) << 32) + t;
                cuda::fill_random_rows(static_cast<float*>(kbuf.get()), n, dim, 2 * seed + 1, 1.f, 32, 6.f);
                cuda::fill_random_rows(static_cast<float*>(vbuf.get()), n, dim, 2 * seed + 2, 1.f, 32, 6.f);
                cache->append(b, static_cast<float*>(kbuf.get()), static_cast<float*>(vbuf.get()), n, dim, {});
              }
            cache->prepare(slots);
            const double cache_read_us = read_us(cache->decode_bytes());
            for (const std::string& val : ab_values) {
              std::string label = spec_text;
              if (!ab_name.empty()) {
                setenv(ab_name.c_str(), val.c_str(), 1);
                label += " [" + ab_name + "=" + val + "]";
              }
              const double ms =
                  cuda::time_device_ms([&] { cache->decode(dq.get(), dout.get(), false, nullptr); }, 3, reps, before);
              const double bytes = cache->decode_bytes();
              std::printf("%-10s %5d %7d %-16s %9.1f %9.1f %8.0f %6.0f%% %8.1f %8.1f %7.2fx\n", sn.c_str(), B,
                          ctx, label.c_str(), bytes / 1e6, ms * 1e3, bytes / (ms * 1e-3) / 1e9,
                          100 * bytes / (ms * 1e-3) / bw, bytes / bw * 1e6, cache_read_us, base_ms / ms);
              std::fflush(stdout);
              nlohmann::json row = {{"shape", sn},    {"batch", B}, {"context", ctx},
                                    {"kv", kc->describe()}, {"bytes", bytes}, {"ms", ms},
                                    {"speedup", base_ms / ms}, {"read_ms", cache_read_us * 1e-3}};
              if (!ab_name.empty()) row["variant"] = ab_name + "=" + val;
              if (latency) {
                const Latency l =
                    measure_latency([&] { cache->decode(dq.get(), dout.get(), false, nullptr); }, reps);
                print_latency(label, ms * 1e3, l);
                row["pipelined_ms"] = l.pipelined_us * 1e-3;
                row["host_ms"] = l.host_us * 1e-3;
              }
              results.push_back(row);
            }
            if (!ab_name.empty()) {  // the environment as it was, for the next codec's default row
              if (ab_old_c)
                setenv(ab_name.c_str(), ab_old.c_str(), 1);
              else
                unsetenv(ab_name.c_str());
            }
          }
        }
    }
    if (!json_out.empty()) {
      nlohmann::json j = {{"device", dev}, {"copy_bandwidth", bw}, {"l2", l2}, {"results", results}};
      FILE* f = std::fopen(json_out.c_str(), "w");
      if (!f) throw IoError(json_out, "cannot write");
      const std::string s = j.dump(1);
      std::fwrite(s.data(), 1, s.size(), f);
      std::fclose(f);
    }
    return 0;
#endif
  });
}
