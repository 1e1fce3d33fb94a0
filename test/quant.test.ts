import { createHash } from "node:crypto";
import { describe, expect, it } from "vitest";
import {
  bf16ToF32,
  bf16ToF32Array,
  f16BitsToF32Bits,
  f16ToF32,
  f16ToF32Array,
  f32Bits,
  f32ToBf16,
  f32ToBf16Array,
  f32ToF16,
  f32ToF16Array,
} from "../src/quant/fp16.js";
import {
  type DotStats,
  dequantizeRow,
  dequantizeTensor,
  dotDequantizedRef,
  quantizeRow,
  quantizeTensor,
  randomWeights,
  vecDotQuantizedRef,
  vecDotRef,
} from "../src/quant/reference.js";
import {
  blockSize,
  GGMLType,
  QUANTIZED_WEIGHT_TYPES,
  rowBytes,
  typeName,
  typeSize,
  vecDotType,
} from "../src/quant/types.js";
import { Rng } from "../src/util/random.js";
import { WasmHarness } from "./helpers/wasm.js";

const T = GGMLType;

function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function f16le(h: number): number[] {
  return [h & 0xff, h >>> 8];
}

// ---------------------------------------------------------------------------------------------

describe("fp16", () => {
  it("converts known values", () => {
    const cases: [number, number][] = [
      [0, 0x0000],
      [-0, 0x8000],
      [1, 0x3c00],
      [-2, 0xc000],
      [0.1, 0x2e66],
      [65504, 0x7bff],
      [65519.99, 0x7bff],
      [65520, 0x7c00], // halfway to 65536 ties to even = infinity
      [1e6, 0x7c00],
      [Number.POSITIVE_INFINITY, 0x7c00],
      [Number.NEGATIVE_INFINITY, 0xfc00],
      [2 ** -14, 0x0400], // smallest normal
      [2 ** -24, 0x0001], // smallest subnormal
      [2 ** -25, 0x0000], // half of it: tie to even = 0
      [2 ** -25 * 1.0000001, 0x0001],
      [1.5 * 2 ** -24, 0x0002], // tie between 1 and 2 -> 2
      [2.5 * 2 ** -24, 0x0002], // tie between 2 and 3 -> 2
      [1 + 2 ** -11, 0x3c00], // tie -> even (1.0)
      [1 + 3 * 2 ** -11, 0x3c02], // tie -> even
      [-(2 ** -26), 0x8000],
    ];
    for (const [x, h] of cases) expect(f32ToF16(x), `f32ToF16(${x})`).toBe(h);
    expect(f32ToF16(Number.NaN)).toBe(0x7e00);
    expect(f16ToF32(0x3c00)).toBe(1);
    expect(f16ToF32(0x0001)).toBe(2 ** -24);
    expect(f16ToF32(0x83ff)).toBe(-1023 * 2 ** -24);
    expect(f16ToF32(0x7c00)).toBe(Number.POSITIVE_INFINITY);
    expect(f16ToF32(0xfc00)).toBe(Number.NEGATIVE_INFINITY);
    expect(Number.isNaN(f16ToF32(0x7e00))).toBe(true);
    expect(Object.is(f16ToF32(0x8000), -0)).toBe(true);
  });

  it("takes its input as f32 first, as a Float32Array element would be (Math.fround)", () => {
    // 1 + 2^-11 + 2^-40 is above the tie in float64 but rounds to the tie 1 + 2^-11 in f32
    const x = 1 + 2 ** -11 + 2 ** -40;
    expect(Math.fround(x)).toBe(1 + 2 ** -11);
    expect(f32ToF16(x)).toBe(0x3c00);
    expect(f32ToF16(Math.fround(x))).toBe(0x3c00);
  });

  it("decodes every half exactly", () => {
    for (let h = 0; h < 65536; h++) {
      const e = (h >> 10) & 31;
      const m = h & 1023;
      const s = h & 0x8000 ? -1 : 1;
      const v = f16ToF32(h);
      if (e === 31) {
        if (m === 0) expect(v).toBe(s * Number.POSITIVE_INFINITY);
        else expect(Number.isNaN(v)).toBe(true);
      } else {
        const expected = e === 0 ? s * m * 2 ** -24 : s * (1 + m / 1024) * 2 ** (e - 15);
        if (v !== expected) expect(v, `h=${h.toString(16)}`).toBe(expected);
      }
    }
  });

  it("round-trips every half and rounds every midpoint to even", () => {
    for (let h = 0; h < 0x7c00; h++) {
      for (const sign of [0, 0x8000]) {
        const hs = h | sign;
        if (f32ToF16(f16ToF32(hs)) !== hs) expect(f32ToF16(f16ToF32(hs))).toBe(hs);
      }
      if (h === 0x7bff) continue;
      const a = f16ToF32(h);
      const b = f16ToF32(h + 1);
      const mid = (a + b) / 2; // exact in f32 (12 significant bits)
      const even = (h & 1) === 0 ? h : h + 1;
      const below = mid - (b - a) / 4096;
      const above = mid + (b - a) / 4096;
      if (f32ToF16(mid) !== even || f32ToF16(below) !== h || f32ToF16(above) !== h + 1) {
        expect([f32ToF16(below), f32ToF16(mid), f32ToF16(above)], `h=${h}`).toEqual([h, even, h + 1]);
      }
    }
  });

  it("converts bfloat16 with ties to even and quiet NaNs", () => {
    expect(f32ToBf16(1)).toBe(0x3f80);
    expect(f32ToBf16(-1)).toBe(0xbf80);
    expect(f32ToBf16(1 + 2 ** -8)).toBe(0x3f80); // tie -> even
    expect(f32ToBf16(1 + 3 * 2 ** -8)).toBe(0x3f82); // tie -> even
    expect(f32ToBf16(1 + 2 ** -8 + 2 ** -20)).toBe(0x3f81);
    expect(f32ToBf16(Number.POSITIVE_INFINITY)).toBe(0x7f80);
    expect(f32ToBf16(3.4028234663852886e38)).toBe(0x7f80); // max f32 rounds up to infinity
    expect(f32ToBf16(Number.NaN)).toBe(0x7fc0);
    expect(f32ToBf16(1e-40)).toBe(0x0001); // subnormal f32 0x000116c2 -> 0x0001
    // a signalling NaN is made quiet (bit 6 of the bf16)
    const bits = new Uint32Array([0x7f800001, 0xff800001]);
    expect(Array.from(f32ToBf16Array(new Float32Array(bits.buffer)))).toEqual([0x7fc0, 0xffc0]);
    expect(bf16ToF32(0x3f80)).toBe(1);
    expect(bf16ToF32(0xc040)).toBe(-3);
  });

  it("array versions match the scalar ones", () => {
    const rng = new Rng(1);
    const x = rng.fillNormal(new Float32Array(1000), 1000);
    x[0] = 1e-6;
    x[1] = -7e-8;
    const h = f32ToF16Array(x);
    const b = f32ToBf16Array(x);
    const hf = f16ToF32Array(h);
    const bf = bf16ToF32Array(b);
    for (let i = 0; i < x.length; i++) {
      expect(h[i]).toBe(f32ToF16(x[i]!));
      expect(b[i]).toBe(f32ToBf16(x[i]!));
      expect(hf[i]).toBe(f16ToF32(h[i]!));
      expect(bf[i]).toBe(bf16ToF32(b[i]!));
      expect(f16BitsToF32Bits(h[i]!)).toBe(f32Bits(hf[i]!));
    }
  });
});

