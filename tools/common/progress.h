// Progress lines on stderr for long work (perplexity windows, benchmark repetitions,
// calibration batches), llama-perplexity style: `[12/333] ppl 270.1 eta 1m20s`.
// On a terminal the line is redrawn in place with a carriage return; when stderr is a
// file or a pipe (CI logs) every update is its own line and updates are thinned to one
// per `interval_s` (plus the first and the last), so logs stay short and readable.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace kvq::cli {

// "45s", "1m20s", "2h05m"; "?" for a negative or non-finite value.
std::string format_duration(double seconds);

class Progress {
 public:
  explicit Progress(double interval_s = 5.0);  // interval applies to non-terminals only
  ~Progress();                                 // ends a redrawn line with "\n"

  // Shows `[done/total] text eta ETA`; eta_s < 0 leaves the ETA out.
  void update(int64_t done, int64_t total, const std::string& text, double eta_s);
  void finish();  // ends the line (idempotent)

  bool is_terminal() const { return tty_; }

 private:
  bool tty_;
  double interval_s_;
  bool open_line_ = false;
  bool any_ = false;
  std::chrono::steady_clock::time_point last_;
};

}  // namespace kvq::cli
