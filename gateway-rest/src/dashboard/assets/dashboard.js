// OpenClaw Dashboard: the only script the pages run (CSP: script-src 'self').
// Copy buttons, the "shown once" page's address, live charts and live events.
"use strict";

(function () {
  const csrf = document.body ? document.body.dataset.csrf || "" : "";

  // A new key's page: reloading must show the key list, never the key again.
  const once = document.querySelector("[data-replace-url]");
  if (once && window.history && window.history.replaceState) {
    window.history.replaceState(null, "", once.dataset.replaceUrl);
  }

  document.querySelectorAll("button[data-copy]").forEach(function (button) {
    button.addEventListener("click", function () {
      const source = document.getElementById(button.dataset.copy);
      if (!source) return;
      const text = source.value !== undefined ? source.value : source.textContent;
      const done = function () {
        const label = button.textContent;
        button.textContent = "Copied";
        setTimeout(function () { button.textContent = label; }, 1500);
      };
      if (navigator.clipboard && navigator.clipboard.writeText) {
        navigator.clipboard.writeText(text).then(done, function () {});
      } else if (source.select) {
        source.select();
        document.execCommand("copy");
        done();
      }
    });
  });

  // Per-minute charts, redrawn from the JSON endpoint every 10 seconds.
  const SVG = "http://www.w3.org/2000/svg";
  function draw(id, values) {
    const svg = document.getElementById(id);
    if (!svg) return;
    const box = svg.viewBox.baseVal;
    const max = Math.max(1, Math.max.apply(null, values));
    const step = box.width / Math.max(1, values.length);
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    let total = 0;
    values.forEach(function (value, i) {
      total += value;
      const h = (value / max) * (box.height - 4);
      const rect = document.createElementNS(SVG, "rect");
      rect.setAttribute("x", (i * step).toFixed(1));
      rect.setAttribute("y", (box.height - h).toFixed(1));
      rect.setAttribute("width", Math.max(1, step - 1).toFixed(1));
      rect.setAttribute("height", h.toFixed(1));
      const title = document.createElementNS(SVG, "title");
      title.textContent = String(value);
      rect.appendChild(title);
      svg.appendChild(rect);
    });
    const label = document.querySelector('[data-total-for="' + id + '"]');
    if (label) label.textContent = "(" + total + " in the last hour, peak " + Math.max.apply(null, values.concat([0])) + "/min)";
    const figure = svg.closest("figure");
    const caption = figure ? figure.querySelector("figcaption") : null;
    svg.setAttribute("aria-label", (caption ? caption.firstChild.textContent.trim() : id) + ": " + total + " in the last hour");
  }
  const charts = document.querySelector("[data-traffic-url]");
  if (charts) {
    const refresh = function () {
      fetch(charts.dataset.trafficUrl, { headers: { "X-CSRF-Token": csrf }, credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
        .then(function (data) {
          const pick = function (field) { return data.minutes.map(function (m) { return m[field]; }); };
          draw("chart-requests", pick("requests"));
          draw("chart-tokens", pick("tokens"));
          draw("chart-rejections", pick("rejections"));
          charts.dataset.updated = String(Date.now());
        })
        .catch(function () {});
    };
    refresh();
    setInterval(refresh, 10000);
  }

  // Live events from the dashboard's SSE proxy of the core's event stream.
  const list = document.getElementById("events");
  if (list && window.EventSource) {
    const state = document.getElementById("events-state");
    const source = new EventSource(list.dataset.stream);
    source.onopen = function () { if (state) state.textContent = "Live: waiting for events."; };
    source.onerror = function () { if (state) state.textContent = "Reconnecting…"; };
    source.addEventListener("event", function (message) {
      let event;
      try { event = JSON.parse(message.data); } catch (_) { return; }
      const item = document.createElement("li");
      const head = document.createElement("strong");
      head.textContent = event.type;
      const time = document.createElement("span");
      time.className = "time";
      time.textContent = " " + event.time + " ";
      const text = document.createElement("span");
      text.textContent = event.text;
      item.append(head, time, text);
      list.insertBefore(item, list.firstChild);
      while (list.children.length > 200) list.removeChild(list.lastChild);
      if (state) state.textContent = "Live.";
    });
  }
})();
