// samkit video page: open a video -> prompt objects on any frame -> track -> scrub -> correct -> export.
// Plain JS, no build step; the API is /api/videos (see samkit/server/video_routes.py).
// Masks are Uint8Array(H*W), row-major, 1 = object (SamMasks from masks.js decodes the RLEs).
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const els = {
    openBtn: $("open-video-btn"), input: $("video-input"), fileName: $("file-name"), status: $("status"),
    modelInfo: $("model-info"), stage: $("stage"), dropzone: $("dropzone"), videoOff: $("video-off"),
    wrap: $("canvas-wrap"), frameCanvas: $("frame-canvas"), masksCanvas: $("masks-canvas"),
    promptLayer: $("prompt-layer"), progress: $("progress"), progressLabel: $("progress-label"),
    progressFill: $("progress-fill"), progressTime: $("progress-time"), timeline: $("timeline"),
    slider: $("frame-slider"), prevBtn: $("prev-frame-btn"), nextBtn: $("next-frame-btn"),
    frameLabel: $("frame-label"), strip: $("track-strip"), objects: $("video-objects"),
    newObjectBtn: $("new-object-btn"), resetBtn: $("reset-btn"), trackBtn: $("track-btn"), stopBtn: $("stop-btn"),
    trackFill: $("track-fill"), trackStatus: $("track-status"), exportJsonBtn: $("export-json-btn"),
    exportZipBtn: $("export-zip-btn"),
  };

  const DRAG_THRESHOLD_PX = 5;
  const CURRENT_ALPHA = 140;
  const OTHER_ALPHA = 95;
  const POLL_MS = 250;
  const FRAME_CACHE = 48; // decoded frame bitmaps kept for scrubbing

  const state = {
    video: null, // {id, frames, width, height, fps, file_name}
    width: 0, height: 0,
    frame: 0,
    objects: [], // [{id, color}] in the order added
    current: null, // the object prompts go to
    nextObjectId: 1,
    prompts: new Map(), // "frame:object" -> {points: [[x, y]], labels: [], box}
    masks: new Map(), // frame -> Map(object id -> Uint8Array) (what the server holds for that frame)
    tracked: new Set(), // frames with masks from a propagation
    trackedObjects: new Set(), // objects some propagation has carried
    dirtyFrames: new Set(), // frames prompted since the last propagation
    tracking: false,
    busy: false,
    videoOff: false, // the server has no video model (health says why)
    seq: 0,
  };
  // Figures the browser tests read.
  const debug = { state, masksDrawn: 0, drawnFrame: -1, promptsAnswered: 0, tracksFinished: 0 };
  window.samkitVideo = debug;

  // ------------------------------------------------------------------ status, progress
  function setStatus(text, isError = false) {
    els.status.textContent = text;
    els.status.classList.toggle("error", isError);
  }
  function showProgress(label, fraction) {
    els.progress.hidden = false;
    els.progressLabel.textContent = label;
    els.progressFill.style.width = `${(100 * (fraction || 0)).toFixed(1)}%`;
  }
  function hideProgress() { els.progress.hidden = true; }

  // ------------------------------------------------------------------ API
  const api = SamPage.apiJson;
  const videoUrl = (path = "") => `/api/videos/${state.video.id}${path}`;

  function uploadVideo(file) {
    showProgress("Uploading…", 0);
    return SamPage.upload("/api/videos", file, "video", {
      onProgress: (fraction, percent) => showProgress(`Uploading… ${percent}%`, fraction),
      onSent: () => showProgress("Decoding the video, encoding frame 0…", 1),
    });
  }

  // ------------------------------------------------------------------ opening a video
  async function openVideo(file) {
    if (!file || state.busy || state.tracking) return;
    state.busy = true;
    renderButtons();
    setStatus("");
    debug.drawnFrame = -1;
    try {
      const info = await uploadVideo(file);
      if (state.video) api("DELETE", videoUrl()).catch(() => {}); // free the previous one on the server
      state.video = info;
      state.width = info.width;
      state.height = info.height;
      clearObjects();
      frames.clear();
      els.fileName.textContent = info.file_name;
      els.slider.max = String(info.frames - 1);
      setupCanvases();
      document.body.dataset.videoId = info.id;
      await showFrame(0);
      setStatus(`${info.frames} frames, ${info.width}×${info.height}${info.fps ? `, ${info.fps.toFixed(2)} fps` : ""}`);
    } catch (e) {
      setStatus(e.message, true);
    } finally {
      hideProgress();
      state.busy = false;
      renderAll();
    }
  }

  function setupCanvases() {
    for (const c of [els.frameCanvas, els.masksCanvas]) {
      c.width = state.width;
      c.height = state.height;
    }
    els.dropzone.hidden = true;
    els.wrap.hidden = false;
    els.timeline.hidden = false;
    fitCanvas();
  }

  const fitCanvas = () => SamPage.fitCanvas(els.stage, els.wrap, state.width, state.height);
  window.addEventListener("resize", () => { fitCanvas(); drawPrompts(); });

  // ------------------------------------------------------------------ frames and masks
  const frames = new Map(); // frame -> Promise<ImageBitmap>, most recent last

  function frameBitmap(f) {
    let held = frames.get(f);
    if (held) {
      frames.delete(f);
    } else {
      held = fetch(videoUrl(`/frames/${f}`)).then((r) => {
        if (!r.ok) throw new Error(`frame ${f}: ${r.status}`);
        return r.blob();
      }).then((blob) => createImageBitmap(blob));
      held.catch(() => frames.delete(f));
    }
    frames.set(f, held);
    while (frames.size > FRAME_CACHE) frames.delete(frames.keys().next().value);
    return held;
  }

  async function fetchMasks(f) {
    const data = await api("GET", videoUrl(`/masks/${f}?format=rle`));
    const held = new Map();
    for (const o of data.objects) held.set(o.object_id, SamMasks.rleDecode(o.mask));
    state.masks.set(f, held);
    return held;
  }

  /** Show frame f: its picture, every object's mask there, the current object's prompts. */
  async function showFrame(f, { refetchMasks = false } = {}) {
    if (!state.video) return;
    f = Math.max(0, Math.min(state.video.frames - 1, f));
    const seq = ++state.seq;
    state.frame = f;
    els.slider.value = String(f);
    els.frameLabel.textContent = `frame ${f} / ${state.video.frames - 1}`;
    drawPrompts();
    try {
      const [bitmap] = await Promise.all([
        frameBitmap(f),
        refetchMasks || !state.masks.has(f) ? fetchMasks(f) : null,
      ]);
      if (seq !== state.seq) return; // a newer frame was asked for meanwhile
      els.frameCanvas.getContext("2d").drawImage(bitmap, 0, 0, state.width, state.height);
      drawMasks();
      debug.masksDrawn++;
      debug.drawnFrame = f; // the picture and the masks of frame f are on the canvases
    } catch (e) {
      if (seq === state.seq) setStatus(e.message, true);
    }
  }

  /** Every object's mask on the shown frame, the current one more opaque; outlines opaque. */
  function drawMasks() {
    const { width, height } = state;
    const ctx = els.masksCanvas.getContext("2d");
    const image = ctx.createImageData(width, height);
    const pixels = new Uint32Array(image.data.buffer);
    const held = state.masks.get(state.frame) || new Map();
    const order = state.objects.filter((o) => o.id !== state.current).concat(state.objects.filter((o) => o.id === state.current));
    for (const obj of order) {
      const mask = held.get(obj.id);
      if (!mask) continue;
      SamMasks.paintMask(pixels, mask, width, height, obj.color, obj.id === state.current ? CURRENT_ALPHA : OTHER_ALPHA);
    }
    ctx.putImageData(image, 0, 0);
    renderStrip();
  }

  // ------------------------------------------------------------------ prompts
  const promptKey = (f, obj) => `${f}:${obj}`;

  function imagePoint(event) {
    return SamPage.imagePoint(els.promptLayer, event, state.width, state.height).map((v) => Math.round(v * 10) / 10);
  }

  let press = null;
  els.promptLayer.addEventListener("contextmenu", (e) => e.preventDefault());
  els.promptLayer.addEventListener("pointerdown", (e) => {
    if (!state.video || state.busy || state.tracking || (e.button !== 0 && e.button !== 2)) return;
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
    if (press.dragging) drawPrompts(boxFrom(press.start, imagePoint(e)));
  });
  els.promptLayer.addEventListener("pointerup", (e) => {
    if (!press) return;
    const p = press;
    press = null;
    const key = promptKey(state.frame, state.current);
    const prompt = state.prompts.get(key) || { points: [], labels: [], box: null };
    if (p.dragging) {
      const box = boxFrom(p.start, imagePoint(e));
      if (box[2] - box[0] < 1 || box[3] - box[1] < 1) { drawPrompts(); return; }
      prompt.box = box;
    } else {
      prompt.points.push(p.start);
      prompt.labels.push(p.button === 2 || p.shift ? 0 : 1);
    }
    state.prompts.set(key, prompt);
    drawPrompts();
    sendPrompt(state.frame, state.current, prompt);
  });
  els.promptLayer.addEventListener("pointercancel", () => { press = null; drawPrompts(); });

  function boxFrom(a, b) {
    return [Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.max(a[0], b[0]), Math.max(a[1], b[1])];
  }

  /** Every prompt of one object on one frame (they replace the earlier ones there) -> its mask. */
  async function sendPrompt(f, obj, prompt) {
    state.busy = true;
    renderButtons();
    try {
      const body = await api("POST", videoUrl("/prompts"), {
        frame: f, object_id: obj, points: prompt.points, labels: prompt.labels, box: prompt.box,
        clear_old_points: true, format: "rle",
      });
      const held = state.masks.get(f) || new Map();
      held.set(obj, SamMasks.rleDecode(body.mask));
      state.masks.set(f, held);
      state.dirtyFrames.add(f);
      setStatus(`object ${obj} on frame ${f}: ${body.area} pixels${body.object_score > 0 ? "" : " (the tracker says: not visible)"}`);
      if (state.frame === f) drawMasks();
      debug.promptsAnswered++;
    } catch (e) {
      setStatus(e.message, true);
    } finally {
      state.busy = false;
      renderAll();
    }
  }

  const promptShapes = [];
  /** The current object's points and box on the shown frame, as positioned elements. */
  function drawPrompts(previewBox) {
    if (!state.width) return;
    const { width, height } = state;
    const percent = (value, size) => `${((100 * value) / size).toFixed(4)}%`;
    const prompt = state.prompts.get(promptKey(state.frame, state.current)) || { points: [], labels: [], box: null };
    const wanted = [];
    for (const box of [prompt.box, previewBox]) {
      if (!box) continue;
      wanted.push([box === previewBox ? "mark box preview" : "mark box", {
        left: percent(box[0], width), top: percent(box[1], height),
        width: percent(box[2] - box[0], width), height: percent(box[3] - box[1], height),
      }]);
    }
    prompt.points.forEach(([x, y], i) => {
      wanted.push([`mark point ${prompt.labels[i] ? "positive" : "negative"}`, {
        left: percent(x, width), top: percent(y, height), width: "", height: "",
      }]);
    });
    while (promptShapes.length > wanted.length) promptShapes.pop().remove();
    wanted.forEach(([className, style], i) => {
      if (!promptShapes[i]) promptShapes.push(els.wrap.appendChild(document.createElement("div")));
      const shape = promptShapes[i];
      shape.className = className;
      Object.assign(shape.style, style);
    });
  }

  // ------------------------------------------------------------------ objects
  function addObject() {
    const id = state.nextObjectId++;
    state.objects.push({ id, color: SamMasks.color(id - 1) });
    state.current = id;
    renderAll();
    drawPrompts();
    if (state.video) drawMasks();
  }

  async function removeObject(id) {
    if (state.busy || state.tracking) return;
    const known = [...state.prompts.keys()].some((k) => k.endsWith(`:${id}`));
    try {
      if (known) await api("DELETE", videoUrl(`/objects/${id}`));
    } catch (e) {
      if (e.status !== 404) { setStatus(e.message, true); return; }
    }
    state.objects = state.objects.filter((o) => o.id !== id);
    for (const k of [...state.prompts.keys()]) if (k.endsWith(`:${id}`)) state.prompts.delete(k);
    for (const held of state.masks.values()) held.delete(id);
    state.trackedObjects.delete(id);
    if (!state.objects.length) addObject();
    if (state.current === id) state.current = state.objects[state.objects.length - 1].id;
    setStatus(`object ${id} removed`);
    renderAll();
    drawPrompts();
    drawMasks();
  }

  /** Forget every object, prompt, mask and tracked frame; start again with one new object. */
  function clearObjects() {
    state.objects = [];
    state.nextObjectId = 1;
    state.prompts.clear();
    state.masks.clear();
    state.tracked.clear();
    state.trackedObjects.clear();
    state.dirtyFrames.clear();
    addObject();
  }

  async function resetAll() {
    if (!state.video || state.busy || state.tracking) return;
    try {
      await api("POST", videoUrl("/reset"));
    } catch (e) { setStatus(e.message, true); return; }
    clearObjects();
    els.trackStatus.textContent = "Not tracked yet.";
    els.trackFill.style.width = "0";
    setStatus("every object and mask forgotten");
  }

  // ------------------------------------------------------------------ tracking
  /** Where and which way the next propagation goes (see the panel's hint). */
  function trackPlan() {
    const prompted = [...state.prompts.keys()].map((k) => Number(k.split(":")[0]));
    if (!prompted.length) return null;
    const dirty = [...state.dirtyFrames];
    const start = Math.min(...(dirty.length ? dirty : prompted));
    const promptedObjects = new Set([...state.prompts.keys()].map((k) => Number(k.split(":")[1])));
    const newObject = [...promptedObjects].some((o) => !state.trackedObjects.has(o));
    const untrackedBefore = [...Array(start).keys()].some((f) => !state.tracked.has(f));
    return { start_frame: start, direction: newObject || untrackedBefore || !dirty.length ? "both" : "forward" };
  }

  async function track() {
    if (!state.video || state.busy || state.tracking) return;
    const plan = trackPlan();
    if (!plan) { setStatus("click an object first", true); return; }
    try {
      const progress = await api("POST", videoUrl("/propagate"), plan);
      state.tracking = true;
      state.dirtyFrames.clear();
      for (const k of state.prompts.keys()) state.trackedObjects.add(Number(k.split(":")[1]));
      renderAll();
      showTrackProgress(progress);
      pollProgress();
    } catch (e) {
      setStatus(e.message, true);
    }
  }

  function showTrackProgress(p) {
    const fraction = p.total ? p.done / p.total : 0;
    els.trackFill.style.width = `${(100 * fraction).toFixed(1)}%`;
    const what = { running: "tracking", done: "tracked", failed: "failed", stopped: "stopped", idle: "not tracked" }[p.status];
    els.trackStatus.textContent = `${what}: ${p.done} / ${p.total} frames (${p.direction} from frame ${p.start_frame})` +
      (p.status === "done" ? ` in ${p.seconds.toFixed(1)} s` : "") + (p.error ? ` — ${p.error}` : "");
  }

  async function pollProgress() {
    let p;
    try {
      p = await api("GET", videoUrl("/progress"));
    } catch (e) {
      state.tracking = false;
      setStatus(e.message, true);
      renderAll();
      return;
    }
    const before = state.tracked.size;
    state.tracked = new Set(p.tracked_frames);
    showTrackProgress(p);
    const running = p.status === "running";
    if (!running) {
      state.tracking = false;
      state.masks.clear(); // every frame may have changed: read them again as they are shown
      debug.tracksFinished++;
      if (p.status === "failed") setStatus(`tracking failed: ${p.error}`, true);
      else setStatus(`${p.status === "done" ? "tracked" : "stopped after"} ${p.done} frames`);
      renderAll();
      await showFrame(state.frame, { refetchMasks: true });
      return;
    }
    if (state.tracked.size !== before && state.tracked.has(state.frame)) showFrame(state.frame, { refetchMasks: true });
    else renderStrip();
    setTimeout(pollProgress, POLL_MS);
  }

  // ------------------------------------------------------------------ export
  async function exportTracks(format) {
    if (!state.video) return;
    const response = await fetch(videoUrl(`/export?format=${format}`));
    if (!response.ok) {
      let message = `export failed (${response.status})`;
      try { message = (await response.json()).error || message; } catch (_) { /* not JSON */ }
      throw new Error(message);
    }
    const disposition = response.headers.get("Content-Disposition") || "";
    const name = (disposition.match(/filename="([^"]+)"/) || [])[1] || `tracks.${format}`;
    const url = URL.createObjectURL(await response.blob());
    const a = document.createElement("a");
    a.href = url;
    a.download = name;
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  // ------------------------------------------------------------------ rendering
  function renderObjects() {
    els.objects.replaceChildren(...state.objects.map((obj) => {
      const li = document.createElement("li");
      li.dataset.objectId = String(obj.id);
      li.classList.toggle("current", obj.id === state.current);
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = `rgb(${obj.color.join(",")})`;
      const label = document.createElement("span");
      label.className = "label";
      const frames = [...state.prompts.keys()].filter((k) => k.endsWith(`:${obj.id}`)).map((k) => k.split(":")[0]);
      label.textContent = `object ${obj.id}` + (frames.length ? ` · prompts on ${frames.sort((a, b) => a - b).join(", ")}` : "");
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "remove";
      remove.textContent = "×";
      remove.title = `remove object ${obj.id}`;
      remove.addEventListener("click", (e) => { e.stopPropagation(); removeObject(obj.id); });
      li.append(swatch, label, remove);
      li.addEventListener("click", () => { state.current = obj.id; renderAll(); drawPrompts(); drawMasks(); });
      return li;
    }));
  }

  function renderStrip() {
    if (!state.video) return;
    const n = state.video.frames;
    const c = els.strip;
    c.width = Math.max(n, 1);
    const ctx = c.getContext("2d");
    ctx.clearRect(0, 0, c.width, c.height);
    ctx.fillStyle = "#4f8cff";
    for (const f of state.tracked) ctx.fillRect(f, 0, 1, c.height);
    ctx.fillStyle = "#ffffff";
    for (const k of state.prompts.keys()) ctx.fillRect(Number(k.split(":")[0]), 0, 1, c.height);
  }

  function renderButtons() {
    const ready = Boolean(state.video) && !state.busy;
    els.openBtn.disabled = state.busy || state.tracking || state.videoOff;
    els.trackBtn.disabled = !ready || state.tracking || state.prompts.size === 0;
    els.stopBtn.disabled = !state.tracking;
    els.newObjectBtn.disabled = !state.video;
    els.resetBtn.disabled = !ready || state.tracking;
    els.exportJsonBtn.disabled = els.exportZipBtn.disabled = !ready || state.tracking;
    els.slider.disabled = !state.video;
  }

  function renderAll() {
    renderObjects();
    renderButtons();
    renderStrip();
  }

  // ------------------------------------------------------------------ events
  els.openBtn.addEventListener("click", () => els.input.click());
  els.input.addEventListener("change", () => {
    const file = els.input.files && els.input.files[0];
    els.input.value = "";
    openVideo(file);
  });
  els.slider.addEventListener("input", () => showFrame(Number(els.slider.value)));
  els.prevBtn.addEventListener("click", () => showFrame(state.frame - 1));
  els.nextBtn.addEventListener("click", () => showFrame(state.frame + 1));
  els.newObjectBtn.addEventListener("click", addObject);
  els.resetBtn.addEventListener("click", resetAll);
  els.trackBtn.addEventListener("click", track);
  els.stopBtn.addEventListener("click", () => api("POST", videoUrl("/propagate/stop")).catch((e) => setStatus(e.message, true)));
  els.exportJsonBtn.addEventListener("click", () => exportTracks("json").catch((e) => setStatus(e.message, true)));
  els.exportZipBtn.addEventListener("click", () => exportTracks("zip").catch((e) => setStatus(e.message, true)));

  for (const type of ["dragenter", "dragover"]) {
    document.addEventListener(type, (e) => { e.preventDefault(); els.stage.classList.add("dragover"); });
  }
  document.addEventListener("dragleave", (e) => { if (!e.relatedTarget) els.stage.classList.remove("dragover"); });
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    els.stage.classList.remove("dragover");
    if (e.dataTransfer && e.dataTransfer.files.length) openVideo(e.dataTransfer.files[0]);
  });

  document.addEventListener("keydown", (e) => {
    const tag = (e.target && e.target.tagName) || "";
    if (tag === "INPUT" && e.target.type !== "range") return;
    if (!state.video || e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.key === "ArrowLeft") { e.preventDefault(); showFrame(state.frame - 1); }
    else if (e.key === "ArrowRight") { e.preventDefault(); showFrame(state.frame + 1); }
    else if (e.key === "n" || e.key === "N") addObject();
    else if (e.key === "t" || e.key === "T") track();
  });

  api("GET", "/api/health")
    .then((h) => {
      els.modelInfo.textContent = `${h.model} · ${h.dtype} · ${h.device}`;
      document.body.dataset.video = h.video ? "on" : "off";
      if (!h.video) {
        els.videoOff.hidden = false;
        els.videoOff.textContent = `Video mode is off: ${h.video_reason}`;
        state.videoOff = true;
        renderButtons();
      }
    })
    .catch(() => setStatus("the server is unreachable", true));
  renderAll();
})();