// ---------------------------------------------------------------------------------------------

const LEGACY = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0];

// Known answers from ggml itself (libggml-base of node-llama-cpp 3.21: quantize_row_*_ref and
// dequantize_row_*) for the exactly representable input ((73i mod 97) - 48) · 2^(i mod 7 - 10):
// [type, quantized bytes, sha256 of the dequantized f32 row]. The K-quant bytes come from ggml's
// K-quant quantizers, so they also check dequantizeRow on blocks this project did not make.
const GGML_KNOWN: [number, string, string?][] = [
  [
    T.Q4_0,
    "603578988867068a888878989857848d88888034068c8a8878a8a867848f888867c9c987",
    "997160a013c7e1472ae11c1d488f3f501f19ef5d075395aa0576e9d04b1f9aa8",
  ],
  [
    T.Q4_1,
    "bc3460c199a99978079c9a9989b9a958949f9999bc3480c0058b8a7877a89857748f887867c9b886",
    "8bf71f451ba7da33bfe1fb99b70ac30cf389ef83e068ba62e08c524744ecab9b",
  ],
  [
    T.Q5_0,
    "6031e7e6e676f01000cf0c050100ef3110ae080a00f080306e6e6eef0c070400ef4131ce081f0000cf92710d",
    "0fb37f7170e3fb3a4db410efed761da436c5e65b8af927af5a9331e859cea4ae",
  ],
  [
    T.Q5_1,
    "953060c1efefe7f7224333f20e383423026443b0293f3323953080c06e6e66e60b0704f0ef4130bef70f00f0cf82710d",
    "421a33b48e48fce8dc58c4a5e32091b0df02362b3e31b88d84abd8e555d1a5b6",
  ],
  [
    T.Q8_0,
    "6b25fe0200f8dd2606fffc0501f0be5300fef80b04e4810101fdf0170acefe0301fa8924dd3a20fffc0704f4bd7b01fff8100beb810201fef12219ddfe0403fce3473800",
    "097820d9bc3ce389065740e01d093b9ba6b57ca1258bdce7444170c4d85c0ea3",
  ],
  [
    T.Q8_1,
    "6b25d4c3fe0200f8dd2606fffc0501f0be5300fef80b04e4810101fdf0170acefe0301fa8924063edd3a20fffc0704f4bd7b01fff8100beb810201fef12219ddfe0403fce3473800",
  ],
  [
    T.Q8_K,
    "0683c13cfe0200f8e12205fffc0401f2c44a00fef90a03e78e0100fdf21509d3fe0301fbe62c18fffd0603f7ce5d00fffa0c08f0a10201fef41913e6ff0302fdea352a00fd0706fbd76f0100fb0e0df9b30202fff71e1cf8ff0404ffef3e3d00fe080800e0810100fcf01103c6fe0200f9e2250bfffc0502f3c74f00fff90a05ea940101fdf3160cd8fe0302fbe72e1dfffd0604f8d06201fffa0d09f3a60201fff51a15ebff0303feeb383000fe0706fdda740100fb0f0efcb9020200f71f1efdff040400f0c04200fef80901e3860100fdf11305cbfe0201fae42810fffd0502f5ca5500fff90b06ec990101fef3170fdefe0302fce8312200fd0605f9d36701fffb0dfeff59ff4e00f2ff1100a70033ff92ff2000f9ff980009005dfffeff86ff7c00",
    "69c3627ba72cae8ae1af8a7afed600922998e000f4b1ffd08db6981134b5a79e",
  ],
  [
    T.Q4_K,
    "441dfa29f8fdfaffb8afe7ffc95ade3f59a99978777c7a6939e97978748f8969087a797760998959787b7a7559b9a97976079796938fa696569797969076c6a6959898958656f696959bab9676179796476669686447a7a767656b696737f76766537f775707686866508787676669697978748e8969087a797760998959788a797569b9a978778c8a7949f97978758f",
    "fd550ba50d9e940a132a89d81387985b1ea63f8ada200642c8e31d045206396e",
  ],
  [
    T.Q5_K,
    "43191f2af9f7f8ffb8aee6ffd727cd4dc1c31bd9c84f7bf9c18b1bd9c843fbd9c90f5fc8c8c31bd9c94f6fe8c1c31bdbb27342f1fd1803e272f302f0f92e12d2010403fee04232b2f00604fbc2837301ec0e3e3c260f5d3dac2f3f3c20ed8d4d2b22313b1caded3d2a27473dfc3e3e3d8fbdc3c1b98f5030bebbd7d4bf5ff0c0beb7efefbf0ec1c1bda01f1fbfbdc4c30200f92c12d20104030ee03222b2000503fac2735201fe1815f292f30301fa2f",
    "eecef30fa97ee47c31c177730176e53397153f46f6c4008acfb8ef183c6a6b5b",
  ],
  [
    T.Q6_K,
    "11efe013cd020e0012cec02669f100015e13214911e0e00f9c06130410c1c00f89110800f1ce4f1321011000e29c9d3501f0100fcc08760700e1311fa9110e0002c901180c01ee2f0391100c00f2cc5de34f10f00022bc1da40d1fe0f04457090600ef3f21a5110300f1ce7e416a0110f01e77165e0011e1f02cee0e0f0022c26a1596aa6a45a5aa6e919aaa7b54a6aaa15a9aa5645adaa5a94a8aa5661e9aa9aa9a55b5ab6a15a5aa5b44a4aa5a91a95ab6a85a66a2a9595aa7a91a96aab9494b8d5da06c3d80932d6075ba855298653392",
    "05b76b146ca59cddb6fe016f77a6f6772abc3c57c3036c057762352bbf20f121",
  ],
];

