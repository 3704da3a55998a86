// sae-lens-autointerp index page: the latents table (sort, filter, search, pages of 100) and the scatter of
// any two scorers. Data comes from the page's own <script type="application/json"> (no fetch: works from
// file://). Every value from results data is written with textContent, never as HTML.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("data").textContent);
  var rows = data.rows, scorers = data.scorers, PAGE = 100;
  var state = { key: "l", dir: 1, page: 0, q: "", flag: "", col: "", lo: null, hi: null };

  function value(row, key) {
    if (key === "l") return row.l;
    if (key === "e") return row.e.toLowerCase();
    if (key === "f") return row.f;
    if (key === "n") return row.n;
    if (key.indexOf("s:") === 0) return row.s[key.slice(2)];
    if (key.indexOf("c:") === 0) return row.c[key.slice(2)];
    return null;
  }
  var columns = [["l", "latent"], ["e", "explanation"], ["f", "frequency"]];
  scorers.forEach(function (s) { columns.push(["s:" + s, s]); });
  scorers.forEach(function (s) { columns.push(["c:" + s, s + " control"]); });
  columns.push(["n", "failed"], ["g", "flags"]);

  var thead = document.querySelector("#latents thead"), tbody = document.querySelector("#latents tbody");
  var tr = document.createElement("tr");
  columns.forEach(function (c) {
    var th = document.createElement("th");
    th.textContent = c[1];
    th.dataset.key = c[0];
    if (c[0] !== "g") th.addEventListener("click", function () {
      state.dir = state.key === c[0] ? -state.dir : (c[0] === "l" || c[0] === "e" ? 1 : -1);
      state.key = c[0]; state.page = 0; render();
    });
    tr.appendChild(th);
  });
  thead.appendChild(tr);

  var flagSelect = document.getElementById("flag"), colSelect = document.getElementById("col");
  var flags = {};
  rows.forEach(function (r) { r.g.forEach(function (g) { flags[g] = (flags[g] || 0) + 1; }); });
  Object.keys(flags).sort().forEach(function (g) {
    var o = document.createElement("option"); o.value = g; o.textContent = g + " (" + flags[g] + ")"; flagSelect.appendChild(o);
  });
  var none = document.createElement("option"); none.value = ""; none.textContent = "filter by…"; colSelect.appendChild(none);
  columns.forEach(function (c) {
    if (c[0] === "e" || c[0] === "g") return;
    var o = document.createElement("option"); o.value = c[0]; o.textContent = c[1]; colSelect.appendChild(o);
  });

  function filtered() {
    var q = state.q.toLowerCase().trim();
    return rows.filter(function (r) {
      if (q && r.e.toLowerCase().indexOf(q) < 0 && String(r.l) !== q) return false;
      if (state.flag && r.g.indexOf(state.flag) < 0) return false;
      if (state.col) {
        var v = value(r, state.col);
        if (v === null || v === undefined) return false;
        if (state.lo !== null && v < state.lo) return false;
        if (state.hi !== null && v > state.hi) return false;
      }
      return true;
    });
  }
  function compare(a, b) {
    var x = value(a, state.key), y = value(b, state.key);
    var nx = x === null || x === undefined, ny = y === null || y === undefined;
    if (nx || ny) return nx === ny ? a.l - b.l : (nx ? 1 : -1); // missing values last either way
    if (x !== y) return (x < y ? -1 : 1) * state.dir;
    return a.l - b.l; // ties: by latent, whichever the direction
  }
  function fmt(v, digits) { return v === null || v === undefined ? "–" : v.toFixed(digits); }
  function cell(text, cls) { var td = document.createElement("td"); td.textContent = text; if (cls) td.className = cls; return td; }

  function render() {
    var list = filtered().sort(compare);
    var pages = Math.max(1, Math.ceil(list.length / PAGE));
    state.page = Math.min(state.page, pages - 1);
    var frag = document.createDocumentFragment();
    list.slice(state.page * PAGE, (state.page + 1) * PAGE).forEach(function (r) {
      var row = document.createElement("tr");
      var first = document.createElement("td");
      if (r.h) { var a = document.createElement("a"); a.href = r.h; a.textContent = r.l; first.appendChild(a); }
      else first.textContent = r.l;
      row.appendChild(first);
      row.appendChild(cell(r.e, "ex"));
      row.appendChild(cell(r.f === null ? "–" : (100 * r.f).toFixed(3) + "%", "num"));
      scorers.forEach(function (s) { row.appendChild(cell(fmt(r.s[s], 3), "num")); });
      scorers.forEach(function (s) { row.appendChild(cell(fmt(r.c[s], 3), "num")); });
      row.appendChild(cell(String(r.n), "num"));
      var tags = document.createElement("td");
      r.g.forEach(function (g) { var t = document.createElement("span"); t.className = "tag"; t.textContent = g; tags.appendChild(t); });
      row.appendChild(tags);
      frag.appendChild(row);
    });
    tbody.replaceChildren(frag);
    thead.querySelectorAll("th").forEach(function (th) {
      th.className = th.dataset.key === state.key ? (state.dir > 0 ? "asc" : "desc") : "";
    });
    document.getElementById("count").textContent = list.length + " of " + rows.length + " latents";
    document.getElementById("pageinfo").textContent = "page " + (state.page + 1) + " of " + pages;
    document.getElementById("prev").disabled = state.page === 0;
    document.getElementById("next").disabled = state.page >= pages - 1;
  }
  function number(id) { var v = document.getElementById(id).value; return v === "" ? null : parseFloat(v); }
  document.getElementById("q").addEventListener("input", function (e) { state.q = e.target.value; state.page = 0; render(); });
  flagSelect.addEventListener("change", function (e) { state.flag = e.target.value; state.page = 0; render(); });
  colSelect.addEventListener("change", function (e) { state.col = e.target.value; state.page = 0; render(); });
  ["lo", "hi"].forEach(function (id) {
    document.getElementById(id).addEventListener("input", function () { state[id] = number(id); state.page = 0; render(); });
  });
  document.getElementById("prev").addEventListener("click", function () { state.page -= 1; render(); });
  document.getElementById("next").addEventListener("click", function () { state.page += 1; render(); });
  render();

  // the scatter of any two scorers, one point per latent both scored
  var sx = document.getElementById("sx"), sy = document.getElementById("sy");
  if (sx && sy && scorers.length > 1 && window.Plotly) {
    scorers.forEach(function (s, i) {
      [sx, sy].forEach(function (sel) { var o = document.createElement("option"); o.value = s; o.textContent = s; sel.appendChild(o); });
    });
    sx.value = scorers[0]; sy.value = scorers[1];
    var scatter = function () {
      var pts = rows.filter(function (r) { return r.s[sx.value] != null && r.s[sy.value] != null; });
      Plotly.react("scatter", [{
        x: pts.map(function (r) { return r.s[sx.value]; }), y: pts.map(function (r) { return r.s[sy.value]; }),
        text: pts.map(function (r) { return "latent " + r.l; }), mode: "markers", type: pts.length > 5000 ? "scattergl" : "scatter",
        marker: { size: 6, opacity: 0.6 }, hovertemplate: "%{text}: %{x:.3f}, %{y:.3f}<extra></extra>"
      }], { height: 380, margin: { t: 20, b: 45, l: 55, r: 20 }, xaxis: { title: { text: sx.value } }, yaxis: { title: { text: sy.value } } },
      { displayModeBar: false });
    };
    sx.addEventListener("change", scatter); sy.addEventListener("change", scatter);
    scatter();
  }
})();
