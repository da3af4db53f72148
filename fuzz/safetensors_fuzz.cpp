// libFuzzer target: the safetensors parser (formats/safetensors.h) on arbitrary bytes.
// Every view it returns is read in full, so a view that reaches past the input or
// overlaps the header is an AddressSanitizer report. kvq::Error is a correct refusal;
// anything else escaping is a bug.
#include <cstddef>
#include <cstdint>

#include "formats/error.h"
#include "formats/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const kvq::SafetensorsFile f = kvq::parse_safetensors("fuzz.safetensors", data, size);
    uint32_t sum = 0;
    for (const auto& t : f.tensors) {
      if (t.nbytes != kvq::dtype_size(t.dtype) * static_cast<size_t>(t.numel())) __builtin_trap();
      const auto* p = static_cast<const uint8_t*>(t.data);
      for (size_t i = 0; i < t.nbytes; ++i) sum += p[i];
    }
    for (const auto& [k, v] : f.metadata) sum += static_cast<uint32_t>(k.size() + v.size());
    (void)sum;
  } catch (const kvq::Error&) {
  }
  return 0;
}
