// A line chart on a canvas, small enough to read at a glance: the ticker's and the dashboard's
// charts. No chart library: a few dozen lines do what these pages need.

export class Series {
  constructor(size) {
    this.size = size;
    this.values = [];
  }

  push(value) {
    this.values.push(value);
    if (this.values.length > this.size) this.values.shift();
  }
}

// Draw `values` across the canvas, scaled to their own range (or `min`/`max`), with a soft fill
// under the line and a dot on the newest value.
export function draw(canvas, values, { color = "#2563eb", min, max } = {}) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  if (canvas.width !== Math.round(width * ratio)) canvas.width = Math.round(width * ratio);
  if (canvas.height !== Math.round(height * ratio)) canvas.height = Math.round(height * ratio);
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, width, height);
  if (values.length < 2) return;
  let lo = min ?? Math.min(...values);
  let hi = max ?? Math.max(...values);
  if (hi - lo < 1e-9) { hi += 1; lo -= 1; }
  const pad = 4;
  const x = (i) => pad + (i / (values.length - 1)) * (width - 2 * pad);
  const y = (v) => height - pad - ((v - lo) / (hi - lo)) * (height - 2 * pad);
  g.beginPath();
  values.forEach((v, i) => (i ? g.lineTo(x(i), y(v)) : g.moveTo(x(i), y(v))));
  g.strokeStyle = color;
  g.lineWidth = 1.75;
  g.lineJoin = "round";
  g.stroke();
  g.lineTo(x(values.length - 1), height);
  g.lineTo(x(0), height);
  g.closePath();
  g.globalAlpha = 0.12;
  g.fillStyle = color;
  g.fill();
  g.globalAlpha = 1;
  g.beginPath();
  g.arc(x(values.length - 1), y(values[values.length - 1]), 3, 0, 2 * Math.PI);
  g.fill();
}

// A half-circle gauge: `value` between `min` and `max`, the arc coloured by `color`.
export function gauge(canvas, value, { min = 0, max = 100, color = "#2563eb" } = {}) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  const r = Math.min(width / 2, height) - 12;
  const cx = width / 2;
  const cy = height - 4;
  const share = Math.max(0, Math.min(1, (value - min) / (max - min)));
  g.lineWidth = 10;
  g.lineCap = "round";
  g.beginPath();
  g.arc(cx, cy, r, Math.PI, 2 * Math.PI);
  g.strokeStyle = "#e5e7eb";
  g.stroke();
  g.beginPath();
  g.arc(cx, cy, r, Math.PI, Math.PI + share * Math.PI);
  g.strokeStyle = color;
  g.stroke();
}
