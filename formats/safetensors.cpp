// safetensors reader (validating, memory-mapped, sharded) and deterministic writer.
// See safetensors.h for the layout and the guarantees.
#include "formats/safetensors.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <filesystem>
#include <set>
#include <string_view>

#include <nlohmann/json.hpp>

#include "formats/atomic_file.h"
#include "formats/error.h"
#include "formats/json_text.h"

namespace kvq {

static_assert(std::endian::native == std::endian::little,
              "safetensors is little-endian; kvq maps tensors without byte swapping");

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string squote(const std::string& s) { return "'" + s + "'"; }

std::string known_dtypes() {
  std::string out;
  for (int i = 0; i <= static_cast<int>(DType::kBool); ++i) {
    if (!out.empty()) out += ", ";
    out += dtype_name(static_cast<DType>(i));
  }
  return out;
}

// Parses JSON text at byte `base` of `file`. When `dup_key` is given, keys repeated in the
// top-level object are reported through it (nlohmann keeps only the last of them).
json parse_json(const std::string& file, int64_t base, std::string_view text,
                std::string* dup_key = nullptr) {
  std::set<std::string> seen;
  json::parser_callback_t cb = [&](int depth, json::parse_event_t ev, json& parsed) {
    if (dup_key != nullptr && depth == 1 && ev == json::parse_event_t::key && parsed.is_string()) {
      if (!seen.insert(parsed.get<std::string>()).second && dup_key->empty()) {
        *dup_key = parsed.get<std::string>();
      }
    }
    return true;
  };
  return detail::parse_json_text(file, text, "header", base, dup_key != nullptr ? cb : nullptr);
}

// Byte offset of `"name"` used as a key in the header text, for error messages; `base`
// (the header start, 8) when it cannot be found (e.g. escaped differently).
int64_t key_offset(std::string_view header, const std::string& name, int64_t base) {
  std::string needle;
  try {
    needle = json(name).dump();
  } catch (const json::exception&) {
    return base;
  }
  size_t pos = 0;
  while ((pos = header.find(needle, pos)) != std::string_view::npos) {
    size_t after = pos + needle.size();
    while (after < header.size() && (header[after] == ' ' || header[after] == '\t' ||
                                     header[after] == '\n' || header[after] == '\r')) {
      ++after;
    }
    if (after < header.size() && header[after] == ':') return base + static_cast<int64_t>(pos);
    pos += 1;
  }
  return base;
}

bool as_u64(const json& v, uint64_t* out) {
  if (v.is_number_unsigned()) {
    *out = v.get<uint64_t>();
    return true;
  }
  if (v.is_number_integer() && v.get<int64_t>() >= 0) {
    *out = static_cast<uint64_t>(v.get<int64_t>());
    return true;
  }
  return false;
}

std::string range_text(uint64_t b, uint64_t e) {
  return "[" + std::to_string(b) + ", " + std::to_string(e) + ")";
}

}  // namespace

