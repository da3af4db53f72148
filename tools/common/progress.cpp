// See progress.h.
#include "tools/common/progress.h"

#include <cmath>
#include <cstdio>
#include <unistd.h>

namespace kvq::cli {

std::string format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  const long long t = std::llround(s);
  char buf[32];
  if (t < 60) {
    std::snprintf(buf, sizeof buf, "%llds", t);
  } else if (t < 3600) {
    std::snprintf(buf, sizeof buf, "%lldm%02llds", t / 60, t % 60);
  } else {
    std::snprintf(buf, sizeof buf, "%lldh%02lldm", t / 3600, (t % 3600) / 60);
  }
  return buf;
}

Progress::Progress(double interval_s) : tty_(::isatty(STDERR_FILENO) != 0), interval_s_(interval_s) {}

Progress::~Progress() { finish(); }

void Progress::update(int64_t done, int64_t total, const std::string& text, double eta_s) {
  const auto now = std::chrono::steady_clock::now();
  const bool last = done >= total;
  if (!tty_ && any_ && !last && std::chrono::duration<double>(now - last_).count() < interval_s_) return;
  last_ = now;
  any_ = true;
  char head[64];
  std::snprintf(head, sizeof head, "[%lld/%lld] ", static_cast<long long>(done), static_cast<long long>(total));
  std::string line(head);
  line += text;
  if (eta_s >= 0 && !last) {
    line += " eta ";
    line += format_duration(eta_s);
  }
  if (tty_) {
    // \033[K clears what a longer previous line left behind.
    std::fprintf(stderr, "\r%s\033[K", line.c_str());
    open_line_ = true;
  } else {
    std::fprintf(stderr, "%s\n", line.c_str());
  }
  std::fflush(stderr);
}

void Progress::finish() {
  if (open_line_) {
    std::fputc('\n', stderr);
    std::fflush(stderr);
    open_line_ = false;
  }
}

}  // namespace kvq::cli
