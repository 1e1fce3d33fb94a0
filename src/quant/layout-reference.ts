/**
 * Pure TypeScript references of the weight layouts the wasm backend rewrites quantized matrices
 * into at load (Backend.prepareWeight, src/kernels/README.md), and of the Q8_0S activation format
 * of its row-lane Q4_0 product: the layout kernels are tested byte for byte against these. (The
 * Q6_K quants are decoded here the way ggml's dequantize_row_q6_K reads them.)
 */

import { f16ToF32 } from "./fp16.js";
import { scaleQ3 } from "./kquants.js";
import { scaleMinK4 } from "./reference.js";

// ---------------------------------------------------------------------------------------------

/**
 * The x4 layout (interleaveRows4) of `rows` rows of `rowBytes` bytes in blocks of `blockBytes`:
 * block b of row j of each group of four rows goes to (4·b + j) blocks from the group's start.
 */
export function interleaveRows4Ref(
  w: Uint8Array,
  rows: number,
  rowBytes: number,
  blockBytes: number,
): Uint8Array {
  const out = new Uint8Array(w.length);
  for (let g = 0; g < rows / 4; g++) {
    for (let b = 0; b < rowBytes / blockBytes; b++) {
      for (let j = 0; j < 4; j++) {
        const src = (4 * g + j) * rowBytes + b * blockBytes;
        out.set(w.subarray(src, src + blockBytes), 4 * g * rowBytes + (4 * b + j) * blockBytes);
      }
    }
  }
  return out;
}

/**
 * The r4 layout of a row-major Q4_0 matrix (rows % 4 == 0): for each group of four rows and each
 * block, the four rows' f16 scales (8 bytes), then 16-byte vectors Q0..Q3 where byte 4r + i of Qj
 * is byte 4j + i of row r's qs.
 */
export function repackQ4_0r4Ref(w: Uint8Array, rows: number, cols: number): Uint8Array {
  const nb = cols / 32;
  const out = new Uint8Array(w.length);
  for (let g = 0; g < rows / 4; g++) {
    for (let b = 0; b < nb; b++) {
      const dst = (g * nb + b) * 72;
      for (let r = 0; r < 4; r++) {
        const src = ((4 * g + r) * nb + b) * 18;
        out[dst + 2 * r] = w[src]!;
        out[dst + 2 * r + 1] = w[src + 1]!;
        for (let j = 0; j < 4; j++) {
          for (let i = 0; i < 4; i++) out[dst + 8 + 16 * j + 4 * r + i] = w[src + 2 + 4 * j + i]!;
        }
      }
    }
  }
  return out;
}

/**
 * Q8_0 blocks (f16 d, 32 × i8) as Q8_0S blocks, the r4 Q4_0 product's activations: the same
 * quants, with d as an f32 and 8·Σq as an i32 in front (40 bytes).
 */
export function q8_0ToQ8_0S(q8: Uint8Array): Uint8Array {
  const nb = q8.length / 34;
  const out = new Uint8Array(nb * 40);
  const view = new DataView(out.buffer);
  for (let b = 0; b < nb; b++) {
    const src = q8.subarray(b * 34, (b + 1) * 34);
    const qs = new Int8Array(src.buffer, src.byteOffset + 2, 32);
    let sum = 0;
    for (const q of qs) sum += q;
    view.setFloat32(b * 40, f16ToF32(src[0]! | (src[1]! << 8)), true);
    view.setInt32(b * 40 + 4, 8 * sum, true);
    out.set(src.subarray(2), b * 40 + 8);
  }
  return out;
}

/**
 * The r4 layout of a row-major Q4_K matrix (rows % 4 == 0), 576 bytes per four rows' super-block:
 * d ×4 and dmin ×4 (f16); A, B: the low 4 bits of the 6-bit scales (scale j of row r at index
 * 4j + r) and mins (min j of row r at index 8·(j >> 1) + 2r + (j & 1)), index i < 16 in the low
 * nibble of byte i, 16 + i in its high nibble; C: their high 2 bits, byte i holding scale i,
 * scale 16 + i, min i, min 16 + i in bit pairs 0..1, 2..3, 4..5, 6..7; then 32 vectors, (chunk c,
 * word w) at 64 + 16·(8c + w), whose byte 4r + i is byte 32c + 4w + i of row r's qs.
 */
export function repackQ4_Kr4Ref(w: Uint8Array, rows: number, cols: number): Uint8Array {
  return repackK45r4Ref(w, rows, cols, false);
}

/**
 * The r4 layout of a row-major Q5_K matrix: Q4_K's 576 bytes, then 8 vectors of high bits (704
 * bytes): bit w of byte 4r + i of vector j is the fifth bit of element 32j + 4w + i of row r.
 */
