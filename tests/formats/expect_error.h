// Catches the kvq exception a call must throw and returns it, so that a test can check
// its type, its message (which must name the file and the problem: expect_file_error) and
// its offset. A call
// that throws nothing fails the test; one that throws another type fails it too, with
// Catch2's "unexpected exception" report naming that type's message.
#pragma once

#include <stdexcept>
#include <string>
#include <utility>

#include "tests/catch.h"

namespace kvq_test {

template <class E, class F>
E expect_error(F&& f) {
  try {
    std::forward<F>(f)();
  } catch (const E& e) {
    return e;
  }
  FAIL("expected an exception, none was thrown");
  throw std::logic_error("unreachable");
}

// `f` must throw E (a kvq::Error) whose message names the file `path` and contains
// `problem`: the refusal check of the file-format tests (calibration, profile, safetensors).
template <class E, class F>
E expect_file_error(const std::string& path, const std::string& problem, F&& f) {
  E e = expect_error<E>(std::forward<F>(f));
  CHECK_THAT(std::string(e.what()), HasSubstr(path));
  CHECK_THAT(std::string(e.what()), HasSubstr(problem));
  return e;
}

}  // namespace kvq_test