SafetensorsFile parse_safetensors(const std::string& file, const uint8_t* bytes, size_t size) {
  SafetensorsFile out;
  if (size < 8) {
    throw FormatError(file, 0, "file is " + std::to_string(size) +
                                   " bytes, too short for the 8-byte header length of a "
                                   "safetensors file");
  }
  uint64_t n = 0;
  std::memcpy(&n, bytes, 8);
  if (n > kSafetensorsMaxHeader) {
    throw FormatError(file, 0, "header length " + std::to_string(n) + " exceeds the " +
                                   std::to_string(kSafetensorsMaxHeader) +
                                   "-byte limit: not a safetensors file, or corrupt");
  }
  if (n > size - 8) {
    throw FormatError(file, 0, "header length " + std::to_string(n) +
                                   " runs past the end of the file (" + std::to_string(size) +
                                   " bytes, so at most " + std::to_string(size - 8) +
                                   " header bytes)",
                      "the file is probably truncated; download or copy it again");
  }
  out.header_size = n;
  const std::string_view header(reinterpret_cast<const char*>(bytes) + 8, n);
  const uint64_t data_start = 8 + n;
  const uint64_t data_size = size - data_start;

  std::string dup;
  const json root = parse_json(file, 8, header, &dup);
  if (!root.is_object()) {
    throw FormatError(file, 8, "header JSON is a " + std::string(root.type_name()) +
                                   ", expected an object");
  }
  if (!dup.empty()) {
    throw FormatError(file, key_offset(header, dup, 8),
                      "tensor " + squote(dup) + " appears twice in the header");
  }

  for (const auto& [name, entry] : root.items()) {
    // Only on error: the search is linear in the header.
    auto at = [&, &name = name] { return key_offset(header, name, 8); };
    if (name == "__metadata__") {
      if (entry.is_null()) continue;
      if (!entry.is_object()) {
        throw FormatError(file, at(), "\"__metadata__\" is a " + std::string(entry.type_name()) +
                                        ", expected an object of strings");
      }
      for (const auto& [k, v] : entry.items()) {
        if (!v.is_string()) {
          throw FormatError(file, at(), "\"__metadata__\" value for " + squote(k) + " is a " +
                                          std::string(v.type_name()) + ", expected a string");
        }
        out.metadata[k] = v.get<std::string>();
      }
      continue;
    }
    const std::string what = "tensor " + squote(name);
    if (!entry.is_object()) {
      throw FormatError(file, at(), what + ": entry is a " + std::string(entry.type_name()) +
                                      ", expected an object with dtype, shape, data_offsets");
    }
    TensorView t;
    t.name = name;
    t.file = file;

    const auto dt = entry.find("dtype");
    if (dt == entry.end() || !dt->is_string()) {
      throw FormatError(file, at(), what + ": \"dtype\" missing or not a string");
    }
    const auto parsed = parse_dtype(dt->get<std::string>());
    if (!parsed) {
      throw FormatError(file, at(), what + ": unknown dtype " + squote(dt->get<std::string>()) +
                                      " (known: " + known_dtypes() + ")");
    }
    t.dtype = *parsed;

    const auto sh = entry.find("shape");
    if (sh == entry.end() || !sh->is_array()) {
      throw FormatError(file, at(), what + ": \"shape\" missing or not an array");
    }
    uint64_t numel = 1;
    bool overflow = false;
    for (const json& d : *sh) {
      if (!d.is_number_integer()) {
        throw FormatError(file, at(), what + ": shape entry " + d.dump() + " is not an integer");
      }
      if (d.is_number_unsigned() ? false : d.get<int64_t>() < 0) {
        throw FormatError(file, at(), what + ": negative dimension " + d.dump() + " in shape " +
                                        sh->dump());
      }
      const uint64_t dim = d.is_number_unsigned() ? d.get<uint64_t>()
                                                  : static_cast<uint64_t>(d.get<int64_t>());
      if (dim > static_cast<uint64_t>(INT64_MAX)) overflow = true;
      t.shape.push_back(static_cast<int64_t>(dim));
      overflow = overflow || __builtin_mul_overflow(numel, dim, &numel);
    }

    const auto off = entry.find("data_offsets");
    uint64_t begin = 0, end = 0;
    if (off == entry.end() || !off->is_array() || off->size() != 2 ||
        !as_u64((*off)[0], &begin) || !as_u64((*off)[1], &end)) {
      throw FormatError(file, at(), what + ": \"data_offsets\" must be [begin, end] with "
                                         "non-negative integers, got " +
                                      (off == entry.end() ? std::string("nothing") : off->dump()));
    }
    if (begin > end) {
      throw FormatError(file, at(), what + ": data_offsets " + off->dump() + " has begin > end");
    }
    if (end > data_size) {
      throw FormatError(file, static_cast<int64_t>(data_start + std::min(begin, data_size)),
                        what + ": data " + range_text(begin, end) +
                            " runs past the end of the data section (" +
                            std::to_string(data_size) + " bytes)",
                        "the file is probably truncated");
    }
    uint64_t expect = 0;
    overflow = overflow || __builtin_mul_overflow(numel, dtype_size(t.dtype), &expect);
    if (overflow || expect != end - begin) {
      throw FormatError(file, at(), what + ": " + std::to_string(end - begin) +
                                      " bytes of data, but dtype " +
                                      std::string(dtype_name(t.dtype)) + " x shape " +
                                      sh->dump() + " needs " +
                                      (overflow ? std::string("more than 2^64")
                                                : std::to_string(expect)));
    }
    t.data = bytes + data_start + begin;
    t.nbytes = static_cast<size_t>(end - begin);
    out.tensors.push_back(std::move(t));
  }

  // Overlaps: sort by start, then each tensor must start at or after the furthest end so
  // far. An empty tensor inside another counts too: the reference implementation requires
  // contiguous tensors, so such a file would not be written by any sane tool.
  std::vector<const TensorView*> order;
  for (const auto& t : out.tensors) order.push_back(&t);
  auto begin_of = [&](const TensorView* t) {
    return static_cast<uint64_t>(static_cast<const uint8_t*>(t->data) - bytes) - data_start;
  };
  std::sort(order.begin(), order.end(), [&](const TensorView* a, const TensorView* b) {
    const uint64_t ba = begin_of(a), bb = begin_of(b);
    return ba != bb ? ba < bb : a->nbytes < b->nbytes;
  });
  const TensorView* furthest = nullptr;
  uint64_t furthest_end = 0;
  for (const TensorView* t : order) {
    const uint64_t b = begin_of(t);
    if (furthest != nullptr && b < furthest_end) {
      throw FormatError(file, static_cast<int64_t>(data_start + b),
                        "tensor " + squote(t->name) + " data " +
                            range_text(b, b + t->nbytes) + " overlaps tensor " +
                            squote(furthest->name) + " data " +
                            range_text(begin_of(furthest), furthest_end));
    }
    if (furthest == nullptr || b + t->nbytes > furthest_end) {
      furthest = t;
      furthest_end = b + t->nbytes;
    }
  }
  return out;
}