describe("reference quantizers", () => {
  it("match hand-computed blocks", () => {
    const block = (f: (j: number) => number) => Float32Array.from({ length: 32 }, (_, j) => f(j));
    // Q4_0: max = -8 -> d = 1; q = trunc(x + 8.5)
    const q40 = quantizeRow(
      T.Q4_0,
      block((j) => (j < 16 ? j - 8 : 23 - j)),
    );
    expect(hex(q40)).toBe(
      hex(Uint8Array.from([0x00, 0x3c, ...Array.from({ length: 16 }, (_, j) => j | ((15 - j) << 4))])),
    );
    // Q4_1: min = -1, max = 14 -> d = 1, m = -1
    const q41 = quantizeRow(
      T.Q4_1,
      block((j) => (j < 16 ? j - 1 : 30 - j)),
    );
    expect(hex(q41)).toBe(
      hex(
        Uint8Array.from([
          0x00,
          0x3c,
          0x00,
          0xbc,
          ...Array.from({ length: 16 }, (_, j) => j | ((15 - j) << 4)),
        ]),
      ),
    );
    // Q5_0: max = -16 -> d = 1; q = trunc(x + 16.5); the upper 16 have bit 4 set
    const q50 = quantizeRow(
      T.Q5_0,
      block((j) => j - 16),
    );
    expect(hex(q50)).toBe(
      hex(
        Uint8Array.from([
          0x00,
          0x3c,
          0x00,
          0x00,
          0xff,
          0xff,
          ...Array.from({ length: 16 }, (_, j) => j | (j << 4)),
        ]),
      ),
    );
    // Q5_1: min = 0, max = 31 -> d = 1, m = 0; the lower 16 have bit 4 set
    const q51 = quantizeRow(
      T.Q5_1,
      block((j) => (j < 16 ? j + 16 : 31 - j)),
    );
    expect(hex(q51)).toBe(
      hex(
        Uint8Array.from([
          0x00,
          0x3c,
          0x00,
          0x00,
          0xff,
          0xff,
          0x00,
          0x00,
          ...Array.from({ length: 16 }, (_, j) => j | ((15 - j) << 4)),
        ]),
      ),
    );
    // Q8_0: amax = 127 -> d = 1; roundf ties away from zero
    const x80 = block(() => 0);
    x80.set([127, -63.5, 0.5, -0.5, 1.5, 2.5, -2.5, 0.49999997]);
    const q80 = quantizeRow(T.Q8_0, x80);
    expect(Array.from(q80.subarray(0, 10))).toEqual([0x00, 0x3c, 127, 256 - 64, 1, 255, 2, 3, 256 - 3, 0]);
    // Q8_1: the same plus s = d·Σq = 127 - 64 + 1 - 1 + 2 + 3 - 3 = 65 -> f16 0x5410
    const q81 = quantizeRow(T.Q8_1, x80);
    expect(Array.from(q81.subarray(0, 4))).toEqual([0x00, 0x3c, 0x10, 0x54]);
    // Q8_K: max = -127 -> iscale = 1, d = 1; nearest_int ties to even
    const x8k = new Float32Array(256);
    x8k.set([-127, 0.5, 1.5, 2.5, -0.5, -1.5, 3]);
    const q8k = quantizeRow(T.Q8_K, x8k);
    const dv = new DataView(q8k.buffer);
    expect(dv.getFloat32(0, true)).toBe(1);
    expect(Array.from(new Int8Array(q8k.buffer, 4, 8))).toEqual([-127, 0, 2, 2, 0, -2, 3, 0]);
    expect(dv.getInt16(260, true)).toBe(-127 + 2 + 2 - 2 + 3);
    // the first of two equal magnitudes decides the sign of the scale
    x8k.fill(0);
    x8k[0] = -3;
    x8k[5] = 3;
    const s = quantizeRow(T.Q8_K, x8k);
    expect(new DataView(s.buffer).getFloat32(0, true)).toBe(Math.fround(1 / Math.fround(127 / 3)));
    expect(new Int8Array(s.buffer, 4, 6)[0]).toBe(-127);
  });

  it("match ggml's own quantizers and dequantizers (known answers)", () => {
    for (const [type, bytes, digest] of GGML_KNOWN) {
      const k = blockSize(type) === 256 ? 256 : 64;
      const x = Float32Array.from({ length: k }, (_, i) => (((i * 73) % 97) - 48) * 2 ** ((i % 7) - 10));
      const q = Uint8Array.from(Buffer.from(bytes, "hex"));
      if (type !== T.Q4_K && type !== T.Q5_K && type !== T.Q6_K) {
        expect(hex(quantizeRow(type, x)), typeName(type)).toBe(bytes);
      }
      if (digest) {
        const y = dequantizeRow(type, q, k);
        const h = createHash("sha256").update(new Uint8Array(y.buffer)).digest("hex");
        expect(h, typeName(type)).toBe(digest);
      }
    }
  });

  // max |x - dequant(quant(x))| / block amax
  const bounds: [number, number, string][] = [
    [T.F16, 2 ** -11, "2^-11 relative to |x| (normal range)"],
    [T.BF16, 2 ** -8, "2^-8 relative to |x|"],
    [T.Q8_0, 0.5 / 127 + (127 * 2 ** -11) / 127, "d/2 + 127·(f16 rounding of d)"],
    [T.Q8_1, 0.5 / 127 + (127 * 2 ** -11) / 127, "as Q8_0"],
    [T.Q8_K, 0.5 / 127 + 1e-6, "d/2, d stored as f32"],
    [T.Q4_0, 1 / 8 + (8 / 8) * 2 ** -11, "|d| = amax/8 (the clamped end), else d/2"],
    [T.Q5_0, 1 / 16 + (16 / 16) * 2 ** -11, "|d| = amax/16 (the clamped end), else d/2"],
    [T.Q4_1, 2 / 30 + 3 * 2 ** -11, "(max-min)/30 + f16 rounding of d and m"],
    [T.Q5_1, 2 / 62 + 3 * 2 ** -11, "(max-min)/62 + f16 rounding of d and m"],
  ];
  for (const [type, bound, why] of bounds) {
    it(`${typeName(type)} round trip error <= ${bound.toPrecision(3)}·amax (${why})`, () => {
      const rng = new Rng(type + 7);
      const cols = 1024;
      const x = rng.fillNormal(new Float32Array(cols));
      for (let i = 0; i < 64; i++) x[i] = x[i]! * 1e-3; // a few small blocks
      for (let i = 256; i < 288; i++) x[i] = Math.abs(x[i]!) + 0.5; // an all-positive block
      const y = dequantizeRow(type, quantizeRow(type, x), cols);
      const bs = type === T.F16 || type === T.BF16 ? 32 : blockSize(type);
      let worst = 0;
      let sumErr = 0;
      for (let b = 0; b < cols / bs; b++) {
        let amax = 0;
        for (let j = 0; j < bs; j++) amax = Math.max(amax, Math.abs(x[b * bs + j]!));
        for (let j = 0; j < bs; j++) {
          const e = Math.abs(x[b * bs + j]! - y[b * bs + j]!) / amax;
          worst = Math.max(worst, e);
          sumErr += e;
        }
      }
      expect(worst).toBeLessThanOrEqual(bound + 1e-5);
      expect(sumErr / cols).toBeLessThan(bound); // and the typical error is below the worst case
    });
  }

  it("quantizeTensor and dequantizeTensor go row by row", () => {
    const rng = new Rng(3);
    const rows = 3;
    const cols = 64;
    const x = rng.fillNormal(new Float32Array(rows * cols));
    for (const type of [...LEGACY, T.F16, T.BF16]) {
      const q = quantizeTensor(type, x, rows, cols);
      expect(q.length).toBe(rows * rowBytes(type, cols));
      const rb = rowBytes(type, cols);
      expect(hex(q.subarray(rb, 2 * rb))).toBe(hex(quantizeRow(type, x.subarray(cols, 2 * cols))));
      const y = dequantizeTensor(type, q, rows, cols);
      expect(Array.from(y.subarray(2 * cols))).toEqual(
        Array.from(dequantizeRow(type, q.subarray(2 * rb), cols)),
      );
    }
    expect(() => quantizeTensor(T.Q4_0, x, 1, 48)).toThrow(/not a whole number/);
  });
});

