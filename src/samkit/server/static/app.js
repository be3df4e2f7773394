// samkit interactive page: upload -> click/box prompts -> masks; labelled objects; export.
// Plain JS, no build step. Masks are Uint8Array(H*W), row-major, 1 = object.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const els = {
    openBtn: $("open-btn"), fileInput: $("file-input"), fileName: $("file-name"), status: $("status"),
    modelInfo: $("model-info"), stage: $("stage"), dropzone: $("dropzone"), wrap: $("canvas-wrap"),
    imageCanvas: $("image-canvas"), objectsCanvas: $("objects-canvas"), maskCanvas: $("mask-canvas"),
    promptLayer: $("prompt-layer"), progress: $("progress"), progressLabel: $("progress-label"),
    progressFill: $("progress-fill"), progressTime: $("progress-time"), candidates: $("candidates"),
    acceptBtn: $("accept-btn"), undoBtn: $("undo-btn"), clearBtn: $("clear-btn"), refine: $("refine"),
    swatch: $("current-swatch"), objects: $("objects"), objectCount: $("object-count"),
    everythingBtn: $("everything-btn"), pointsPerSide: $("points-per-side"), removeAllBtn: $("remove-all-btn"),
    exportPngBtn: $("export-png-btn"), exportCocoBtn: $("export-coco-btn"), exportYoloBtn: $("export-yolo-btn"),
    category: $("category"), categoryNames: $("category-names"), hqRow: $("hq-row"), hqTokenOnly: $("hq-token-only"),
  };

  const DRAG_THRESHOLD_PX = 5;
  const MASK_ALPHA = 130;
  const OBJECT_ALPHA = 105;
  const DEFAULT_CATEGORY = "object";
  const CATEGORIES_KEY = "samkit.categories"; // sessionStorage: the tab's category names

  const state = {
    file: null, fileName: "", imageId: null, width: 0, height: 0, bitmap: null,
    points: [], labels: [], box: null,
    candidates: [], // [{b64, bitmap, bitmapColor, pending, mask, score, area, logitsId}]; bitmap/mask made on demand
    selected: 0,
    history: [], // undo entries of the current object
    objects: [], // [{id, group, color, mask, area, bbox, score, points, labels, box, source, category}]
    nextObjectId: 1, nextGroup: 1, nextColor: 0,
    seq: 0, busy: false,
    categories: loadCategories(), // names used in this tab, in order of first use: the export's category ids
    categoriesKept: 0, // the first this many were used on earlier images: never dropped
    modelFamily: "sam", // from /api/health: "sam", "hq_sam" or "sam2"
  };
  state.categoriesKept = state.categories.length; // those of an earlier page load in this tab
  // Figures the browser tests read.
  // Read by the tests and the click-latency benchmark; phases: [request+JSON, PNG decode, draw, frame] ms per click.
  const debug = { state, predictsDrawn: 0, lastRoundTripMs: null, roundTrips: [], phases: [], shownIndex: -1 };
  window.samkit = debug;

  // ------------------------------------------------------------------ categories
  /** The tab's category names (sessionStorage: kept across reloads and images, not across tabs). */
  function loadCategories() {
    try {
      const names = JSON.parse(sessionStorage.getItem(CATEGORIES_KEY) || "[]");
      return Array.isArray(names) ? names.filter((n) => typeof n === "string" && n) : [];
    } catch (_) {
      return [];
    }
  }

  function categoryName(text) {
    return String(text || "").trim().slice(0, 200);
  }

  /** The category typed or picked for the next object. */
  function currentCategory() {
    return categoryName(els.category.value) || DEFAULT_CATEGORY;
  }

  function saveCategories() {
    try { sessionStorage.setItem(CATEGORIES_KEY, JSON.stringify(state.categories)); } catch (_) { /* storage off */ }
  }

  /** Add a name to the tab's categories (once, in order of first use) and to the picker. */
  function rememberCategory(name) {
    if (!state.categories.includes(name)) {
      state.categories.push(name);
      saveCategories();
    }
    renderCategoryNames();
  }

  /**
   * Drop the names first used on this image that no object has any more (a typo fixed, an object
   * removed); names used on earlier images stay, so their ids are the same in every export.
   */
  function pruneCategories() {
    const used = new Set(state.objects.map((o) => o.category));
    const kept = state.categories.filter((name, i) => i < state.categoriesKept || used.has(name));
    if (kept.length !== state.categories.length) {
      state.categories = kept;
      saveCategories();
    }
    renderCategoryNames();
  }

  function renderCategoryNames() {
    els.categoryNames.replaceChildren(...state.categories.map((name) => {
      const option = document.createElement("option");
      option.value = name;
      return option;
    }));
  }

  // ------------------------------------------------------------------ status and progress
  function setStatus(text, isError = false) {
    els.status.textContent = text;
    els.status.classList.toggle("error", isError);
  }

  let progressTimer = null;
  function showProgress(label, expectedMs) {
    els.progressLabel.textContent = label;
    els.progress.hidden = false;
    const start = performance.now();
    const tick = () => {
      const elapsed = performance.now() - start;
      // Estimated fraction from the last run's duration; never claims to be done.
      const fraction = expectedMs ? Math.min(0.95, elapsed / expectedMs) : 1 - Math.exp(-elapsed / 8000);
      els.progressFill.style.width = `${(fraction * 100).toFixed(1)}%`;
      els.progressTime.textContent = `${(elapsed / 1000).toFixed(1)} s` + (expectedMs ? ` of ~${(expectedMs / 1000).toFixed(0)} s` : "");
    };
    tick();
    clearInterval(progressTimer);
    progressTimer = setInterval(tick, 100);
  }
  function setProgressFraction(fraction, label) {
    els.progressLabel.textContent = label;
    els.progressFill.style.width = `${(fraction * 100).toFixed(1)}%`;
  }
  function hideProgress() {
    clearInterval(progressTimer);
    els.progress.hidden = true;
  }

  // ------------------------------------------------------------------ API
  const apiJson = SamPage.apiJson;

  /** Upload with progress; resolves to {id, width, height, ...}. */
  function uploadFile(file) {
    const expected = Number(localStorage.getItem("samkit.embedMs")) || 0;
    showProgress("Uploading…", 0);
    return SamPage.upload("/api/images", file, "image", {
      onProgress: (fraction, percent) => setProgressFraction(fraction, `Uploading… ${percent}%`),
      onSent: () => showProgress("Computing the image embedding…", expected),
    });
  }

  // ------------------------------------------------------------------ loading an image
  async function openFile(file) {
    if (!file) return;
    if (file.type && !file.type.startsWith("image/")) {
      setStatus(`${file.name}: not an image`, true);
      return;
    }
    state.seq++;
    setBusy(true);
    setStatus("");
    try {
      let bitmap = await createImageBitmap(file, { imageOrientation: "from-image" }).catch(() => null);
      const info = await uploadFile(file);
      if (!bitmap || bitmap.width !== info.width || bitmap.height !== info.height) {
        // A format (or orientation) this browser reads differently: show the server's decoding.
        const preview = await fetch(`/api/images/${info.id}/preview`);
        if (!preview.ok) throw new Error(`cannot display the image (${preview.status})`);
        bitmap = await createImageBitmap(await preview.blob());
      }
      if (!info.cached && info.embed_ms) localStorage.setItem("samkit.embedMs", String(info.embed_ms));
      state.file = file;
      state.fileName = file.name || "image";
      state.imageId = info.id;
      state.width = info.width;
      state.height = info.height;
      state.bitmap = bitmap;
      resetCurrent();
      pruneCategories();
      state.categoriesKept = state.categories.length;
      state.objects = [];
      setupCanvases();
      renderAll();
      els.fileName.textContent = `${state.fileName} · ${info.width}×${info.height}`;
      setStatus(info.cached ? "Image ready (embedding cached). Click on an object." : `Image ready (embedding ${(info.embed_ms / 1000).toFixed(1)} s). Click on an object.`);
    } catch (error) {
      setStatus(error.message, true);
    } finally {
      hideProgress();
      setBusy(false);
    }
    if (state.imageId) document.body.dataset.imageId = state.imageId; // ready for prompts
  }

  /** The server forgot the image (evicted from its cache): upload the same file again. */
  async function reupload() {
    setStatus("The server evicted this image; uploading it again…");
    const info = await uploadFile(state.file);
    hideProgress();
    state.imageId = info.id;
    document.body.dataset.imageId = info.id;
  }

  // Off-screen layer for reading mask pixels back.
  const scratch = { read: null };

  function setupCanvases() {
    const { width, height } = state;
    scratch.read = new OffscreenCanvas(width, height).getContext("2d", { willReadFrequently: true });
    for (const c of [els.imageCanvas, els.objectsCanvas, els.maskCanvas]) {
      c.width = width;
      c.height = height;
    }
    const ctx = els.imageCanvas.getContext("2d");
    ctx.clearRect(0, 0, width, height);
    if (state.bitmap) ctx.drawImage(state.bitmap, 0, 0, width, height);
    els.dropzone.hidden = true;
    els.wrap.hidden = false;
    fitCanvas();
  }

  const fitCanvas = () => SamPage.fitCanvas(els.stage, els.wrap, state.width, state.height);
  window.addEventListener("resize", () => { fitCanvas(); drawPrompts(); });

  // ------------------------------------------------------------------ prompts -> masks
  function resetCurrent() {
    state.seq++;
    state.points = [];
    state.labels = [];
    state.box = null;
    state.candidates = [];
    state.selected = 0;
    state.history = [];
  }

  function snapshot() {
    // Undo keeps the masks as their PNG text only; bitmaps are decoded again if needed.
    const candidates = state.candidates.map((c) => ({ ...c, bitmap: null, bitmapColor: null, pending: null, mask: null }));
    return {
      points: state.points.slice(), labels: state.labels.slice(), box: state.box,
      candidates, selected: state.selected,
    };
  }

  function remember() {
    state.history.push(snapshot());
  }

  function base64Bytes(b64) {
    const text = atob(b64);
    const bytes = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
    return bytes;
  }

  /**
   * Recolour an "outlined_png" mask from the API in place: its palette is [background,
   * interior, outline]; the background stays transparent, the interior becomes the colour at
   * fillAlpha, the outline the opaque colour. Only the PLTE and tRNS chunks (and their CRCs)
   * change, so the browser decodes a ready-to-draw overlay.
   */
  function recolourOutlinedPng(bytes, [r, g, b], fillAlpha) {
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const chunkData = { PLTE: [0, 0, 0, r, g, b, r, g, b], tRNS: [0, fillAlpha, 255] };
    for (let at = 8; at + 12 <= bytes.length;) {
      const length = view.getUint32(at);
      const type = String.fromCharCode(...bytes.subarray(at + 4, at + 8));
      const data = chunkData[type];
      if (data) {
        if (length !== data.length) throw new Error(`mask PNG: unexpected ${type} chunk of ${length} bytes`);
        bytes.set(data, at + 8);
        view.setUint32(at + 8 + length, SamMasks.crc32(bytes.subarray(at + 4, at + 8 + length)));
      }
      if (type === "IDAT") break; // PLTE and tRNS come before the pixels
      at += 12 + length;
    }
    return bytes;
  }

  /** A mask from the API -> ImageBitmap of its overlay in colour number colorIndex. */
  function decodeMaskPng(b64, colorIndex) {
    const bytes = recolourOutlinedPng(base64Bytes(b64), SamMasks.color(colorIndex), MASK_ALPHA);
    return createImageBitmap(new Blob([bytes], { type: "image/png" }), { colorSpaceConversion: "none" });
  }

  /** The candidate's overlay bitmap in the current object's colour, decoding it if needed. */
  function candidateBitmap(c) {
    const colorIndex = state.nextColor;
    if (c.bitmap && c.bitmapColor === colorIndex) return Promise.resolve(c.bitmap);
    if (!c.pending || c.pendingColor !== colorIndex) {
      c.pendingColor = colorIndex;
      c.pending = decodeMaskPng(c.b64, colorIndex).then((b) => {
        if (c.pendingColor === colorIndex) {
          c.bitmap = b;
          c.bitmapColor = colorIndex;
        }
        return b;
      });
    }
    return c.pending;
  }

  /** Row-major Uint8Array mask of a decoded candidate (read back once, then kept). */
  function candidateMask(c) {
    if (!c.mask) {
      const ctx = scratch.read;
      ctx.clearRect(0, 0, state.width, state.height);
      ctx.drawImage(c.bitmap, 0, 0);
      const rgba = ctx.getImageData(0, 0, state.width, state.height).data;
      const mask = new Uint8Array(state.width * state.height);
      for (let i = 0, j = 3; i < mask.length; i++, j += 4) mask[i] = rgba[j] > 0 ? 1 : 0; // fill and outline are both > 0
      c.mask = mask;
    }
    return c.mask;
  }

  async function predict() {
    const seq = ++state.seq;
    if (!state.points.length && !state.box) {
      state.candidates = [];
      renderCurrent();
      return;
    }
    const body = { points: state.points, labels: state.labels, box: state.box, multimask: true, format: "outlined_png" };
    if (state.modelFamily === "hq_sam" && els.hqTokenOnly.checked) body.hq_token_only = true;
    const previous = state.candidates[state.selected];
    if (els.refine.checked && previous) body.mask_input_id = previous.logitsId;
    const started = performance.now();
    let data;
    try {
      try {
        data = await apiJson("POST", `/api/images/${state.imageId}/predict`, body);
      } catch (error) {
        if (error.status !== 404) throw error;
        if (body.mask_input_id && !/image id/.test(error.message)) {
          delete body.mask_input_id; // the logits handle expired: predict from the prompts alone
        } else {
          await reupload();
        }
        data = await apiJson("POST", `/api/images/${state.imageId}/predict`, body);
      }
      if (seq !== state.seq) return; // a newer click superseded this one
      const answered = performance.now();
      const candidates = data.masks.map((b64, i) => ({
        b64, bitmap: null, bitmapColor: null, pending: null, mask: null,
        score: data.scores[i], area: data.areas[i], logitsId: data.logits_ids[i],
      }));
      const best = argmax(data.scores);
      await candidateBitmap(candidates[best]); // only the mask shown is on the critical path
      if (seq !== state.seq) return;
      const decoded = performance.now();
      state.candidates = candidates;
      state.selected = best;
      renderCurrent();
      const drawnAt = performance.now();
      // The round trip ends when the browser has produced the frame that shows the mask (canvas
      // drawing is recorded and rasterised with the frame), not when the drawing calls return.
      await afterNextFrame();
      const shownAt = performance.now();
      candidates.forEach((c) => candidateBitmap(c)); // the others decode in the background
      const ms = shownAt - started;
      debug.lastRoundTripMs = ms;
      debug.roundTrips.push(ms);
      debug.phases.push([answered - started, decoded - answered, drawnAt - decoded, shownAt - drawnAt]);
      debug.predictsDrawn++;
      document.body.dataset.predictsDrawn = String(debug.predictsDrawn);
      setStatus(`mask in ${ms.toFixed(0)} ms · ${state.points.length} point(s)${state.box ? " + box" : ""}`);
    } catch (error) {
      if (seq === state.seq) setStatus(error.message, true);
    }
  }

  /** Resolves once the browser has rendered the next frame (its main-thread paint and commit). */
  function afterNextFrame() {
    return new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 0)));
  }

  function argmax(values) {
    let best = 0;
    for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
    return best;
  }

  const imagePoint = (event) => SamPage.imagePoint(els.promptLayer, event, state.width, state.height);

  let press = null; // {start: [x, y], clientX, clientY, button, shift, dragging, current}
  els.promptLayer.addEventListener("contextmenu", (e) => e.preventDefault());
  els.promptLayer.addEventListener("pointerdown", (e) => {
    if (!state.imageId || state.busy || (e.button !== 0 && e.button !== 2)) return;
    e.preventDefault();
    els.promptLayer.focus();
    els.promptLayer.setPointerCapture(e.pointerId);
    press = { start: imagePoint(e), clientX: e.clientX, clientY: e.clientY, button: e.button, shift: e.shiftKey, dragging: false };
  });
  els.promptLayer.addEventListener("pointermove", (e) => {
    if (!press) return;
    if (!press.dragging && press.button === 0 && Math.hypot(e.clientX - press.clientX, e.clientY - press.clientY) > DRAG_THRESHOLD_PX) {
      press.dragging = true;
    }
    if (press.dragging) {
      press.current = imagePoint(e);
      drawPrompts(boxFrom(press.start, press.current));
    }
  });
  els.promptLayer.addEventListener("pointerup", (e) => {
    if (!press) return;
    const p = press;
    press = null;
    if (p.dragging) {
      const box = boxFrom(p.start, imagePoint(e));
      if (box[2] - box[0] < 1 || box[3] - box[1] < 1) { drawPrompts(); return; }
      remember();
      state.box = box;
    } else {
      remember();
      state.points.push(p.start.map((v) => Math.round(v * 10) / 10));
      state.labels.push(p.button === 2 || p.shift ? 0 : 1);
    }
    drawPrompts();
    predict();
  });
  els.promptLayer.addEventListener("pointercancel", () => { press = null; drawPrompts(); });

  function boxFrom(a, b) {
    return [Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.max(a[0], b[0]), Math.max(a[1], b[1])].map((v) => Math.round(v * 10) / 10);
  }

  // ------------------------------------------------------------------ actions
  function undo() {
    if (state.busy) return;
    const entry = state.history.pop();
    if (entry) {
      state.seq++; // drop any prediction still in flight
      Object.assign(state, entry);
      renderCurrent();
      return;
    }
    if (state.objects.length) {
      const group = state.objects[state.objects.length - 1].group;
      state.objects = state.objects.filter((o) => o.group !== group);
      renderObjects();
    }
  }

  function clearCurrent() {
    resetCurrent();
    renderCurrent();
  }

  function accept() {
    const chosen = state.candidates[state.selected];
    if (!chosen || !chosen.bitmap) return;
    const mask = candidateMask(chosen);
    const { area, bbox } = SamMasks.stats(mask, state.width, state.height);
    if (area === 0) { setStatus("the selected mask is empty", true); return; }
    const category = currentCategory();
    rememberCategory(category);
    state.objects.push({
      id: state.nextObjectId++, group: state.nextGroup++, color: SamMasks.color(state.nextColor++),
      mask, area, bbox, score: chosen.score,
      points: state.points.slice(), labels: state.labels.slice(), box: state.box, source: "click", category,
    });
    resetCurrent();
    renderAll();
    setStatus(`object ${state.objects.length} accepted as “${category}”`);
  }

  function select(i) {
    if (i < state.candidates.length) {
      state.selected = i;
      renderCurrent();
    }
  }

  async function segmentEverything() {
    if (!state.imageId || state.busy) return;
    setBusy(true);
    showProgress("Segmenting everything…", Number(localStorage.getItem("samkit.everythingMs")) || 0);
    try {
      const body = { points_per_side: Number(els.pointsPerSide.value) };
      let data;
      try {
        data = await apiJson("POST", `/api/images/${state.imageId}/everything`, body);
      } catch (error) {
        if (error.status !== 404) throw error;
        await reupload();
        data = await apiJson("POST", `/api/images/${state.imageId}/everything`, body);
      }
      const group = state.nextGroup++;
      const category = currentCategory();
      if (data.masks.length) rememberCategory(category);
      for (const record of data.masks) {
        const mask = SamMasks.rleDecode(record.segmentation);
        const { area, bbox } = SamMasks.stats(mask, state.width, state.height);
        if (!area) continue;
        state.objects.push({
          id: state.nextObjectId++, group, color: SamMasks.color(state.nextColor++), mask, area, bbox,
          score: record.predicted_iou, points: record.point_coords, labels: record.point_coords.map(() => 1),
          box: null, source: "everything", category,
        });
      }
      renderObjects();
      setStatus(`segment everything: ${data.masks.length} mask${data.masks.length === 1 ? "" : "s"}`);
    } catch (error) {
      setStatus(error.message, true);
    } finally {
      hideProgress();
      setBusy(false);
    }
  }

  function setBusy(busy) {
    state.busy = busy;
    document.body.dataset.busy = busy ? "1" : "0";
    renderButtons();
  }

  // ------------------------------------------------------------------ export
  function stem() {
    return (state.fileName || "image").replace(/\.[^.]+$/, "") || "image";
  }

  function download(blob, name) {
    const url = URL.createObjectURL(blob);
    const a = document.createElement("a");
    a.href = url;
    a.download = name;
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  /**
   * The objects as a data set, written by the server with samkit's annotation writers:
   * "coco" (COCO JSON) or "yolo" (zip of classes.txt and the image's label file). The masks
   * go as COCO RLE in a multipart part (they can be larger than a JSON request may be).
   */
  async function exportDataset(format) {
    if (!state.objects.length) return;
    const used = new Set(state.objects.map((o) => o.category));
    for (const name of used) rememberCategory(name);
    const request = {
      file_name: state.fileName || "image.png",
      width: state.width,
      height: state.height,
      categories: state.categories.slice(),
      objects: state.objects.map((o) => ({
        segmentation: SamMasks.rleEncode(o.mask, state.width, state.height),
        category: o.category,
        score: Number.isFinite(o.score) ? o.score : null,
        point_coords: (o.points || []).slice(0, 256),
        point_labels: (o.labels || []).slice(0, 256),
        box: o.box,
      })),
    };
    const form = new FormData();
    form.append("annotations", new Blob([JSON.stringify(request)], { type: "application/json" }), "annotations.json");
    setStatus(`exporting ${format === "coco" ? "COCO" : "YOLO-seg"}…`);
    const response = await fetch(`/api/export/${format}`, { method: "POST", body: form });
    if (!response.ok) {
      let message = `export failed (${response.status})`;
      try { message = (await response.json()).error || message; } catch (_) { /* not JSON */ }
      throw new Error(message);
    }
    download(await response.blob(), `${stem()}_${format === "coco" ? "coco.json" : "yolo.zip"}`);
    setStatus(`exported ${state.objects.length} object(s) in ${used.size} categor${used.size === 1 ? "y" : "ies"}`);
  }

  async function exportPngs() {
    if (!state.objects.length) return;
    const files = [];
    for (let i = 0; i < state.objects.length; i++) {
      const png = await SamMasks.maskToPng(state.objects[i].mask, state.width, state.height);
      files.push({ name: `${stem()}_mask_${String(i + 1).padStart(3, "0")}.png`, data: new Uint8Array(await png.arrayBuffer()) });
    }
    download(SamMasks.makeZip(files), `${stem()}_masks.zip`);
  }

  // ------------------------------------------------------------------ drawing
  const paintMask = SamMasks.paintMask;

  function renderCurrentMask() {
    const { width, height } = state;
    if (!width) return;
    const ctx = els.maskCanvas.getContext("2d");
    const chosen = state.candidates[state.selected];
    debug.shownIndex = -1;
    if (chosen && !(chosen.bitmap && chosen.bitmapColor === state.nextColor)) {
      // Not decoded (in this colour) yet, e.g. a candidate picked right after the answer: draw when it is.
      candidateBitmap(chosen).then(() => { if (state.candidates[state.selected] === chosen) renderCurrentMask(); });
      return;
    }
    if (!chosen) {
      ctx.clearRect(0, 0, width, height);
      return;
    }
    // The bitmap is the finished overlay (fill and outline in colour): one operation replaces the canvas.
    ctx.globalCompositeOperation = "copy";
    ctx.drawImage(chosen.bitmap, 0, 0);
    ctx.globalCompositeOperation = "source-over";
    debug.shownIndex = state.selected;
  }

  function renderObjects() {
    const { width, height } = state;
    if (width) {
      const ctx = els.objectsCanvas.getContext("2d");
      const image = ctx.createImageData(width, height);
      const pixels = new Uint32Array(image.data.buffer);
      for (const o of state.objects) paintMask(pixels, o.mask, width, height, o.color, OBJECT_ALPHA, o.bbox);
      ctx.putImageData(image, 0, 0);
    }
    els.objectCount.textContent = String(state.objects.length);
    pruneCategories(); // after an undo, a removal, ...
    els.objects.replaceChildren(...state.objects.map((o, i) => {
      const li = document.createElement("li");
      const sw = document.createElement("span");
      sw.className = "swatch";
      sw.style.background = `rgb(${o.color.join(",")})`;
      const label = document.createElement("span");
      label.className = "label";
      label.textContent = `#${i + 1} · ${o.area.toLocaleString()} px · ${o.score.toFixed(3)}${o.source === "everything" ? " · auto" : ""}`;
      const category = document.createElement("input");
      category.className = "category";
      category.value = o.category;
      category.maxLength = 200;
      category.spellcheck = false;
      category.autocomplete = "off";
      category.setAttribute("list", "category-names");
      category.setAttribute("aria-label", `category of object ${i + 1}`);
      category.addEventListener("change", () => {
        const name = categoryName(category.value);
        if (!name) { category.value = o.category; return; }
        o.category = name;
        category.value = name;
        rememberCategory(name);
        pruneCategories();
      });
      category.addEventListener("keydown", (e) => { if (e.key === "Enter") category.blur(); });
      const remove = document.createElement("button");
      remove.type = "button";
      remove.title = "remove";
      remove.textContent = "×";
      remove.addEventListener("click", () => {
        state.objects = state.objects.filter((x) => x !== o);
        renderObjects();
      });
      li.append(sw, label, category, remove);
      return li;
    }));
    renderButtons();
  }

  const promptShapes = []; // the .mark elements after the anchor in #canvas-wrap, in drawing order

  /**
   * Points and boxes as positioned elements over the canvases (style.css draws them). Elements
   * that did not change are kept as they are, so adding a point repaints only that point.
   */
  function drawPrompts(previewBox) {
    const { width, height } = state;
    if (!width) return;
    const percent = (value, size) => `${((100 * value) / size).toFixed(4)}%`;
    const wanted = []; // [class, {left, top, width, height}]
    for (const box of [state.box, previewBox]) {
      if (!box) continue;
      wanted.push([box === previewBox ? "mark box preview" : "mark box", {
        left: percent(box[0], width), top: percent(box[1], height),
        width: percent(box[2] - box[0], width), height: percent(box[3] - box[1], height),
      }]);
    }
    state.points.forEach(([x, y], i) => {
      wanted.push([`mark point ${state.labels[i] ? "positive" : "negative"}`, {
        left: percent(x, width), top: percent(y, height), width: "", height: "",
      }]);
    });
    const shapes = promptShapes;
    while (shapes.length > wanted.length) shapes.pop().remove();
    wanted.forEach(([className, style], i) => {
      if (!shapes[i]) shapes.push(els.wrap.appendChild(document.createElement("div")));
      const shape = shapes[i];
      if (shape.className !== className) shape.className = className;
      for (const [name, value] of Object.entries(style)) if (shape.style[name] !== value) shape.style[name] = value;
    });
  }

  function renderCandidates() {
    if (!state.candidates.length) {
      const p = document.createElement("div");
      p.className = "empty";
      p.textContent = state.imageId ? "Click on the image to segment an object." : "Open an image to start.";
      els.candidates.replaceChildren(p);
      return;
    }
    els.candidates.replaceChildren(...state.candidates.map((c, i) => {
      const b = document.createElement("button");
      b.type = "button";
      b.className = i === state.selected ? "selected" : "";
      b.dataset.index = String(i);
      b.innerHTML = `<span class="key">mask ${i + 1}</span><span class="score">${c.score.toFixed(3)}</span><span class="area">${c.area.toLocaleString()} px</span>`;
      b.addEventListener("click", () => select(i));
      return b;
    }));
  }

  function renderButtons() {
    const hasImage = Boolean(state.imageId);
    els.acceptBtn.disabled = !state.candidates.length || state.busy;
    els.undoBtn.disabled = !(state.history.length || state.objects.length) || state.busy;
    els.clearBtn.disabled = !(state.points.length || state.box) || state.busy;
    els.everythingBtn.disabled = !hasImage || state.busy;
    els.removeAllBtn.disabled = !state.objects.length || state.busy;
    els.exportPngBtn.disabled = !state.objects.length;
    els.exportCocoBtn.disabled = !state.objects.length;
    els.exportYoloBtn.disabled = !state.objects.length;
    els.openBtn.disabled = state.busy;
    els.swatch.style.background = `rgb(${SamMasks.color(state.nextColor).join(",")})`;
  }

  function renderCurrent() {
    renderCurrentMask();
    drawPrompts();
    renderCandidates();
    renderButtons();
  }

  function renderAll() {
    renderObjects();
    renderCurrent();
  }

  // ------------------------------------------------------------------ wiring
  els.openBtn.addEventListener("click", () => els.fileInput.click());
  els.fileInput.addEventListener("change", () => {
    const file = els.fileInput.files[0];
    els.fileInput.value = "";
    openFile(file);
  });
  els.acceptBtn.addEventListener("click", accept);
  els.undoBtn.addEventListener("click", undo);
  els.clearBtn.addEventListener("click", clearCurrent);
  els.everythingBtn.addEventListener("click", segmentEverything);
  els.removeAllBtn.addEventListener("click", () => { state.objects = []; renderObjects(); });
  els.exportCocoBtn.addEventListener("click", () => exportDataset("coco").catch((e) => setStatus(e.message, true)));
  els.exportYoloBtn.addEventListener("click", () => exportDataset("yolo").catch((e) => setStatus(e.message, true)));
  els.category.addEventListener("keydown", (e) => {
    if (e.key === "Enter") { e.preventDefault(); accept(); }
  });
  els.category.addEventListener("change", () => { els.category.value = currentCategory(); });
  els.hqTokenOnly.addEventListener("change", () => { if (state.points.length || state.box) predict(); });
  els.exportPngBtn.addEventListener("click", () => exportPngs().catch((e) => setStatus(e.message, true)));

  // A file dropped anywhere on the page opens it (and never navigates away from the page).
  for (const type of ["dragenter", "dragover"]) {
    document.addEventListener(type, (e) => { e.preventDefault(); els.stage.classList.add("dragover"); });
  }
  document.addEventListener("dragleave", (e) => { if (!e.relatedTarget) els.stage.classList.remove("dragover"); });
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    els.stage.classList.remove("dragover");
    if (!state.busy && e.dataTransfer && e.dataTransfer.files.length) openFile(e.dataTransfer.files[0]);
  });

  document.addEventListener("keydown", (e) => {
    const tag = (e.target && e.target.tagName) || "";
    if (tag === "INPUT" || tag === "SELECT" || tag === "TEXTAREA") return;
    if (e.key === "Enter") { e.preventDefault(); accept(); }
    else if (e.key === "Backspace" || ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === "z")) { e.preventDefault(); undo(); }
    else if (e.key === "Escape") { clearCurrent(); }
    else if (["1", "2", "3"].includes(e.key) && !e.ctrlKey && !e.metaKey && !e.altKey) { select(Number(e.key) - 1); }
  });

  apiJson("GET", "/api/health")
    .then((h) => {
      els.modelInfo.textContent = `${h.model} · ${h.dtype} · ${h.device}`;
      state.modelFamily = h.model_family || "sam";
      els.hqRow.hidden = state.modelFamily !== "hq_sam";
      document.body.dataset.modelFamily = state.modelFamily;
    })
    .catch(() => setStatus("the server is unreachable", true));
  renderCategoryNames();
  renderAll();
})();
