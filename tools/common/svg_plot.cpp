// SVG scatter plot writer; see svg_plot.h.
#include "tools/common/svg_plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "formats/atomic_file.h"
#include "formats/error.h"

namespace kvq::cli {
namespace {

std::string esc(const std::string& s) {
  std::string o;
  for (char c : s) {
    switch (c) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '"': o += "&quot;"; break;
      case '\'': o += "&apos;"; break;
      default: o.push_back(c);
    }
  }
  return o;
}

std::string num(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.2f", v);
  return b;
}

std::string tick_label(double v, double step) {
  char b[32];
  const int decimals = step >= 1 ? 0 : static_cast<int>(std::ceil(-std::log10(step) - 1e-9));
  std::snprintf(b, sizeof b, "%.*f", decimals, v);
  return b;
}

}  // namespace

std::vector<double> nice_ticks(double lo, double hi, int target) {
  if (!(hi > lo)) {  // one value: a unit range around it
    const double pad = lo == 0 ? 1.0 : std::abs(lo) * 0.1;
    lo -= pad;
    hi += pad;
  }
  const double raw = (hi - lo) / std::max(1, target);
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (m * mag >= raw) { step = m * mag; break; }
  std::vector<double> t;
  for (double v = std::floor(lo / step) * step; v <= hi + step * 0.5; v += step)
    t.push_back(std::abs(v) < step * 1e-9 ? 0.0 : v);
  if (t.back() < hi) t.push_back(t.back() + step);
  return t;
}

