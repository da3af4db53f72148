// --backend and --threads, shared by every tool that runs the model. Backend construction
// itself is lib/backend_factory.h (cpu, cuda, cuda:N, auto).
#pragma once

#include <string>

#include <CLI/CLI.hpp>

namespace kvq::cli {

// --backend cpu|cuda|cuda:N|auto bound to `name` (default as given by the caller).
void add_backend_option(CLI::App& app, std::string& name);
// --threads N (0 = OpenMP's default: OMP_NUM_THREADS, else every core).
void add_threads_option(CLI::App& app, int& threads);

// Sets the OpenMP thread count when threads > 0; returns the count in effect.
int apply_threads(int threads);

}  // namespace kvq::cli
