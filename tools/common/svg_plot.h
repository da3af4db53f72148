// Quality-versus-KV-memory scatter plot as a standalone SVG file (kvq-eval --plot): one
// point per profile, labelled with its method, the fp16 reference drawn as a distinct
// marker. A small self-made writer: fixed layout, linear axes with "nice" ticks (1/2/5 x
// 10^n steps), text escaped for XML; no scripts, no external fonts or stylesheets, so the
// file opens the same in any browser (scripts/screenshot_svg.sh renders it headlessly).
#pragma once

#include <string>
#include <vector>

namespace kvq::cli {

struct PlotPoint {
  std::string label;
  double x = 0.0;  // e.g. KV bytes per token
  double y = 0.0;  // e.g. PPL, KLD, accuracy
  bool reference = false;
};

struct PlotOptions {
  std::string title = "Quality vs KV memory";
  std::string x_label = "KV cache bytes per token";
  std::string y_label = "perplexity";
  int width = 760, height = 480;
};

// The SVG document. Points with a non-finite x or y are left out (a metric not measured);
// InvalidArgument when no point is left or the size is below 200 x 150.
std::string render_svg_plot(const std::vector<PlotPoint>& points, const PlotOptions& opt = {});

// Tick values covering [lo, hi] with about `target` steps of 1, 2 or 5 x 10^n.
std::vector<double> nice_ticks(double lo, double hi, int target = 5);

// render_svg_plot written atomically to `path` (IoError naming it on failure).
void write_svg_plot(const std::string& path, const std::vector<PlotPoint>& points, const PlotOptions& opt = {});

}  // namespace kvq::cli
