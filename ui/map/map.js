// The explorer's map: a Streamlit component (the iframe protocol of Streamlit's
// components API v1, spoken directly: no build step, no CDN). Python sends the layers as
// render args (ui/mapview.py); the map sends back {view, events}: the current view, and the
// last few user events (click, select, area), each with a sequence number so Python acts on
// each exactly once, even when two arrive during one script run.
"use strict";

const SESSION = Math.random().toString(36).slice(2);
let seq = 0;
const events = [];
let view = null;

function post(type, data) {
  window.parent.postMessage(Object.assign({ isStreamlitMessage: true, type: type }, data), "*");
}

function sendValue() {
  post("streamlit:setComponentValue", { value: { view: view, events: events.slice() },
                                        dataType: "json" });
}

function emit(event) {
  seq += 1;
  event.seq = SESSION + ":" + seq;
  events.push(event);
  while (events.length > 8) events.shift();
  sendValue();
}

const state = { map: null, fitKey: null, args: {}, drawing: false, layers: {}, polys: {},
                hoverId: null, hoverBound: false };
const HOVER = "#28d7ff";

function round(v) { return Math.round(v * 1e6) / 1e6; }

function bboxOf(bounds) {
  return [round(bounds.getWest()), round(bounds.getSouth()), round(bounds.getEast()),
          round(bounds.getNorth())];
}

function tileLayer(name, url, zIndex, opacity) {
  const old = state.layers[name];
  if (old && old._url === url) { old.setOpacity(opacity); return; }
  if (old) { state.map.removeLayer(old); delete state.layers[name]; }
  if (!url) return;
  const layer = L.tileLayer(url, { maxZoom: 22, zIndex: zIndex, opacity: opacity,
                                   className: "satfind-" + name });
  layer.addTo(state.map);
  state.layers[name] = layer;
}

function footprintStyle(r, selected) {
  const colour = r.label === "pos" ? "#2ecc40" : r.label === "neg" ? "#ff4136" : "#ff7a1a";
  if (selected || r.id === state.hoverId) {
    return { color: HOVER, weight: 4, fill: true, fillOpacity: 0.12, dashArray: null };
  }
  return { color: colour, weight: r.kind === "labelled" ? 2 : 2.5, fill: true,
           fillOpacity: 0.04, dashArray: r.label === "neg" ? "6 4" : null };
}

// Hover sync without a rerun: the explorer's cards live in the parent page (same origin),
// each in a container with the Streamlit key card_<id> (CSS class st-key-card_<id>).
function parentDoc() {
  try { return window.parent.document; } catch (e) { return null; }
}

function cardOf(id) {
  const doc = parentDoc();
  return doc ? doc.querySelector(".st-key-card_" + id) : null;
}

function hover(id) {
  if (id === state.hoverId) return;
  const before = state.hoverId;
  state.hoverId = id;
  for (const other of [before, id]) {
    const poly = other == null ? null : state.polys[other];
    if (poly) {
      poly.setStyle(footprintStyle(poly.satfindShape, other === state.args.selected));
      if (other === id) poly.bringToFront();
    }
    const card = other == null ? null : cardOf(other);
    if (card) card.style.outline = other === id ? "3px solid " + HOVER : "";
  }
}

function bindCardHover() {
  const doc = parentDoc();
  if (!doc || state.hoverBound) return;
  state.hoverBound = true;
  doc.addEventListener("mouseover", ev => {
    const card = ev.target.closest ? ev.target.closest("[class*='st-key-card_']") : null;
    const m = card ? card.className.match(/st-key-card_(\d+)/) : null;
    hover(m ? Number(m[1]) : null);
  });
}

// A footprint or its number: a click selects the tile; a result's also syncs hovers.
function selectable(layer, id, hovers) {
  layer.on("click", e => {
    L.DomEvent.stopPropagation(e);
    if (!state.drawing) emit({ type: "select", id: id });
  });
  if (hovers) {
    layer.on("mouseover", () => hover(id));
    layer.on("mouseout", () => hover(null));
  }
}

function drawFootprints(args) {
  if (state.layers.footprints) state.map.removeLayer(state.layers.footprints);
  state.polys = {};
  const group = L.featureGroup();
  const shapes = (args.labelled || []).map(r => Object.assign({ kind: "labelled" }, r))
    .concat((args.results || []).map(r => Object.assign({ kind: "result" }, r)));
  for (const r of shapes) {
    const selected = r.id === args.selected;
    const poly = L.polygon(r.ring, Object.assign(footprintStyle(r, selected),
                                                 { className: "satfind-fp-" + r.id }));
    poly.satfindShape = r;
    if (r.kind === "result") state.polys[r.id] = poly;
    const what = r.kind === "result" ? "#" + r.rank + " · tile " + r.id + " · " + r.score
      : "labelled tile " + r.id;
    poly.bindTooltip(what + (r.label ? " · " + (r.label === "pos" ? "relevant" : "irrelevant")
      : "") + (r.when ? " · " + r.when : ""), { sticky: true });
    selectable(poly, r.id, r.kind === "result");
    group.addLayer(poly);
    if (r.kind === "result") {
      const icon = L.divIcon({ className: "", html: "<div class='satfind-rank" +
        (selected ? " selected" : "") + "'>" + r.rank + "</div>", iconSize: null });
      const marker = L.marker(poly.getBounds().getCenter(),
                              { icon: icon, interactive: true, keyboard: false });
      selectable(marker, r.id, true);
      group.addLayer(marker);
    }
    if (selected) poly.bringToFront();
  }
  if (args.area) {
    const [w, s, e, n] = args.area;
    group.addLayer(L.rectangle([[s, w], [n, e]], { color: "#ffffff", weight: 2, fill: false,
                                                   dashArray: "8 6", interactive: false }));
  }
  group.addTo(state.map);
  state.layers.footprints = group;
}

