// Renders /openapi.json as a list of paths and operations. No external resources: the
// page runs under a CSP that allows only this script, its stylesheet and same-origin fetch.
(function () {
  "use strict";
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined) { e.textContent = text; }
    return e;
  }
  fetch("/openapi.json").then(function (r) { return r.json(); }).then(function (spec) {
    var info = document.getElementById("info");
    info.textContent = (spec.info.description || "") + " Version " + spec.info.version + ".";
    var main = document.getElementById("paths");
    Object.keys(spec.paths).forEach(function (path) {
      var section = el("section");
      section.appendChild(el("h2", null, path)).className = "path";
      var item = spec.paths[path];
      Object.keys(item).forEach(function (method) {
        if (method === "parameters") { return; }
        var op = item[method];
        var div = el("div", "op");
        div.appendChild(el("span", "method " + method, method));
        div.appendChild(el("span", null, op.summary || ""));
        if (op.tags) { div.appendChild(el("span", "tag", "  [" + op.tags.join(", ") + "]")); }
        if (op.description) { div.appendChild(el("p", null, op.description)); }
        var codes = Object.keys(op.responses || {}).map(function (c) {
          return c + " " + (op.responses[c].description || "");
        });
        div.appendChild(el("div", "responses", "Responses: " + codes.join("; ")));
        section.appendChild(div);
      });
      main.appendChild(section);
    });
  }).catch(function (e) {
    document.getElementById("info").textContent = "Could not load /openapi.json: " + e;
  });
}());
