// Calibration file (+ method, bits, options) -> profile: what kvq-convert does, as a
// library so that it is unit-tested without the command line. Also the profile spec
// syntax ("kvquant:bits=3,outliers=1%") and vLLM's FP8 KV scales. The defaults and
// derivations are those of docs/profile-format.md ("Methods") and
// docs/calibration-format.md ("From calibration to profile").
//
// Goals: every method and bit width from one calibration file; calibration-free methods
// from the model fingerprint alone; every option checked against the method it is given
// to (a typo is an error, not a silently ignored key).
// Non-goals: running calibration (kvq-calibrate), quantizing (lib/codecs/).
#pragma once

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "formats/calibration.h"
#include "formats/profile.h"

namespace kvq {

// One profile to make: a method and its options as strings, exactly as given on the
// command line ("bits" -> "3", "outliers" -> "1%").
struct ProfileSpec {
  Method method = Method::kInt;
  std::map<std::string, std::string> options;
  std::string text;  // the spec as written, for messages
};

// "kvquant:bits=3,outliers=1%" or "kivi" -> ProfileSpec. Throws InvalidArgument
// (where "--profile") for an unknown method, a malformed pair, a repeated key or an option
// the method does not take.
ProfileSpec parse_profile_spec(std::string_view text);

// The option keys `m` takes, e.g. {"bits", "key-bits", "value-bits", "outliers", ...}.
const std::vector<std::string_view>& method_option_keys(Method m);
bool method_takes_option(Method m, std::string_view key);
// Whether a profile of this spec needs a calibration file (kvquant, wkvquant, mikv with
// its balancer). fp8 uses one when given (static per-head scales), else dynamic scales.
bool spec_needs_calibration(const ProfileSpec& spec);

// Makes the profile. `calib` may be null for calibration-free specs; when given, its
// fingerprint is the profile's and it must be complete (complete_layers == layers).
// `model` is the fingerprint to use when `calib` is null. `notes` receives one-line remarks
// for stderr (e.g. outliers differing from the fraction the signposts were fitted with).
// Throws InvalidArgument for values out of range or not present in the calibration
// ("kvquant at 5 bits: the calibration has signposts for 2, 3, 4 bits").
Profile make_profile(const ProfileSpec& spec, const Calibration* calib,
                     const ModelFingerprint* model, const WriterInfo& writer,
                     std::vector<std::string>* notes);

// "3" when keys and values share the width, else "k4v2".
std::string profile_bits_label(const Profile& p);
// Replaces {method} and {bits} in `tmpl`.
std::string expand_output_template(const std::string& tmpl, const Profile& p);

// vLLM's FP8 KV-cache scales: per layer "model.layers.{i}.self_attn.k_scale" and
// "...v_scale", F32 scalars (shape []), absmax / max finite of `format` over all channels
// of the layer (post-RoPE keys, values), 1 where the absmax is 0. Needs a complete
// calibration (InvalidArgument otherwise).
FloatTensors vllm_kv_scales(const Calibration& calib, Fp8Format format);

// "1%" -> 0.01, "0.5%" -> 0.005, "0.01" -> 0.01; nullopt when malformed or negative.
std::optional<double> parse_fraction(std::string_view s);

}  // namespace kvq
