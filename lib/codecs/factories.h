// One factory per method file (internal to lib/codecs/); make_codec (codec.cpp) picks
// one by the spec's method name. Each checks its own options and the shape.
#pragma once

#include <memory>

#include "lib/codecs/codec.h"

namespace kvq::codecs {

using CodecFactory = std::unique_ptr<Codec> (*)(const CodecSpec&, KvSide, int, const KvShape&,
                                                const CodecParams&);

std::unique_ptr<Codec> make_fp16_codec(const CodecSpec&, KvSide, int, const KvShape&,
                                       const CodecParams&);
std::unique_ptr<Codec> make_uniform_codec(const CodecSpec&, KvSide, int, const KvShape&,
                                          const CodecParams&);
std::unique_ptr<Codec> make_kivi_codec(const CodecSpec&, KvSide, int, const KvShape&,
                                       const CodecParams&);
std::unique_ptr<Codec> make_kvquant_codec(const CodecSpec&, KvSide, int, const KvShape&,
                                          const CodecParams&);
std::unique_ptr<Codec> make_wkvquant_codec(const CodecSpec&, KvSide, int, const KvShape&,
                                           const CodecParams&);
std::unique_ptr<Codec> make_mikv_codec(const CodecSpec&, KvSide, int, const KvShape&,
                                       const CodecParams&);
std::unique_ptr<Codec> make_ggml_codec(const CodecSpec&, KvSide, int, const KvShape&,
                                       const CodecParams&);
std::unique_ptr<Codec> make_fp8_codec(const CodecSpec&, KvSide, int, const KvShape&,
                                      const CodecParams&);
std::unique_ptr<Codec> make_hadamard_codec(const CodecSpec&, KvSide, int, const KvShape&,
                                           const CodecParams&);

// Shared option checks.
// Group along channels: 0 or absent means head_dim; must divide head_dim.
int channel_group_option(const CodecSpec& spec, const KvShape& shape, int fallback);
// Bits of an int-b method: in {2, 3, 4, 8} (or the subset given).
int bits_option(const CodecSpec& spec, int fallback);

}  // namespace kvq::codecs
