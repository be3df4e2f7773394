// Page helpers shared by the image page (app.js) and the video page (video.js): the JSON API,
// uploads with progress, fitting the canvases to the stage, and pointer -> image pixels.
"use strict";

const SamPage = (() => {
  /** JSON request; a non-GET always sends a JSON body (the server's guard wants the content type). */
  async function apiJson(method, url, body) {
    const init = { method, headers: {} };
    if (method !== "GET") {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body === undefined ? {} : body);
    }
    const response = await fetch(url, init);
    let data = null;
    try { data = await response.json(); } catch (_) { /* not JSON */ }
    if (!response.ok) {
      throw Object.assign(new Error((data && data.error) || `${response.status} ${response.statusText}`), { status: response.status });
    }
    return data;
  }

  /**
   * POST ``file`` as multipart part "file" with XMLHttpRequest (for upload progress).
   * onProgress(fraction, percent) while the body goes out; onSent() once it is out (the server works).
   * Resolves to the JSON answer; rejects with Error(message) carrying .status.
   */
  function upload(url, file, fallbackName, { onProgress, onSent } = {}) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      const form = new FormData();
      form.append("file", file, file.name || fallbackName);
      xhr.open("POST", url);
      xhr.responseType = "json";
      xhr.upload.onprogress = (e) => {
        if (e.lengthComputable && onProgress) onProgress(e.loaded / e.total, Math.round((100 * e.loaded) / e.total));
      };
      xhr.upload.onload = () => { if (onSent) onSent(); };
      xhr.onload = () => {
        const data = xhr.response;
        if (xhr.status >= 200 && xhr.status < 300 && data) resolve(data);
        else reject(Object.assign(new Error((data && data.error) || `upload failed (${xhr.status})`), { status: xhr.status }));
      };
      xhr.onerror = () => reject(new Error("upload failed: the server is unreachable"));
      xhr.send(form);
    });
  }

  /** Size ``wrap`` to show a width x height image as large as ``stage`` allows (12 px margins). */
  function fitCanvas(stage, wrap, width, height) {
    if (!width) return;
    const box = stage.getBoundingClientRect();
    const scale = Math.min((box.width - 24) / width, (box.height - 24) / height);
    wrap.style.width = `${Math.max(1, Math.floor(width * scale))}px`;
    wrap.style.height = `${Math.max(1, Math.floor(height * scale))}px`;
  }

  /** The image pixel [x, y] under a pointer event on ``layer`` (which shows the whole image), clamped. */
  function imagePoint(layer, event, width, height) {
    const rect = layer.getBoundingClientRect();
    const x = ((event.clientX - rect.left) / rect.width) * width;
    const y = ((event.clientY - rect.top) / rect.height) * height;
    return [Math.min(width, Math.max(0, x)), Math.min(height, Math.max(0, y))];
  }

  return { apiJson, upload, fitCanvas, imagePoint };
})();
