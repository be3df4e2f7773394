// Mask helpers for the samkit pages: COCO RLE, 1-bit PNG, ZIP, colours, drawing.
// A mask is a Uint8Array of H*W bytes in row-major order (1 = object).
"use strict";

const SamMasks = (() => {
  // ------------------------------------------------------------------ RLE (COCO)
  /** Row-major mask -> COCO counts (column-major runs, starting with background). */
  function rleCounts(mask, width, height) {
    const counts = [];
    let current = 0;
    let run = 0;
    for (let x = 0; x < width; x++) {
      for (let i = x; i < width * height; i += width) {
        const v = mask[i] ? 1 : 0;
        if (v !== current) {
          counts.push(run);
          run = 0;
          current = v;
        }
        run++;
      }
    }
    counts.push(run);
    return counts;
  }

  /** COCO compressed counts string (pycocotools rleToString). */
  function countsToString(counts) {
    let out = "";
    for (let i = 0; i < counts.length; i++) {
      let x = counts[i];
      if (i > 2) x -= counts[i - 2];
      let more = true;
      while (more) {
        let c = ((x % 32) + 32) % 32; // x & 0x1f, valid for negative x too
        x = Math.floor(x / 32); // arithmetic shift by 5
        more = c & 0x10 ? x !== -1 : x !== 0;
        if (more) c |= 0x20;
        out += String.fromCharCode(c + 48);
      }
    }
    return out;
  }

  /** Inverse of countsToString. */
  function stringToCounts(text) {
    const counts = [];
    let p = 0;
    while (p < text.length) {
      let x = 0;
      let k = 0;
      let more = true;
      while (more) {
        const c = text.charCodeAt(p) - 48;
        x += (c & 0x1f) * 2 ** (5 * k);
        more = (c & 0x20) !== 0;
        p++;
        k++;
        if (!more && c & 0x10) x -= 2 ** (5 * k); // sign extension
      }
      if (counts.length > 2) x += counts[counts.length - 2];
      counts.push(x);
    }
    return counts;
  }

  /** {size: [h, w], counts: string | number[]} -> row-major mask. */
  function rleDecode(rle) {
    const [height, width] = rle.size;
    const counts = typeof rle.counts === "string" ? stringToCounts(rle.counts) : rle.counts;
    const mask = new Uint8Array(width * height);
    let pos = 0;
    for (let r = 0; r < counts.length; r++) {
      const n = counts[r];
      if (r % 2 === 1) {
        let col = Math.floor(pos / height);
        let row = pos - col * height;
        for (let k = 0; k < n; k++) {
          mask[row * width + col] = 1;
          if (++row === height) { row = 0; col++; }
        }
      }
      pos += n;
    }
    return mask;
  }

  function rleEncode(mask, width, height) {
    return { size: [height, width], counts: countsToString(rleCounts(mask, width, height)) };
  }

  /** Area and COCO bbox [x, y, w, h] (pycocotools toBbox convention: w = xmax - xmin + 1). */
  function stats(mask, width, height) {
    let area = 0, x0 = width, y0 = height, x1 = -1, y1 = -1;
    for (let y = 0, i = 0; y < height; y++) {
      for (let x = 0; x < width; x++, i++) {
        if (mask[i]) {
          area++;
          if (x < x0) x0 = x;
          if (x > x1) x1 = x;
          if (y < y0) y0 = y;
          y1 = y;
        }
      }
    }
    if (area === 0) return { area: 0, bbox: [0, 0, 0, 0] };
    return { area, bbox: [x0, y0, x1 - x0 + 1, y1 - y0 + 1] };
  }

  // ------------------------------------------------------------------ CRC32, PNG, ZIP
  const CRC_TABLE = (() => {
    const table = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      table[n] = c >>> 0;
    }
    return table;
  })();

  function crc32(bytes, crc = 0) {
    let c = ~crc >>> 0;
    for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
    return ~c >>> 0;
  }

  async function zlibDeflate(bytes) {
    const stream = new Blob([bytes]).stream().pipeThrough(new CompressionStream("deflate"));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  }

  function u32be(value) {
    return new Uint8Array([(value >>> 24) & 255, (value >>> 16) & 255, (value >>> 8) & 255, value & 255]);
  }

  function pngChunk(type, data) {
    const typed = new Uint8Array(4 + data.length);
    for (let i = 0; i < 4; i++) typed[i] = type.charCodeAt(i);
    typed.set(data, 4);
    return [u32be(data.length), typed, u32be(crc32(typed))];
  }

  /** Row-major mask -> 1-bit greyscale PNG (black background, white object) as a Blob. */
  async function maskToPng(mask, width, height) {
    const rowBytes = Math.ceil(width / 8);
    const raw = new Uint8Array(height * (rowBytes + 1)); // each row: filter byte 0 + packed bits
    for (let y = 0; y < height; y++) {
      const o = y * (rowBytes + 1) + 1;
      const m = y * width;
      for (let x = 0; x < width; x++) if (mask[m + x]) raw[o + (x >> 3)] |= 0x80 >> (x & 7);
    }
    const ihdr = new Uint8Array(13);
    ihdr.set(u32be(width), 0);
    ihdr.set(u32be(height), 4);
    ihdr[8] = 1; // bit depth
    ihdr[9] = 0; // greyscale
    const parts = [
      new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10]),
      ...pngChunk("IHDR", ihdr),
      ...pngChunk("IDAT", await zlibDeflate(raw)),
      ...pngChunk("IEND", new Uint8Array(0)),
    ];
    return new Blob(parts, { type: "image/png" });
  }

  /** [{name, data: Uint8Array}] -> ZIP (stored, no compression: PNGs are compressed already). */
  function makeZip(files) {
    const enc = new TextEncoder();
    const parts = [];
    const central = [];
    let offset = 0;
    const now = new Date();
    const dosTime = (now.getHours() << 11) | (now.getMinutes() << 5) | (now.getSeconds() >> 1);
    const dosDate = ((now.getFullYear() - 1980) << 9) | ((now.getMonth() + 1) << 5) | now.getDate();
    for (const file of files) {
      const name = enc.encode(file.name);
      const crc = crc32(file.data);
      const local = new DataView(new ArrayBuffer(30));
      local.setUint32(0, 0x04034b50, true);
      local.setUint16(4, 20, true);
      local.setUint16(6, 0x0800, true); // UTF-8 names
      local.setUint16(8, 0, true); // stored
      local.setUint16(10, dosTime, true);
      local.setUint16(12, dosDate, true);
      local.setUint32(14, crc, true);
      local.setUint32(18, file.data.length, true);
      local.setUint32(22, file.data.length, true);
      local.setUint16(26, name.length, true);
      local.setUint16(28, 0, true);
      parts.push(new Uint8Array(local.buffer), name, file.data);
      const entry = new DataView(new ArrayBuffer(46));
      entry.setUint32(0, 0x02014b50, true);
      entry.setUint16(4, 20, true);
      entry.setUint16(6, 20, true);
      entry.setUint16(8, 0x0800, true);
      entry.setUint16(10, 0, true);
      entry.setUint16(12, dosTime, true);
      entry.setUint16(14, dosDate, true);
      entry.setUint32(16, crc, true);
      entry.setUint32(20, file.data.length, true);
      entry.setUint32(24, file.data.length, true);
      entry.setUint16(28, name.length, true);
      entry.setUint32(42, offset, true);
      central.push(new Uint8Array(entry.buffer), name);
      offset += 30 + name.length + file.data.length;
    }
    const centralSize = central.reduce((n, p) => n + p.length, 0);
    const end = new DataView(new ArrayBuffer(22));
    end.setUint32(0, 0x06054b50, true);
    end.setUint16(8, files.length, true);
    end.setUint16(10, files.length, true);
    end.setUint32(12, centralSize, true);
    end.setUint32(16, offset, true);
    return new Blob([...parts, ...central, new Uint8Array(end.buffer)], { type: "application/zip" });
  }

  // ------------------------------------------------------------------ colours
  /** Distinct colour number i: golden-ratio hue steps, [r, g, b] 0..255. */
  function color(i) {
    const h = (0.08 + i * 0.618033988749895) % 1;
    const s = 0.7, v = 0.97;
    const k = (n) => (n + h * 6) % 6;
    const f = (n) => v - v * s * Math.max(0, Math.min(k(n), 4 - k(n), 1));
    return [Math.round(f(5) * 255), Math.round(f(3) * 255), Math.round(f(1) * 255)];
  }

  // ------------------------------------------------------------------ drawing
  function rgbaWord([r, g, b], a) {
    return ((a << 24) | (b << 16) | (g << 8) | r) >>> 0; // little-endian RGBA in a Uint32
  }

  /** Fill a mask (optionally only inside bbox [x, y, w, h]) into a Uint32 RGBA view, with an opaque outline. */
  function paintMask(pixels, mask, width, height, color, alpha, bbox) {
    const [bx, by, bw, bh] = bbox || [0, 0, width, height];
    const fill = rgbaWord(color, alpha);
    const edge = rgbaWord(color, 255);
    for (let y = by; y < by + bh; y++) {
      for (let x = bx, i = y * width + bx; x < bx + bw; x++, i++) {
        if (!mask[i]) continue;
        const border = x === 0 || x === width - 1 || y === 0 || y === height - 1 ||
          !mask[i - 1] || !mask[i + 1] || !mask[i - width] || !mask[i + width];
        pixels[i] = border ? edge : fill;
      }
    }
  }

  return { rleCounts, countsToString, stringToCounts, rleDecode, rleEncode, stats, crc32, maskToPng, makeZip, color, rgbaWord, paintMask };
})();