export function repackQ5_Kr4Ref(w: Uint8Array, rows: number, cols: number): Uint8Array {
  return repackK45r4Ref(w, rows, cols, true);
}

function repackK45r4Ref(w: Uint8Array, rows: number, cols: number, five: boolean): Uint8Array {
  const nb = cols / 256;
  const bytes = five ? 176 : 144;
  const qs = five ? 48 : 16;
  const out = new Uint8Array(w.length);
  const put = (dst: number, at: number, pair: number, i: number, v: number) => {
    const high = i >= 16 ? 1 : 0;
    out[dst + at + (i & 15)]! |= (v & 15) << (4 * high);
    out[dst + 48 + (i & 15)]! |= (v >> 4) << (pair + 2 * high);
  };
  for (let g = 0; g < rows / 4; g++) {
    for (let b = 0; b < nb; b++) {
      const dst = (g * nb + b) * 4 * bytes;
      for (let r = 0; r < 4; r++) {
        const src = ((4 * g + r) * nb + b) * bytes;
        out.set(w.subarray(src, src + 2), dst + 2 * r);
        out.set(w.subarray(src + 2, src + 4), dst + 8 + 2 * r);
        for (let j = 0; j < 8; j++) {
          const [scale, min] = scaleMinK4(j, w, src + 4);
          put(dst, 16, 0, 4 * j + r, scale);
          put(dst, 32, 4, 8 * (j >> 1) + 2 * r + (j & 1), min);
        }
        for (let c = 0; c < 4; c++) {
          for (let wd = 0; wd < 8; wd++) {
            const from = src + qs + 32 * c + 4 * wd;
            out.set(w.subarray(from, from + 4), dst + 64 + 16 * (8 * c + wd) + 4 * r);
          }
        }
        if (five) {
          // element 32j + l (l < 32) of a Q5_K block has its fifth bit at bit j of qh[l]
          for (let j = 0; j < 8; j++) {
            for (let l = 0; l < 32; l++) {
              const bit = (w[src + 16 + l]! >> j) & 1;
              out[dst + 576 + 16 * j + 4 * r + (l & 3)]! |= bit << (l >> 2);
            }
          }
        }
      }
    }
  }
  return out;
}

/**
 * The r4 layout of a row-major Q6_K matrix (rows % 4 == 0), 840 bytes per four rows' super-block:
 * d ×4 (f16); 64 scale bytes, scale j of row r at 8 + 8·(j >> 1) + 2r + (j & 1); then per
 * sub-block j (16 elements) 48 bytes P0, P1, P2 at 72 + 48j: with Vg (g < 4) the vector whose byte
 * 4r + i is the unsigned 6-bit quant of element 16j + 4g + i of row r, Pg = Vg | (bits 2g..2g+1
 * of V3) << 6.
 */
export function repackQ6_Kr4Ref(w: Uint8Array, rows: number, cols: number): Uint8Array {
  const nb = cols / 256;
  const out = new Uint8Array(w.length);
  for (let g = 0; g < rows / 4; g++) {
    for (let b = 0; b < nb; b++) {
      const dst = (g * nb + b) * 840;
      for (let r = 0; r < 4; r++) {
        const src = ((4 * g + r) * nb + b) * 210;
        out.set(w.subarray(src + 208, src + 210), dst + 2 * r);
        for (let j = 0; j < 16; j++) out[dst + 8 + 8 * (j >> 1) + 2 * r + (j & 1)] = w[src + 192 + j]!;
        const q = q6KQuants(w, src);
        for (let e = 0; e < 256; e++) {
          const group = (e >> 2) & 3;
          const at = dst + 72 + 48 * (e >> 4) + 4 * r + (e & 3);
          if (group < 3) out[at + 16 * group]! |= q[e]!;
          else for (let g = 0; g < 3; g++) out[at + 16 * g]! |= ((q[e]! >> (2 * g)) & 3) << 6;
        }
      }
    }
  }
  return out;
}

/** The 256 unsigned 6-bit quants of the Q6_K block at `o` (before the -32 offset), in element order. */
function q6KQuants(w: Uint8Array, o: number): Uint8Array {
  const q = new Uint8Array(256);
  for (let half = 0; half < 2; half++) {
    for (let l = 0; l < 32; l++) {
      const ql = o + 64 * half;
      const qh = w[o + 128 + 32 * half + l]!;
      const e = 128 * half + l;
      q[e] = (w[ql + l]! & 15) | ((qh & 3) << 4);
      q[e + 32] = (w[ql + l + 32]! & 15) | (((qh >> 2) & 3) << 4);
      q[e + 64] = (w[ql + l]! >> 4) | (((qh >> 4) & 3) << 4);
      q[e + 96] = (w[ql + l + 32]! >> 4) | (((qh >> 6) & 3) << 4);
    }
  }
  return q;
}