// ---------------------------------------------------------------------------------------------

/** Random valid blocks of any type: random bytes with f16 scales set to finite values. */
function randomBlocks(type: number, nBlocks: number, rng: Rng): Uint8Array {
  if (blockSize(type) === 256) return randomWeights(type, 1, nBlocks * 256, rng);
  const bs = typeSize(type);
  const out = new Uint8Array(nBlocks * bs);
  for (let i = 0; i < out.length; i++) out[i] = rng.nextInt(256);
  if (type === T.F16 || type === T.BF16) return out;
  for (let b = 0; b < nBlocks; b++) {
    out.set(f16le(f32ToF16((rng.nextFloat() - 0.5) * 0.01)), b * bs);
    if (type === T.Q4_1 || type === T.Q5_1)
      out.set(f16le(f32ToF16((rng.nextFloat() - 0.5) * 0.1)), b * bs + 2);
  }
  return out;
}

const QUANT_KERNEL: Record<number, string> = {
  [T.Q8_0]: "quantizeQ8_0",
  [T.Q8_1]: "quantizeQ8_1",
  [T.Q8_K]: "quantizeQ8_K",
};

const MATMUL_KERNEL: Record<number, string> = {
  [T.Q4_0]: "matmulQ4_0",
  [T.Q4_1]: "matmulQ4_1",
  [T.Q5_0]: "matmulQ5_0",
  [T.Q5_1]: "matmulQ5_1",
  [T.Q8_0]: "matmulQ8_0",
  [T.Q4_K]: "matmulQ4_K",
  [T.Q5_K]: "matmulQ5_K",
  [T.Q6_K]: "matmulQ6_K",
  [T.Q2_K]: "matmulQ2_K",
  [T.Q3_K]: "matmulQ3_K",
};