SafetensorsReader::SafetensorsReader(const std::string& path) : path_(path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    const fs::path single = fs::path(path) / "model.safetensors";
    const fs::path index = fs::path(path) / "model.safetensors.index.json";
    if (fs::exists(single, ec)) {
      open_single(single.string());
    } else if (fs::exists(index, ec)) {
      open_index(index.string());
    } else {
      throw IoError(path, "folder has neither model.safetensors nor "
                          "model.safetensors.index.json");
    }
  } else if (path.size() >= 5 && path.compare(path.size() - 5, 5, ".json") == 0) {
    open_index(path);
  } else {
    open_single(path);
  }
}

SafetensorsReader::~SafetensorsReader() = default;

void SafetensorsReader::open_single(const std::string& file) {
  auto mapped = std::make_unique<MappedFile>(file);
  SafetensorsFile parsed = parse_safetensors(file, mapped->data(), mapped->size());
  for (auto& t : parsed.tensors) tensors_.emplace(t.name, std::move(t));
  metadata_ = std::move(parsed.metadata);
  files_.push_back(std::move(mapped));
}

void SafetensorsReader::open_index(const std::string& index) {
  index_path_ = index;
  const MappedFile text(index);
  const json root = parse_json(
      index, 0, std::string_view(reinterpret_cast<const char*>(text.data()), text.size()));
  if (!root.is_object()) {
    throw FormatError(index, "index JSON is a " + std::string(root.type_name()) +
                                 ", expected an object with \"weight_map\"");
  }
  const auto wm = root.find("weight_map");
  if (wm == root.end() || !wm->is_object()) {
    throw FormatError(index, "index has no \"weight_map\" object");
  }
  if (wm->empty()) throw FormatError(index, "index \"weight_map\" is empty");
  std::vector<std::string> shards;  // sorted, unique
  for (const auto& [name, shard] : wm->items()) {
    if (!shard.is_string()) {
      throw FormatError(index, "weight_map entry for " + squote(name) + " is a " +
                                   std::string(shard.type_name()) + ", expected a file name");
    }
    shards.push_back(shard.get<std::string>());
  }
  std::sort(shards.begin(), shards.end());
  shards.erase(std::unique(shards.begin(), shards.end()), shards.end());

  const fs::path folder = fs::path(index).parent_path();
  std::map<std::string, std::string> shard_path;  // shard name -> path opened
  for (const std::string& shard : shards) {
    const fs::path p = folder / shard;
    std::error_code ec;
    if (!fs::exists(p, ec)) {
      throw FormatError(index, "shard " + squote(shard) + " named in the index is missing (" +
                                   p.string() + ")",
                        "copy every model-*.safetensors file listed in the index");
    }
    auto mapped = std::make_unique<MappedFile>(p.string());
    SafetensorsFile parsed = parse_safetensors(p.string(), mapped->data(), mapped->size());
    for (auto& t : parsed.tensors) {
      const auto it = tensors_.find(t.name);
      if (it != tensors_.end()) {
        const std::string_view header(reinterpret_cast<const char*>(mapped->data()) + 8,
                                      parsed.header_size);
        throw FormatError(p.string(), key_offset(header, t.name, 8),
                          "tensor " + squote(t.name) + " is also in shard " +
                              squote(fs::path(it->second.file).filename().string()) +
                              " (index " + index + ")");
      }
      tensors_.emplace(t.name, std::move(t));
    }
    for (auto& [k, v] : parsed.metadata) metadata_.emplace(k, v);
    shard_path[shard] = p.string();
    files_.push_back(std::move(mapped));
  }

  for (const auto& [name, shard] : wm->items()) {
    const auto it = tensors_.find(name);
    if (it == tensors_.end() || it->second.file != shard_path[shard.get<std::string>()]) {
      throw FormatError(index, "tensor " + squote(name) + " is listed for shard " +
                                   squote(shard.get<std::string>()) + " but absent from it");
    }
  }
}

