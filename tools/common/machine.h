// What a benchmark or results line must say about where it ran: the CPU model
// (/proc/cpuinfo), cores, load average at the time (a shared machine's load changes a CPU
// figure by several times, so it is recorded next to it), and the UTC date.
#pragma once

#include <string>

namespace kvq::cli {

std::string cpu_model();    // "AMD EPYC 7B13" or "unknown"
int online_cores();         // sysconf(_SC_NPROCESSORS_ONLN)
std::string load_average(); // first three fields of /proc/loadavg, or ""
std::string utc_now();      // "2026-11-22T16:25:39Z"

}  // namespace kvq::cli