const DEQUANT_KERNEL: Record<number, string> = {
  [T.F16]: "dequantizeF16",
  [T.BF16]: "dequantizeBF16",
  [T.Q4_0]: "dequantizeQ4_0",
  [T.Q4_1]: "dequantizeQ4_1",
  [T.Q5_0]: "dequantizeQ5_0",
  [T.Q5_1]: "dequantizeQ5_1",
  [T.Q8_0]: "dequantizeQ8_0",
  [T.Q4_K]: "dequantizeQ4_K",
  [T.Q5_K]: "dequantizeQ5_K",
  [T.Q6_K]: "dequantizeQ6_K",
  [T.Q2_K]: "dequantizeQ2_K",
  [T.Q3_K]: "dequantizeQ3_K",
};

describe("wasm activation quantizers", () => {
  const h = new WasmHarness();
  for (const type of [T.Q8_0, T.Q8_1, T.Q8_K]) {
    it(`${QUANT_KERNEL[type]} is bit-identical to the reference`, () => {
      const rng = new Rng(type);
      const n = 7;
      const cols = 1024;
      const x = rng.fillNormal(new Float32Array(n * cols));
      // token 1: special blocks: zeros, exact ties, ± equal magnitudes, tiny and large values
      const t1 = x.subarray(cols, 2 * cols);
      t1.fill(0, 0, 256);
      for (let j = 256; j < 512; j++) t1[j] = (j % 2 ? -1 : 1) * ((j % 127) + 0.5);
      t1[256] = type === T.Q8_K ? -127 : 127;
      t1[512] = -5;
      t1[513] = 5;
      for (let j = 514; j < 768; j++) t1[j] = (rng.nextFloat() - 0.5) * 4;
      for (let j = 768; j < 896; j++) t1[j] = (rng.nextFloat() - 0.5) * 1e-30;
      for (let j = 896; j < 1024; j++) t1[j] = (rng.nextFloat() - 0.5) * 1e4;
      const rb = rowBytes(type, cols);
      const px = h.putF32(x);
      const pq = h.putU8(new Uint8Array(n * rb).fill(0xa5));
      h.k[QUANT_KERNEL[type]!]!(px, pq, cols, n, 0, 3);
      h.k[QUANT_KERNEL[type]!]!(px, pq, cols, n, 3, 5);
      const got = h.u8(pq, n * rb);
      for (let t = 0; t < n; t++) {
        const want =
          t < 5 ? quantizeRow(type, x.subarray(t * cols, (t + 1) * cols)) : new Uint8Array(rb).fill(0xa5);
        expect(hex(got.subarray(t * rb, (t + 1) * rb)), `token ${t}`).toBe(hex(want));
      }
    });
  }
});