function drawLegend(legend) {
  if (state.legend) { state.map.removeControl(state.legend); state.legend = null; }
  if (!legend) return;
  const control = L.control({ position: "bottomright" });
  control.onAdd = () => {
    const div = L.DomUtil.create("div", "satfind-legend");
    const span = legend.vmax - legend.vmin;
    const cut = legend.threshold == null ? null
      : Math.max(0, Math.min(1, (legend.threshold - legend.vmin) / span));
    div.innerHTML = "<b>score</b> (" + (legend.title || "this query") + ")" +
      "<div class='bar' style='background: linear-gradient(to right, " +
      legend.ramp.join(", ") + ")'>" +
      (cut == null ? "" : "<div class='cut' style='left: " + (cut * 100).toFixed(1) + "%'></div>") +
      "</div><div class='ends'><span>" + legend.vmin.toFixed(3) + "</span><span>" +
      legend.vmax.toFixed(3) + "</span></div>" +
      (legend.threshold == null ? "" : "<div>hidden below " + legend.threshold.toFixed(3) +
       "</div>");
    return div;
  };
  control.addTo(state.map);
  state.legend = control;
}

function createMap(args) {
  const map = L.map("map", { zoomControl: true, worldCopyJump: true, minZoom: 1 });
  state.map = map;
  L.control.scale({ imperial: false }).addTo(map);
  const drawn = new L.FeatureGroup();
  map.addLayer(drawn);
  // showArea false: leaflet-draw 1.0.4's area readout throws with Leaflet 1.9.
  map.addControl(new L.Control.Draw({
    position: "topleft",
    draw: { polyline: false, circle: false, marker: false, circlemarker: false,
            rectangle: { showArea: false, shapeOptions: { color: "#ffffff", weight: 2 } },
            polygon: { showArea: false, shapeOptions: { color: "#ffffff", weight: 2 } } },
    edit: false,
  }));
  map.on(L.Draw.Event.DRAWSTART, () => { state.drawing = true; });
  map.on(L.Draw.Event.DRAWSTOP, () => { setTimeout(() => { state.drawing = false; }, 300); });
  map.on(L.Draw.Event.CREATED, e => {
    const ring = e.layer.getLatLngs()[0].map(p => [round(p.lng), round(p.lat)]);
    emit({ type: "area", bbox: bboxOf(e.layer.getBounds()), polygon: ring });
  });
  map.on("click", e => {
    if (state.drawing) return;
    emit({ type: "click", lon: round(e.latlng.lng), lat: round(e.latlng.lat) });
  });
  let timer = null;
  map.on("moveend", () => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      const c = map.getCenter();
      view = { lat: round(c.lat), lon: round(c.lng), zoom: map.getZoom(),
               bbox: bboxOf(map.getBounds()) };
      sendValue();
    }, 400);
  });
  const hint = L.control({ position: "topright" });
  hint.onAdd = () => {
    const div = L.DomUtil.create("div", "satfind-hint");
    div.textContent = args.hint || "";
    return div;
  };
  if (args.hint) hint.addTo(map);
  if (args.view) {
    map.setView([args.view.lat, args.view.lon], args.view.zoom);
    state.fitKey = args.fit_key;  // a shared link's view wins over the results' framing
  } else if (args.fit) {
    map.fitBounds(args.fit, { padding: [24, 24], maxZoom: 17 });
    state.fitKey = args.fit_key;
  } else {
    map.setView([20, 0], 2);
  }
}

function render(args) {
  if (!state.map) {
    document.getElementById("map").style.height = args.map_height + "px";
    post("streamlit:setFrameHeight", { height: args.map_height });
    createMap(args);
  }
  tileLayer("basemap", args.basemap || "", 1, 1.0);
  tileLayer("imagery", args.imagery || "", 2, 1.0);
  tileLayer("heat", args.heat || "", 3, args.heat_opacity == null ? 0.75 : args.heat_opacity);
  state.args = args;
  drawFootprints(args);
  drawLegend(args.legend);
  bindCardHover();
  if (args.fit && args.fit_key !== state.fitKey) {
    state.map.fitBounds(args.fit, { padding: [24, 24], maxZoom: 17 });
    state.fitKey = args.fit_key;
  }
}

window.addEventListener("message", ev => {
  if (ev.data && ev.data.type === "streamlit:render") render(ev.data.args);
});
post("streamlit:componentReady", { apiVersion: 1 });
