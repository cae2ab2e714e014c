// Canvas charts with axes: a plot frame, round-number ticks, axis labels, a robust view.
import { number } from "./dom.js";

const MARGIN = { left: 58, right: 14, top: 26, bottom: 44 };
const INK = "#1d232b";
const GRID = "#d5dbe1";

// The q-th quantile (0..1) of the finite values, by linear interpolation.
export function quantile(values, q) {
  const sorted = values.filter(Number.isFinite).sort((a, b) => a - b);
  if (!sorted.length) return NaN;
  const at = (sorted.length - 1) * q;
  const lo = Math.floor(at);
  const hi = Math.min(lo + 1, sorted.length - 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (at - lo);
}

// A view of values that far outliers do not stretch: the 0.5%-99.5% quantile range, padded
// by a tenth of its span on each side.
export function robustRange(values) {
  const lo = quantile(values, 0.005);
  const hi = quantile(values, 0.995);
  const span = hi - lo || Math.abs(hi) || 1;
  return [lo - 0.1 * span, hi + 0.1 * span];
}

// About `count` round tick values (1, 2 or 5 times a power of ten apart) inside [lo, hi].
export function ticks(lo, hi, count = 7) {
  const raw = (hi - lo) / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => raw <= s) || 10 * power;
  const out = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) {
    out.push(Math.abs(t) < step * 1e-9 ? 0 : t);
  }
  return out;
}

// A chart on `canvas` over x in xRange and y in yRange: `x(v)` and `y(v)` map data to pixels
// inside the frame; `axes()` draws the frame, ticks, grid and labels (after the data).
export function frame(canvas, xRange, yRange, { xLabel, yLabel, title } = {}) {
  const ctx = canvas.getContext("2d");
  const [x0, x1] = xRange;
  const [y0, y1] = yRange;
  const left = MARGIN.left;
  const top = MARGIN.top;
  const width = canvas.width - MARGIN.left - MARGIN.right;
  const height = canvas.height - MARGIN.top - MARGIN.bottom;
  const x = (v) => left + ((v - x0) / (x1 - x0)) * width;
  const y = (v) => top + ((y1 - v) / (y1 - y0)) * height;
  const inside = (px, py) => px >= left && px <= left + width && py >= top && py <= top + height;

  function axes() {
    ctx.save();
    ctx.strokeStyle = INK;
    ctx.fillStyle = INK;
    ctx.lineWidth = 1;
    ctx.strokeRect(left, top, width, height);
    ctx.font = "11px system-ui, sans-serif";
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    const xTicks = ticks(x0, x1);
    xTicks.forEach((t) => {
      ctx.beginPath();
      ctx.moveTo(x(t), top + height);
      ctx.lineTo(x(t), top + height + 5);
      ctx.stroke();
      ctx.fillText(number(t, 4), x(t), top + height + 7);
    });
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    const yTicks = ticks(y0, y1);
    yTicks.forEach((t) => {
      ctx.beginPath();
      ctx.moveTo(left - 5, y(t));
      ctx.lineTo(left, y(t));
      ctx.stroke();
      ctx.fillText(number(t, 4), left - 7, y(t));
    });
    ctx.font = "12px system-ui, sans-serif";
    ctx.textAlign = "center";
    ctx.textBaseline = "bottom";
    if (xLabel) ctx.fillText(xLabel, left + width / 2, canvas.height - 4);
    if (title) ctx.fillText(title, left + width / 2, top - 8);
    if (yLabel) {
      ctx.translate(14, top + height / 2);
      ctx.rotate(-Math.PI / 2);
      ctx.textBaseline = "middle";
      ctx.fillText(yLabel, 0, 0);
    }
    ctx.restore();
    // What was drawn, for assistive technology and tests.
    canvas.dataset.xLabel = xLabel || "";
    canvas.dataset.yLabel = yLabel || "";
    canvas.dataset.xTicks = xTicks.map((t) => number(t, 4)).join(" ");
    canvas.dataset.yTicks = yTicks.map((t) => number(t, 4)).join(" ");
  }

  function clear(background = "#fff") {
    ctx.fillStyle = background;
    ctx.fillRect(0, 0, canvas.width, canvas.height);
  }

  function grid() {
    ctx.save();
    ctx.strokeStyle = GRID;
    ticks(y0, y1).forEach((t) => {
      ctx.beginPath();
      ctx.moveTo(left, y(t));
      ctx.lineTo(left + width, y(t));
      ctx.stroke();
    });
    ctx.restore();
  }

  return { ctx, x, y, inside, axes, clear, grid, box: { left, top, width, height } };
}