describe("wasm activation quantizers on bad input", () => {
  it("end on NaN and infinite activations, leaving the other blocks exact", () => {
    const h = new WasmHarness();
    const rng = new Rng(77);
    const cols = 512;
    const x = rng.fillNormal(new Float32Array(cols));
    x[3] = Number.NaN; // block 0 (all three formats)
    x[300] = Number.POSITIVE_INFINITY; // block 1 of Q8_K, block 9 of Q8_0/Q8_1
    const px = h.putF32(x);
    for (const type of [T.Q8_0, T.Q8_1, T.Q8_K]) {
      const rb = rowBytes(type, cols);
      const pq = h.alloc(rb);
      h.k[QUANT_KERNEL[type]!]!(px, pq, cols, 1, 0, 1);
      const got = h.u8(pq, rb);
      const want = quantizeRow(type, x);
      const bs = typeSize(type);
      const bad = type === T.Q8_K ? [0, 1] : [0, 9];
      for (let b = 0; b < rb / bs; b++) {
        if (bad.includes(b)) continue;
        expect(hex(got.subarray(b * bs, (b + 1) * bs)), `${typeName(type)} block ${b}`).toBe(
          hex(want.subarray(b * bs, (b + 1) * bs)),
        );
      }
    }
  });
});

describe("wasm dequantizers", () => {
  const h = new WasmHarness();
  for (const typeKey of Object.keys(DEQUANT_KERNEL)) {
    const type = Number(typeKey);
    it(`${DEQUANT_KERNEL[type]} equals dequantizeRow bit for bit`, () => {
      const rng = new Rng(100 + type);
      const elemsPerBlock = type === T.F16 || type === T.BF16 ? 1 : blockSize(type);
      const nBlocks = type === T.F16 || type === T.BF16 ? 65536 + 13 : 37;
      let src: Uint8Array;
      if (type === T.F16 || type === T.BF16) {
        src = new Uint8Array(nBlocks * 2);
        for (let i = 0; i < 65536; i++) src.set(f16le(i), 2 * i);
        for (let i = 65536; i < nBlocks; i++) src.set(f16le(Math.floor(rng.nextFloat() * 65536)), 2 * i);
      } else {
        src = randomBlocks(type, nBlocks, rng);
        if (LEGACY.includes(type)) {
          src.set(quantizeRow(type, rng.fillNormal(new Float32Array(5 * 32))), 0); // some real blocks too
        }
      }
      const k = nBlocks * elemsPerBlock;
      const want = dequantizeRow(type, src, k);
      const ps = h.putU8(src);
      const pd = h.putF32(new Float32Array(k).fill(12345));
      const r0 = 3;
      const r1 = nBlocks - 2;
      h.k[DEQUANT_KERNEL[type]!]!(ps, pd, nBlocks, r0, r1);
      const got = new Uint32Array(h.f32(pd, k).buffer);
      const wantBits = new Uint32Array(want.buffer);
      const sentinel = f32Bits(12345);
      let mismatches = 0;
      for (let i = 0; i < k; i++) {
        const inRange = i >= r0 * elemsPerBlock && i < r1 * elemsPerBlock;
        const w = inRange ? wantBits[i]! : sentinel;
        const g = got[i]!;
        const bothNaN = (w & 0x7fffffff) > 0x7f800000 && (g & 0x7fffffff) > 0x7f800000;
        if (g !== w && !bothNaN) {
          if (mismatches++ < 5) expect(g.toString(16), `element ${i}`).toBe(w.toString(16));
        }
      }
      expect(mismatches).toBe(0);
    });
  }
});

