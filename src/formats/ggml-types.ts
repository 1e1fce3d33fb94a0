/**
 * The file-format view of ggml's tensor types (names, block sizes, bytes; parsing type names),
 * derived from the one type table in src/runtime/ggml-type-table.ts.
 */
import { UserError } from "../errors.js";
import { GGML_TYPE_TABLE, GGMLType } from "../runtime/ggml-type-table.js";

export { GGMLType };

export interface GgmlTypeInfo {
  readonly type: GGMLType;
  /** ggml's `type_name`, e.g. `q4_0`, `q6_K`, `bf16`. */
  readonly name: string;
  /** Elements per block (1 for plain element types). */
  readonly blockSize: number;
  /** Bytes per block. */
  readonly typeSize: number;
  /** Whether smallhammer can run tensors of this type. */
  readonly supported: boolean;
}

/** Names of ids ggml has removed; files using them are rejected with this name in the message. */
const REMOVED: Record<number, string> = {
  4: "q4_2 (removed)",
  5: "q4_3 (removed)",
  31: "q4_0_4_4 (removed)",
  32: "q4_0_4_8 (removed)",
  33: "q4_0_8_8 (removed)",
  36: "iq4_nl_4_4 (removed)",
  37: "iq4_nl_4_8 (removed)",
  38: "iq4_nl_8_8 (removed)",
};

const BY_ID: (GgmlTypeInfo | undefined)[] = [];
const BY_NAME = new Map<string, GgmlTypeInfo>();
for (const row of GGML_TYPE_TABLE) {
  const { type, name, blockSize, typeSize } = row;
  const info: GgmlTypeInfo = Object.freeze({ type, name, blockSize, typeSize, supported: "format" in row });
  BY_ID[type] = info;
  BY_NAME.set(name.toLowerCase(), info);
}

/** Every known type, in id order. */
export const GGML_TYPES: readonly GgmlTypeInfo[] = Object.freeze(BY_ID.filter((t) => t !== undefined));

/** The table entry for a type id, or undefined for unknown and removed ids. */
export function ggmlTypeInfo(type: number): GgmlTypeInfo | undefined {
  return Number.isInteger(type) && type >= 0 ? BY_ID[type] : undefined;
}

/** ggml's display name (`q4_K`), the removed type's name, or `type <id>` for ids ggml never had. */
export function ggmlTypeName(type: number): string {
  return ggmlTypeInfo(type)?.name ?? REMOVED[type] ?? `type ${type}`;
}

/** Whether smallhammer can run tensors of this type. */
export function isSupportedGgmlType(type: number): boolean {
  return ggmlTypeInfo(type)?.supported ?? false;
}

/**
 * Parses a type name as users type it (`q4_0`, `Q4_K`, `bf16`; case-insensitive).
 * Throws UserError naming the input and the known names.
 */
export function parseGgmlTypeName(name: string): GGMLType {
  const info = BY_NAME.get(name.trim().toLowerCase());
  if (!info) {
    throw new UserError(
      `unknown tensor type ${JSON.stringify(name)}; known types: ${GGML_TYPES.map((t) => t.name).join(", ")}`,
    );
  }
  return info.type;
}

/** Number of elements of a tensor with these dims (ggml order, dims[0] innermost). */
export function elementCount(dims: readonly number[]): number {
  let n = 1;
  for (const d of dims) n *= d;
  return n;
}

/**
 * Bytes a tensor of this type and shape takes: `dims[0] / blockSize * typeSize * dims[1] * ...`.
 * Throws RangeError for an unknown type or a row length that is not a multiple of the block size.
 */
export function tensorBytes(type: number, dims: readonly number[]): number {
  const info = ggmlTypeInfo(type);
  if (!info) throw new RangeError(`tensorBytes: unknown ggml type ${ggmlTypeName(type)}`);
  const ne0 = dims.length > 0 ? dims[0]! : 1;
  if (ne0 % info.blockSize !== 0) {
    throw new RangeError(
      `tensorBytes: row length ${ne0} is not a multiple of the ${info.name} block size ${info.blockSize}`,
    );
  }
  let bytes = (ne0 / info.blockSize) * info.typeSize;
  for (let i = 1; i < dims.length; i++) bytes *= dims[i]!;
  return bytes;
}
