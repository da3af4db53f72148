// Catch2 v2 (Debian 12) and v3 (Ubuntu 24.04) behind one include. Tests use
// kvq_test::HasSubstr for message checks; everything else is common to both versions.
#pragma once

#if KVQ_CATCH2_MAJOR == 3
#include <catch2/catch_all.hpp>
#else
#include <catch2/catch.hpp>
#endif

#include <string>

namespace kvq_test {

#if KVQ_CATCH2_MAJOR == 3
using Catch::Approx;
inline auto HasSubstr(const std::string& s) { return Catch::Matchers::ContainsSubstring(s); }
#else
using Catch::Detail::Approx;
inline auto HasSubstr(const std::string& s) { return Catch::Matchers::Contains(s); }
#endif

}  // namespace kvq_test