const TensorView* SafetensorsReader::find(const std::string& name) const {
  const auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

std::vector<std::string> SafetensorsReader::names() const {
  std::vector<std::string> out;
  out.reserve(tensors_.size());
  for (const auto& [name, t] : tensors_) out.push_back(name);
  return out;
}

std::vector<std::string> SafetensorsReader::files() const {
  std::vector<std::string> out;
  for (const auto& f : files_) out.push_back(f->path());
  return out;
}

void write_safetensors(const std::string& path, const std::vector<TensorView>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::vector<const TensorView*> order;
  std::set<std::string> names;
  for (const TensorView& t : tensors) {
    if (t.name.empty()) throw InvalidArgument(path, "tensor with an empty name");
    if (t.name == "__metadata__") {
      throw InvalidArgument(path, "\"__metadata__\" cannot be a tensor name");
    }
    if (!names.insert(t.name).second) {
      throw InvalidArgument(path, "tensor " + squote(t.name) + " given twice");
    }
    uint64_t numel = 1;
    bool overflow = false;
    for (int64_t d : t.shape) {
      if (d < 0) {
        throw InvalidArgument(path, "tensor " + squote(t.name) + " has a negative dimension");
      }
      overflow = overflow || __builtin_mul_overflow(numel, static_cast<uint64_t>(d), &numel);
    }
    uint64_t expect = 0;
    overflow = overflow || __builtin_mul_overflow(numel, dtype_size(t.dtype), &expect);
    if (overflow || expect != t.nbytes) {
      throw InvalidArgument(path, "tensor " + squote(t.name) + " has " +
                                      std::to_string(t.nbytes) + " bytes, but " +
                                      std::string(dtype_name(t.dtype)) + " x its shape needs " +
                                      (overflow ? std::string("more than 2^64")
                                                : std::to_string(expect)));
    }
    if (t.nbytes > 0 && t.data == nullptr) {
      throw InvalidArgument(path, "tensor " + squote(t.name) + " has no data");
    }
    order.push_back(&t);
  }
  std::sort(order.begin(), order.end(), [](const TensorView* a, const TensorView* b) {
    const size_t sa = dtype_size(a->dtype), sb = dtype_size(b->dtype);
    return sa != sb ? sa > sb : a->name < b->name;
  });

  json header = json::object();  // std::map underneath: keys come out sorted
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const TensorView* t : order) {
    header[t->name] = {{"dtype", std::string(dtype_name(t->dtype))},
                       {"shape", t->shape},
                       {"data_offsets", {offset, offset + t->nbytes}}};
    offset += t->nbytes;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const json::exception& e) {
    throw InvalidArgument(path, "cannot encode the header: " + detail::json_error_text(e));
  }
  text.append((8 - text.size() % 8) % 8, ' ');
  const uint64_t n = text.size();

  AtomicFile out(path);
  uint8_t len[8];
  std::memcpy(len, &n, 8);
  out.write(len, 8);
  out.write(text);
  for (const TensorView* t : order) out.write(t->data, t->nbytes);
  out.commit();
}

}  // namespace kvq