describe("wasm matrix products", () => {
  const h = new WasmHarness();
  const rows = 11;
  const cols = 512;
  for (const type of QUANTIZED_WEIGHT_TYPES) {
    for (const n of [1, 5, 7, 17]) {
      it(`${MATMUL_KERNEL[type]} n=${n} equals vecDotRef and the float64 dot within bounds`, () => {
        const rng = new Rng(1000 * type + n);
        const w = randomWeights(type, rows, cols, rng);
        const x = rng.fillNormal(new Float32Array(n * cols));
        const xType = vecDotType(type);
        const rb = rowBytes(type, cols);
        const xb = rowBytes(xType, cols);
        const pw = h.putU8(w);
        const px = h.putF32(x);
        const pq = h.alloc(n * xb);
        h.k[QUANT_KERNEL[xType]!]!(px, pq, cols, n, 0, n);
        const xq = h.u8(pq, n * xb);
        // expected dots, per token and row
        const ref = new Float64Array(n * rows);
        const mag = new Float64Array(n * rows);
        const deq = new Float64Array(n * rows);
        const loose = new Float64Array(n * rows);
        const wf = dequantizeTensor(type, w, rows, cols);
        const bs = blockSize(xType);
        for (let t = 0; t < n; t++) {
          const xt = x.subarray(t * cols, (t + 1) * cols);
          expect(hex(xq.subarray(t * xb, (t + 1) * xb))).toBe(hex(quantizeRow(xType, xt)));
          for (let r = 0; r < rows; r++) {
            const stats: DotStats = { magnitude: 0 };
            const wr = w.subarray(r * rb, (r + 1) * rb);
            ref[t * rows + r] = vecDotQuantizedRef(type, wr, xq.subarray(t * xb, (t + 1) * xb), cols, stats);
            expect(vecDotRef(type, wr, xt)).toBe(ref[t * rows + r]);
            mag[t * rows + r] = stats.magnitude;
            deq[t * rows + r] = dotDequantizedRef(type, wr, xt);
            // |Σ w·(x - xq)| <= Σ_b (amax_x/254)·Σ|w| (+1% for f16 rounding of d_x), plus the Q4_1/Q5_1
            // s = f16(d·Σq) term: 2^-10·Σ_b |w|max·Σ|x|, plus f32 summation: 1e-5·Σ|w·x|
            let bound = 0;
            for (let b = 0; b < cols / bs; b++) {
              let xmax = 0;
              let wmax = 0;
              let sw = 0;
              let sx = 0;
              let swx = 0;
              for (let j = b * bs; j < (b + 1) * bs; j++) {
                const wv = Math.abs(wf[r * cols + j]!);
                xmax = Math.max(xmax, Math.abs(xt[j]!));
                wmax = Math.max(wmax, wv);
                sw += wv;
                sx += Math.abs(xt[j]!);
                swx += wv * Math.abs(xt[j]!);
              }
              bound += ((xmax / 254) * 1.01 * sw + 2 ** -10 * wmax * sx + 1e-5 * swx) * 1.0001;
            }
            loose[t * rows + r] = bound;
          }
        }
        const check = (got: Float32Array, base: Float32Array, r0: number, r1: number, acc: number) => {
          for (let t = 0; t < n; t++) {
            for (let r = 0; r < rows; r++) {
              const i = t * rows + r;
              if (r < r0 || r >= r1) {
                expect(got[i], `row ${r} outside [${r0}, ${r1}) must be untouched`).toBe(base[i]);
                continue;
              }
              const value = got[i]! - (acc ? base[i]! : 0);
              const tight = 1e-4 * Math.abs(ref[i]!) + 1e-6 * mag[i]!;
              if (!(Math.abs(value - ref[i]!) <= tight)) {
                expect(value, `t=${t} r=${r} vs vecDotRef (tolerance ${tight})`).toBeCloseTo(ref[i]!, 10);
              }
              if (!(Math.abs(value - deq[i]!) <= loose[i]!)) {
                expect(value, `t=${t} r=${r} vs float64 dot (tolerance ${loose[i]})`).toBeCloseTo(
                  deq[i]!,
                  10,
                );
              }
            }
          }
        };
        for (const [r0, r1, acc] of [
          [0, rows, 0],
          [1, 7, 0],
          [5, 6, 1],
          [3, rows, 1],
          [2, 4, 0],
        ] as const) {
          const base = new Float32Array(n * rows);
          for (let i = 0; i < base.length; i++) base[i] = (i % 7) - 3.5;
          const po = h.putF32(base);
          h.k[MATMUL_KERNEL[type]!]!(pw, pq, po, rows, cols, n, acc, r0, r1);
          check(h.f32(po, n * rows), base, r0, r1, acc);
        }
      });
    }
  }
});