std::string render_svg_plot(const std::vector<PlotPoint>& points, const PlotOptions& opt) {
  if (opt.width < 200 || opt.height < 150)
    throw InvalidArgument("--plot", "plot size " + std::to_string(opt.width) + "x" + std::to_string(opt.height) +
                                        " is below 200x150");
  std::vector<PlotPoint> pts;
  for (const auto& p : points)
    if (std::isfinite(p.x) && std::isfinite(p.y)) pts.push_back(p);
  if (pts.empty()) throw InvalidArgument("--plot", "no point has both coordinates measured");
  double x0 = pts[0].x, x1 = x0, y0 = pts[0].y, y1 = y0;
  for (const auto& p : pts) {
    x0 = std::min(x0, p.x); x1 = std::max(x1, p.x);
    y0 = std::min(y0, p.y); y1 = std::max(y1, p.y);
  }
  const auto xt = nice_ticks(std::min(0.0, x0), x1);  // memory axis from 0: ratios read true
  const auto yt = nice_ticks(y0, y1);
  const double ax0 = xt.front(), ax1 = xt.back(), ay0 = yt.front(), ay1 = yt.back();
  const double L = 80, R = opt.width - 30.0, T = 50, B = opt.height - 60.0;
  auto px = [&](double x) { return L + (x - ax0) / (ax1 - ax0) * (R - L); };
  auto py = [&](double y) { return B - (y - ay0) / (ay1 - ay0) * (B - T); };

  std::string s;
  s += "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";
  s += "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + std::to_string(opt.width) + "\" height=\"" +
       std::to_string(opt.height) + "\" viewBox=\"0 0 " + std::to_string(opt.width) + " " +
       std::to_string(opt.height) + "\" font-family=\"sans-serif\" font-size=\"12\">\n";
  s += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  s += "<text x=\"" + num(opt.width / 2.0) + "\" y=\"28\" text-anchor=\"middle\" font-size=\"16\">" + esc(opt.title) +
       "</text>\n";
  const double xstep = xt.size() > 1 ? xt[1] - xt[0] : 1, ystep = yt.size() > 1 ? yt[1] - yt[0] : 1;
  for (double v : xt) {
    s += "<line x1=\"" + num(px(v)) + "\" y1=\"" + num(T) + "\" x2=\"" + num(px(v)) + "\" y2=\"" + num(B) +
         "\" stroke=\"#e0e0e0\"/>\n";
    s += "<text x=\"" + num(px(v)) + "\" y=\"" + num(B + 18) + "\" text-anchor=\"middle\">" + tick_label(v, xstep) +
         "</text>\n";
  }
  for (double v : yt) {
    s += "<line x1=\"" + num(L) + "\" y1=\"" + num(py(v)) + "\" x2=\"" + num(R) + "\" y2=\"" + num(py(v)) +
         "\" stroke=\"#e0e0e0\"/>\n";
    s += "<text x=\"" + num(L - 8) + "\" y=\"" + num(py(v) + 4) + "\" text-anchor=\"end\">" + tick_label(v, ystep) +
         "</text>\n";
  }
  s += "<rect x=\"" + num(L) + "\" y=\"" + num(T) + "\" width=\"" + num(R - L) + "\" height=\"" + num(B - T) +
       "\" fill=\"none\" stroke=\"black\"/>\n";
  s += "<text x=\"" + num((L + R) / 2) + "\" y=\"" + num(opt.height - 18.0) + "\" text-anchor=\"middle\">" +
       esc(opt.x_label) + "</text>\n";
  s += "<text transform=\"translate(18," + num((T + B) / 2) + ") rotate(-90)\" text-anchor=\"middle\">" +
       esc(opt.y_label) + "</text>\n";
  // Markers first, then labels placed so that they overlap no marker and no earlier label:
  // each label tries offsets above and below its point, alternating outwards. Text boxes
  // are estimated at 7 px per character of 12 px sans-serif (an upper bound for Liberation
  // Sans / DejaVu Sans digits and lower case) and 13 px high. Labels of points in the right
  // half go to the left of the point: written rightwards from a point near the right edge
  // they were cut off at the border (seen in a headless-Chromium screenshot of a
  // stories260K compare plot), as was a kivi label written over the fp16 diamond.
  struct Box {
    double x0, y0, x1, y1;
    bool hits(const Box& o) const { return x0 < o.x1 && o.x0 < x1 && y0 < o.y1 && o.y0 < y1; }
  };
  std::vector<Box> taken;
  for (const auto& p : pts) {
    const std::string cx = num(px(p.x)), cy = num(py(p.y));
    if (p.reference) {
      // fp16: a red diamond, so it stands out from the profiles' blue dots.
      s += "<path class=\"reference\" d=\"M " + cx + " " + num(py(p.y) - 7) + " l 7 7 l -7 7 l -7 -7 z\" fill=\"#d62728\"/>\n";
    } else {
      s += "<circle class=\"point\" cx=\"" + cx + "\" cy=\"" + cy + "\" r=\"5\" fill=\"#1f77b4\"/>\n";
    }
    taken.push_back({px(p.x) - 7, py(p.y) - 7, px(p.x) + 7, py(p.y) + 7});
  }
  for (const auto& p : pts) {
    size_t chars = 0;
    for (unsigned char c : p.label) chars += (c & 0xC0) != 0x80;  // code points
    const double w = 7.0 * static_cast<double>(chars);
    const bool right_half = px(p.x) > (L + R) / 2;
    const double tx = px(p.x) + (right_half ? -9 : 9);
    const double bx0 = right_half ? tx - w : tx, bx1 = right_half ? tx : tx + w;
    double ty = py(p.y) - 6;
    for (double dy : {-6.0, 16.0, -20.0, 30.0, -34.0, 44.0, -48.0, 58.0}) {
      const Box b{bx0, py(p.y) + dy - 10, bx1, py(p.y) + dy + 3};
      if (std::none_of(taken.begin(), taken.end(), [&](const Box& o) { return b.hits(o); })) {
        ty = py(p.y) + dy;
        break;
      }
    }
    taken.push_back({bx0, ty - 10, bx1, ty + 3});
    s += "<text class=\"label\" x=\"" + num(tx) + "\" y=\"" + num(ty) + "\"" +
         (right_half ? " text-anchor=\"end\"" : "") + ">" + esc(p.label) + "</text>\n";
  }
  s += "</svg>\n";
  return s;
}

void write_svg_plot(const std::string& path, const std::vector<PlotPoint>& points, const PlotOptions& opt) {
  const std::string svg = render_svg_plot(points, opt);
  AtomicFile f(path);
  f.write(svg);
  f.commit();
}

}  // namespace kvq::cli
