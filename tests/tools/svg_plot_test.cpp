// The SVG plot: well-formed XML for the points given (balanced tags, escaped labels), one
// marker per measured point with fp16 distinct, coordinates inside the plot area, nice
// ticks, atomic write and errors.
#include <cmath>
#include <regex>
#include <string>
#include <vector>

#include "formats/error.h"
#include "tests/catch.h"
#include "tests/support/test_support.h"
#include "tools/common/svg_plot.h"

using namespace kvq;
using namespace kvq::cli;

namespace {
int count(const std::string& s, const std::string& n) {
  int c = 0;
  for (size_t p = s.find(n); p != std::string::npos; p = s.find(n, p + 1)) ++c;
  return c;
}
}  // namespace

TEST_CASE("nice_ticks: 1/2/5 steps covering the range", "[svg]") {
  // [0, 9216] / 5 = 1843 -> step 2000: 0, 2000, ..., 10000.
  const auto t = nice_ticks(0, 9216);
  REQUIRE(t.size() == 6);
  CHECK(t.front() == 0.0);
  CHECK(t.back() == 10000.0);
  // [362.0, 597.4] / 5 = 47 -> step 50: 350 .. 600.
  const auto u = nice_ticks(362.0, 597.4);
  CHECK(u.front() == 350.0);
  CHECK(u.back() == 600.0);
  // One value: a range around it.
  const auto v = nice_ticks(1.0, 1.0);
  CHECK(v.front() <= 0.9);
  CHECK(v.back() >= 1.1);
}

TEST_CASE("render_svg_plot: markers, escaping, bounds", "[svg]") {
  const std::vector<PlotPoint> pts = {{"fp16", 9216, 362.0, true},
                                      {"int4", 2592, 369.2, false},
                                      {"kivi<2>&co", 1440, 597.4, false},
                                      {"unmeasured", NAN, 400.0, false}};
  PlotOptions opt;
  const std::string s = render_svg_plot(pts, opt);
  CHECK(s.rfind("<?xml", 0) == 0);
  CHECK(count(s, "<svg") == 1);
  CHECK(count(s, "</svg>") == 1);
  CHECK(count(s, "class=\"reference\"") == 1);
  CHECK(count(s, "class=\"point\"") == 2);          // NaN point left out
  CHECK(s.find("unmeasured") == std::string::npos);
  CHECK(s.find("kivi&lt;2&gt;&amp;co") != std::string::npos);
  CHECK(s.find("kivi<2>") == std::string::npos);
  // Every circle inside the plot area [80, width-30] x [50, height-60].
  const std::regex circle("cx=\"([0-9.]+)\" cy=\"([0-9.]+)\"");
  int seen = 0;
  for (auto it = std::sregex_iterator(s.begin(), s.end(), circle); it != std::sregex_iterator(); ++it, ++seen) {
    const double cx = std::stod((*it)[1]), cy = std::stod((*it)[2]);
    CHECK(cx >= 80);
    CHECK(cx <= opt.width - 30);
    CHECK(cy >= 50);
    CHECK(cy <= opt.height - 60);
  }
  CHECK(seen == 2);
  CHECK_THROWS_AS(render_svg_plot({{"x", NAN, 1, false}}), InvalidArgument);
  PlotOptions tiny;
  tiny.width = 100;
  CHECK_THROWS_AS(render_svg_plot(pts, tiny), InvalidArgument);
}

TEST_CASE("render_svg_plot: labels of near points do not overlap", "[svg]") {
  // fp16 at (640, 51.7) and kivi at (560, 46.4) on a 0..1500 x 0..200 plot are 32 px
  // apart horizontally and 9 px vertically: the first placement of kivi's label (6 px above
  // its dot) would run over the fp16 diamond and its label (seen in a Chromium screenshot).
  const std::vector<PlotPoint> pts = {{"fp16", 640, 51.7, true},
                                      {"int8:axis=token", 1440, 51.7, false},
                                      {"kivi:bits=2,group=8,residual=32", 560, 46.4, false},
                                      {"int2", 480, 154.8, false}};
  const std::string s = render_svg_plot(pts);
  const std::regex label("<text class=\"label\" x=\"([0-9.]+)\" y=\"([0-9.]+)\"( text-anchor=\"end\")?>([^<]*)</text>");
  struct B { double x0, y0, x1, y1; std::string t; };
  std::vector<B> boxes;
  for (auto it = std::sregex_iterator(s.begin(), s.end(), label); it != std::sregex_iterator(); ++it) {
    const double x = std::stod((*it)[1]), y = std::stod((*it)[2]);
    const double w = 7.0 * static_cast<double>((*it)[4].length());
    const bool end = (*it)[3].matched;
    boxes.push_back({end ? x - w : x, y - 10, end ? x : x + w, y + 3, (*it)[4]});
  }
  REQUIRE(boxes.size() == 4);
  // The right-half point's label is right-aligned (ends left of its dot).
  CHECK(s.find("text-anchor=\"end\">int8:axis=token<") != std::string::npos);
  for (size_t i = 0; i < boxes.size(); ++i)
    for (size_t j = i + 1; j < boxes.size(); ++j) {
      INFO(boxes[i].t << " vs " << boxes[j].t);
      CHECK_FALSE((boxes[i].x0 < boxes[j].x1 && boxes[j].x0 < boxes[i].x1 && boxes[i].y0 < boxes[j].y1 &&
                   boxes[j].y0 < boxes[i].y1));
    }
}

TEST_CASE("write_svg_plot: atomic file, IoError for a missing folder", "[svg]") {
  const auto dir = kvq_test::scratch_dir("svg_plot");
  const auto path = (dir / "plot.svg").string();
  write_svg_plot(path, {{"fp16", 100, 1.0, true}});
  const auto bytes = kvq_test::read_bytes(path);
  CHECK(std::string(bytes.begin(), bytes.end()) == render_svg_plot({{"fp16", 100, 1.0, true}}));
  CHECK_THROWS_AS(write_svg_plot((dir / "no/such/dir/p.svg").string(), {{"fp16", 100, 1.0, true}}), IoError);
}