/**
 * The r4 layout of a row-major Q2_K matrix (rows % 4 == 0), 336 bytes per four rows' super-block:
 * d ×4 and dmin ×4 (f16); the 64 scale bytes (sc | m << 4), scale j of row r at 16 + 8·(j >> 1) +
 * 2r + (j & 1); then 16 quant vectors, sub-block j's at 80 + 16j, whose byte 4r + i holds the
 * 2-bit quant of element 16j + 4g + i of row r in bit pair g (g < 4).
 */
export function repackQ2_Kr4Ref(w: Uint8Array, rows: number, cols: number): Uint8Array {
  return repackK23r4Ref(w, rows, cols, false);
}

/**
 * The r4 layout of a row-major Q3_K matrix (rows % 4 == 0), 440 bytes per four rows' super-block:
 * d ×4 (f16); the 64 six-bit scales (0..63, as stored), scale j of row r at index i = 8·(j >> 1) +
 * 2r + (j & 1): its low 4 bits at byte 8 + 16·(i >> 5) + (i & 15), nibble (i >> 4) & 1, its high 2
 * bits at byte 40 + (i & 15), bit pair i >> 4. With e_g the unsigned quant (q + 4, 0..7) of element
 * 16j + 4g + i of row r: byte 4r + i of 56 + 16j is e0 | e1 << 3 | (e2 & 3) << 6, and byte 4r + i
 * of 312 + 16k holds (e2 >> 2) | e3 << 1 of sub-block 2k in its low nibble, of 2k + 1 in its high.
 */
export function repackQ3_Kr4Ref(w: Uint8Array, rows: number, cols: number): Uint8Array {
  return repackK23r4Ref(w, rows, cols, true);
}

function repackK23r4Ref(w: Uint8Array, rows: number, cols: number, three: boolean): Uint8Array {
  const nb = cols / 256;
  const bytes = three ? 110 : 84;
  const out = new Uint8Array(w.length);
  for (let g = 0; g < rows / 4; g++) {
    for (let b = 0; b < nb; b++) {
      const dst = (g * nb + b) * 4 * bytes;
      for (let r = 0; r < 4; r++) {
        const src = ((4 * g + r) * nb + b) * bytes;
        const pairAt = (j: number) => 8 * (j >> 1) + 2 * r + (j & 1);
        if (three) {
          out.set(w.subarray(src + 108, src + 110), dst + 2 * r);
          for (let j = 0; j < 16; j++) {
            const i = pairAt(j);
            const v = scaleQ3(w, src + 96, j);
            out[dst + 8 + 16 * (i >> 5) + (i & 15)]! |= (v & 15) << (4 * ((i >> 4) & 1));
            out[dst + 40 + (i & 15)]! |= (v >> 4) << (2 * (i >> 4));
          }
        } else {
          out.set(w.subarray(src + 80, src + 82), dst + 2 * r);
          out.set(w.subarray(src + 82, src + 84), dst + 8 + 2 * r);
          for (let j = 0; j < 16; j++) out[dst + 16 + pairAt(j)] = w[src + j]!;
        }
        const qs = src + (three ? 32 : 16);
        for (let e = 0; e < 256; e++) {
          // element 128h + 32s + l: bits 2s of qs[32h + l]; Q3_K's hmask bit 4h + s of hmask[l]
          const h = e >> 7;
          const s = (e >> 5) & 3;
          const l = e & 31;
          const j = e >> 4;
          const gi = (e >> 2) & 3;
          const at = 4 * r + (e & 3);
          const q = (w[qs + 32 * h + l]! >> (2 * s)) & 3;
          if (!three) {
            out[dst + 80 + 16 * j + at]! |= q << (2 * gi);
            continue;
          }
          const e3 = q | (((w[src + l]! >> (4 * h + s)) & 1) << 2);
          const a = dst + 56 + 16 * j + at;
          const hb = dst + 312 + 16 * (j >> 1) + at;
          const nibble = 4 * (j & 1);
          if (gi < 2) out[a]! |= e3 << (3 * gi);
          else if (gi === 2) {
            out[a]! |= (e3 & 3) << 6;
            out[hb]! |= (e3 >> 2) << nibble;
          } else out[hb]! |= e3 << (nibble + 1);
        }
      }
    }
  }
  return out;
}
