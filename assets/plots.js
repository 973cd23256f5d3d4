() => {
  // Runs once when the page loads (gr.Blocks.launch(js=...)).
  //
  // Gradio mounts a new Plotly div for every new figure of a gr.Plot and drops the old one without
  // purging it, so every 3D figure keeps a WebGL context alive after it has left the page; past the
  // browser's limit (about 16) the oldest context is lost, and that can be the image editor's. Here:
  // 1. a 3D plot that leaves the page is purged and its WebGL context given back at once;
  // 2. the 3D view of the cache (#cache-plot) keeps the camera the user chose when it is redrawn for
  //    the same scene (same layout.uirevision): the camera is noted whenever the view is turned, and
  //    handed to the next figure drawn in the same place.
  const cameras = {};  // container id -> {uirevision, camera}
  const KEEP_CAMERA = ["cache-plot"];

  const scenes = (gd) => Object.keys(gd._fullLayout || {}).filter((k) => /^scene\d*$/.test(k))
    .map((k) => gd._fullLayout[k]._scene).filter(Boolean);

  const containerOf = (gd) => KEEP_CAMERA.find((id) => gd.closest && gd.closest("#" + id));

  const release = (gd) => {
    if (!scenes(gd).length || !window.Plotly) return;  // 2D plots hold no WebGL context
    // a moment later, once Plotly's own pending redraws of the plot have run (purging at once makes them throw)
    setTimeout(() => {
      const contexts = scenes(gd).map((s) => s.glplot && s.glplot.gl).filter(Boolean);
      try { window.Plotly.purge(gd); } catch (e) { /* already torn down */ }
      // purge drops Plotly's references, but the browser frees a context only when it is collected;
      // losing it explicitly frees it now, so a long session never reaches the browser's limit
      for (const gl of contexts) { const ext = gl.getExtension("WEBGL_lose_context"); if (ext) ext.loseContext(); }
    }, 1000);
  };

  const noteCamera = (gd, id) => {
    const scene = scenes(gd)[0];
    if (scene && gd.layout) cameras[id] = {uirevision: gd.layout.uirevision, camera: scene.getCamera()};
  };

  const wrapReact = () => {  // Plotly is loaded with the first plot; its react() draws every later one
    const P = window.Plotly;
    if (!P || P.mirageWrapped) return;
    const react = P.react;
    P.react = function (gd, data, layout, config) {
      const id = containerOf(gd);
      const keep = id && cameras[id];
      if (keep && layout && layout.uirevision === keep.uirevision) {
        layout.scene = Object.assign({}, layout.scene, {camera: keep.camera});
      }
      const out = react.call(this, gd, data, layout, config);
      if (id && !gd.mirageListening && gd.on) {
        gd.mirageListening = true;
        gd.on("plotly_relayout", () => noteCamera(gd, id));
      }
      return out;
    };
    P.mirageWrapped = true;
  };

  const plotsIn = (node) => node.nodeType !== 1 ? [] :
    node.matches(".js-plotly-plot") ? [node] : [...node.querySelectorAll(".js-plotly-plot")];

  new MutationObserver((mutations) => {
    for (const m of mutations) {
      for (const node of m.removedNodes) plotsIn(node).forEach(release);
      const added = [...m.addedNodes].flatMap(plotsIn);
      if (m.type === "attributes" && m.target.classList.contains("js-plotly-plot")) added.push(m.target);
      for (const gd of added) {
        wrapReact();
        const id = containerOf(gd);
        if (id && !gd.mirageListening && gd.on) {
          gd.mirageListening = true;
          gd.on("plotly_relayout", () => noteCamera(gd, id));
        }
      }
    }
  }).observe(document.body, {childList: true, subtree: true, attributes: true, attributeFilter: ["class"]});
}
