// Counts what the browser actually plotted: points of the SVD traces (uid "svd-*") of the
// Pareto chart, and the figures rendered, written as JSON into #ranksearch-selfcheck once
// every figure has been drawn (the browser test reads it; a reader never sees it).
(function () {
  function check(attempt) {
    var plots = document.querySelectorAll(".ranksearch-figure .plotly-graph-div");
    var drawn = Array.prototype.filter.call(plots, function (gd) { return gd._fullLayout; });
    if (drawn.length < plots.length && attempt < 200) {
      setTimeout(function () { check(attempt + 1); }, 50);
      return;
    }
    var out = document.getElementById("ranksearch-selfcheck");
    var gd = document.getElementById("fig-pareto");
    var svdPoints = 0;
    (gd && gd._fullData ? gd._fullData : []).forEach(function (trace) {
      if (String(trace.uid || "").indexOf("svd-") === 0) { svdPoints += trace._length; }
    });
    // Points drawn as SVG elements (none for WebGL traces, which paint a canvas).
    var svgPoints = gd ? gd.querySelectorAll('g.trace[class*="tracesvd-"] path.point').length : 0;
    out.textContent = JSON.stringify({
      svd_points: svdPoints, svg_points: svgPoints, webgl: out.dataset.webgl === "true",
      figures: plots.length, drawn: drawn.length,
      errors: window.__ranksearchErrors
    });
  }
  window.addEventListener("load", function () { check(0); });
})();