describe("wasm Q4_0 and Q8_0 matrix products at the extremes", () => {
  // the four-token tile keeps 4096·(n - 8)·x (Q4_0) and 256·w·x (Q8_0) products in i32 lanes:
  // weights and activations at the ends of their ranges must still give the exact integer sums
  const h = new WasmHarness();
  const rows = 6;
  const cols = 256;
  const n = 7;
  for (const type of [T.Q4_0, T.Q8_0]) {
    it(`${MATMUL_KERNEL[type]} with extreme weights and activations equals vecDotQuantizedRef`, () => {
      const rng = new Rng(4242 + type);
      const w = randomWeights(type, rows, cols, rng);
      const bs = typeSize(type);
      const fill: number[][] =
        type === T.Q4_0
          ? [[0x00], [0xff], [0x0f, 0xf0], [0x80, 0x08]]
          : [[0x80], [0x7f], [0x80, 0x7f], [0x81, 0x00]];
      for (let r = 0; r < fill.length; r++) {
        for (let b = 0; b < cols / 32; b++) {
          const o = r * rowBytes(type, cols) + b * bs;
          for (let j = 2; j < bs; j++) w[o + j] = fill[r]![(j - 2) % fill[r]!.length]!;
        }
      }
      const x = rng.fillNormal(new Float32Array(n * cols));
      for (let j = 0; j < cols; j++) {
        x[j] = 1;
        x[cols + j] = -1;
        x[2 * cols + j] = j % 2 ? -1 : 1;
        x[3 * cols + j] = j % 3 ? 0.5 : -1;
      }
      const xb = rowBytes(T.Q8_0, cols);
      const pw = h.putU8(w);
      const px = h.putF32(x);
      const pq = h.alloc(n * xb);
      h.k.quantizeQ8_0!(px, pq, cols, n, 0, n);
      const xq = h.u8(pq, n * xb);
      const po = h.alloc(n * rows * 4);
      h.k[MATMUL_KERNEL[type]!]!(pw, pq, po, rows, cols, n, 0, 0, rows);
      const got = h.f32(po, n * rows);
      const rb = rowBytes(type, cols);
      for (let t = 0; t < n; t++) {
        for (let r = 0; r < rows; r++) {
          const stats: DotStats = { magnitude: 0 };
          const ref = vecDotQuantizedRef(
            type,
            w.subarray(r * rb, (r + 1) * rb),
            xq.subarray(t * xb, (t + 1) * xb),
            cols,
            stats,
          );
          const tight = 1e-4 * Math.abs(ref) + 1e-6 * stats.magnitude;
          expect(Math.abs(got[t * rows + r]! - ref), `t=${t} r=${r}`).toBeLessThanOrEqual(tight);
        }
      }
    });
  }
});
